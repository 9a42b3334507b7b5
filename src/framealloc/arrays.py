"""Validation of array requests (dtype, shape, alignment) and aligned heap arrays.

Frame and persistent memory is raw bytes, so dtypes holding Python object
references are refused: an ``object`` array over recycled bytes would hold
garbage pointers. A subarray dtype (``np.dtype(("f4", (3,)))``) is split into its
element dtype and extra trailing dimensions before anything else looks at the
request, as numpy does when it creates such an array: what gets validated (number of
dimensions, bytes) is the array that will exist.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence
from typing import Any, TypeAlias

import numpy as np

from coreallocs.errors import InvalidAlignment, InvalidSize

__all__ = [
    "CHUNK_ALIGN",
    "DEFAULT_ALIGN",
    "FLOAT64",
    "MAX_ALIGN",
    "MAX_NDIM",
    "DTypeLike",
    "ShapeLike",
    "align_up",
    "as_dtype",
    "as_shape",
    "check_align",
    "heap_array",
    "memoizable",
    "split_request",
    "zero_fill",
]

DTypeLike: TypeAlias = Any  # whatever numpy.dtype() accepts; None means float64
ShapeLike: TypeAlias = int | Sequence[int]

FLOAT64 = np.dtype(np.float64)
DEFAULT_ALIGN = 16  # every frame array starts on at least a 16-byte boundary
CHUNK_ALIGN = 64  # alignment of the chunks frame arrays are carved from
MAX_ALIGN = 4096
MAX_BYTES = 1 << 62  # refuse sizes whose byte count would overflow a Py_ssize_t
MAX_NDIM = 32  # dimensions of a frame array, subarray dtypes' dimensions included

MAX_MEMO = 1024  # dtype arguments remembered (distinct strings could otherwise grow it forever)
_HEAPTYPE = 1 << 9  # Py_TPFLAGS_HEAPTYPE: a class defined in Python (its attributes can change)

# dtype argument -> validated dtype, for arguments that cannot change (see memoizable());
# subarray dtypes are never stored (their requests take the slow path)
_dtype_cache: dict[Any, np.dtype] = {None: FLOAT64}


def memoizable(dtype: object) -> bool:
    """True if `dtype` always names the same dtype: None, an exact str, a numpy dtype or a
    builtin (statically defined) type such as ``float`` or ``numpy.float32``.

    A Python class (``class Vec: dtype = ...``) or any other object may change what it
    describes after the fact, so those are converted afresh on every request.
    """
    if dtype is None or type(dtype) is str or isinstance(dtype, np.dtype):
        return True
    return isinstance(dtype, type) and not dtype.__flags__ & _HEAPTYPE


def as_dtype(dtype: DTypeLike) -> np.dtype:
    """`dtype` as a numpy dtype (None -> float64); TypeError for object-holding dtypes."""
    cacheable = False
    if isinstance(dtype, np.dtype):
        dt = dtype
    else:
        cacheable = memoizable(dtype)
        if cacheable:
            try:
                return _dtype_cache[dtype]
            except KeyError:
                pass
        dt = np.dtype(dtype)
    if dt.hasobject:
        raise TypeError(
            f"dtype {dt} holds Python object references; frame and persistent memory "
            f"can only hold plain data (numbers, bytes, structs of them)"
        )
    if cacheable and dt.subdtype is None and len(_dtype_cache) < MAX_MEMO:
        _dtype_cache[dtype] = dt
    return dt


def known_dtypes() -> dict[Any, np.dtype]:
    """The cache of dtype arguments already validated by as_dtype() (read-only use).

    It only holds memoizable() arguments of dtypes without a subarray.
    """
    return _dtype_cache


def split_request(shape: ShapeLike, dtype: DTypeLike) -> tuple[tuple[int, ...], np.dtype, int]:
    """The array a request describes: (dimensions, element dtype, element count).

    A subarray dtype contributes its dimensions after those of `shape` and its element
    dtype. InvalidSize for more than MAX_NDIM dimensions in all or more than 2**62 bytes;
    TypeError / InvalidSize from as_dtype() and as_shape() for the rest.
    """
    dt = as_dtype(dtype)
    if dt.subdtype is None:
        dims, count = as_shape(shape, dt.itemsize)
        if len(dims) > MAX_NDIM:
            raise InvalidSize(f"at most {MAX_NDIM} dimensions are supported, got {len(dims)}")
        return dims, dt, count
    base, sub = dt.subdtype
    outer, _ = as_shape(shape, 1)
    dims, count = as_shape(outer + tuple(sub), base.itemsize)
    if len(dims) > MAX_NDIM:
        raise InvalidSize(
            f"at most {MAX_NDIM} dimensions are supported, got {len(dims)} "
            f"({len(outer)} in the shape and {len(sub)} from the subarray dtype {dt})")
    return dims, base, count


def as_shape(shape: ShapeLike, itemsize: int = 1) -> tuple[tuple[int, ...], int]:
    """`shape` as a tuple of dimensions and its element count.

    InvalidSize for negative dimensions, and for shapes whose bytes (at `itemsize`
    bytes per element, counting only the non-zero dimensions, as numpy does even
    for empty arrays) exceed 2**62.
    """
    if isinstance(shape, bool):
        raise TypeError("shape must be an int or a sequence of ints, not bool")
    if isinstance(shape, int | np.integer):
        dims: tuple[int, ...] = (operator.index(shape),)
    else:
        try:
            items = list(shape)
        except TypeError:
            raise TypeError(
                f"shape must be an int or a sequence of ints, not {type(shape).__name__}"
            ) from None
        if any(isinstance(d, bool) or not isinstance(d, int | np.integer) for d in items):
            raise TypeError(f"shape dimensions must be ints, got {shape!r}")
        dims = tuple(operator.index(d) for d in items)
    if any(d < 0 for d in dims):
        raise InvalidSize(f"negative dimensions are not allowed, got shape {dims}")
    count = math.prod(dims)
    extent = count if count else math.prod(d for d in dims if d)
    if extent * max(itemsize, 1) > MAX_BYTES:
        raise InvalidSize(f"shape {dims} of {itemsize}-byte items is too large "
                          f"(limit {MAX_BYTES} bytes)")
    return dims, count


def check_align(align: int) -> int:
    """`align` if it is a power of two between 1 and 4096, else InvalidAlignment/TypeError."""
    if isinstance(align, bool) or not isinstance(align, int | np.integer):
        raise TypeError(f"align must be an integer, not {type(align).__name__}")
    value = operator.index(align)
    if value <= 0 or value > MAX_ALIGN or value & (value - 1):
        raise InvalidAlignment(f"align must be a power of two between 1 and 4096, got {value}")
    return value


MAX_COUNT = 1 << 30  # arrays per arrays() call


def check_count(count: int) -> int:
    """`count` as an int in 0..2**30 (arrays()), else TypeError/InvalidSize."""
    if isinstance(count, bool) or not isinstance(count, int | np.integer):
        raise TypeError(f"count must be an integer, not {type(count).__name__}")
    value = operator.index(count)
    if not 0 <= value <= MAX_COUNT:
        raise InvalidSize(f"count must be between 0 and 2**30, got {value}")
    return value


def align_up(offset: int, align: int) -> int:
    """The first multiple of `align` (a power of two) at or after `offset`."""
    return (offset + align - 1) & -align


def zero_fill(out: np.ndarray) -> np.ndarray:
    """Set every byte of the C-contiguous array `out` to zero (any dtype); return it."""
    if out.nbytes:
        out.reshape(-1).view(np.uint8).fill(0)
    return out


def heap_array(dims: tuple[int, ...], dtype: np.dtype, align: int) -> np.ndarray:
    """An uninitialised numpy array on the heap whose data starts on an `align` boundary."""
    nbytes = math.prod(dims) * dtype.itemsize
    raw = np.empty(nbytes + align, np.uint8)
    start = -raw.ctypes.data % align
    return raw[start : start + nbytes].view(dtype).reshape(dims)
