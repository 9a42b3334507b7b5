# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Compiled twin of :class:`framealloc.cursor.PyCursor` (same interface, same rules).

Every array is created with ``PyArray_NewFromDescr`` over the chunk's memory and
takes the chunk's ``uint8`` array as its base, so the chunk's arena block stays
exported while any of them is alive -- exactly like the pure-Python views.
"""

cimport cython
cimport numpy as cnp
from cpython.object cimport PyTypeObject
from cpython.ref cimport Py_INCREF
from libc.string cimport memset

import numpy as np

from framealloc.arrays import as_dtype, as_shape, check_align

cnp.import_array()

cdef extern from "numpy/arrayobject.h":
    # steals a reference to `descr`
    object PyArray_NewFromDescr(PyTypeObject* subtype, cnp.dtype descr, int nd,
                                cnp.npy_intp* dims, cnp.npy_intp* strides, void* data,
                                int flags, object obj)

cdef enum:
    MAX_NDIM = 32           # numpy 1.x limit (numpy 2.x allows 64)
    CHUNK_ALIGN = 64

cdef Py_ssize_t MAX_BYTES = (<Py_ssize_t>1) << 62

cdef cnp.dtype _F64 = np.dtype(np.float64)
cdef object _SIXTEEN = 16   # the default alignment (a cached small int: identity test)


cdef inline Py_ssize_t _as_dim(object value):
    """A non-negative int that fits the byte limit, else -1 (the slow path decides)."""
    cdef Py_ssize_t d
    try:
        d = value
    except OverflowError:
        return -1
    return d if 0 <= d <= MAX_BYTES else -1
cdef object _EMPTY = np.empty(0, np.uint8)


@cython.final
cdef class CCursor:
    """Bump allocation of numpy arrays inside one chunk; the offset stays 16-aligned."""

    cdef object _u8             # the chunk (keeps its arena block exported)
    cdef char* _data
    cdef Py_ssize_t _pos
    cdef Py_ssize_t _end
    cdef dict _dtypes           # dtype argument -> validated numpy dtype
    cdef object _refill
    cdef public Py_ssize_t count

    def __cinit__(self, refill):
        self._refill = refill
        self._u8 = _EMPTY
        self._data = NULL
        self._dtypes = {None: _F64}

    def attach(self, cnp.ndarray chunk not None, Py_ssize_t pos=0):
        """Carve the next arrays from `chunk` (a writable, 64-aligned, contiguous uint8 array).

        `pos` resumes a chunk that was detached at that offset (a refused swap).
        """
        if (chunk.dtype.num != cnp.NPY_UINT8 or chunk.ndim != 1
                or not cnp.PyArray_ISCARRAY(chunk)
                or (<size_t>cnp.PyArray_DATA(chunk)) % CHUNK_ALIGN
                or cnp.PyArray_SIZE(chunk) % CHUNK_ALIGN):
            raise ValueError("a chunk must be a writable C-contiguous uint8 array, "
                             "64-byte aligned, with a length multiple of 64")
        if pos < 0 or pos > cnp.PyArray_SIZE(chunk):
            raise ValueError(f"pos={pos} is outside the chunk (0..{cnp.PyArray_SIZE(chunk)})")
        self._u8 = chunk
        self._data = <char*>cnp.PyArray_DATA(chunk)
        self._pos = pos
        self._end = cnp.PyArray_SIZE(chunk)

    @property
    def chunk(self):
        """The chunk being carved (an empty array when detached)."""
        return self._u8

    def detach(self):
        """Drop the chunk; return the bytes left unused at its end."""
        cdef Py_ssize_t unused = self._end - self._pos
        self._u8 = _EMPTY
        self._data = NULL
        self._pos = self._end = 0
        return unused

    @property
    def used(self):
        """Bytes of the current chunk handed out (including alignment padding)."""
        return self._pos

    cdef cnp.dtype _dtype(self, object dtype):
        cdef cnp.dtype dt
        try:
            return <cnp.dtype>self._dtypes[dtype]
        except KeyError:
            pass
        except TypeError:       # unhashable spec (list of fields): validate, do not cache
            return <cnp.dtype>as_dtype(dtype)
        dt = <cnp.dtype>as_dtype(dtype)
        self._dtypes[dtype] = dt
        return dt

    def array(self, shape, dtype=None, align=16):
        """An uninitialised C-contiguous array of `shape` and `dtype` from the chunk."""
        cdef cnp.npy_intp dims[MAX_NDIM]
        cdef int nd = -1
        cdef int i
        cdef Py_ssize_t count = 0, extent = 0, nbytes, start, end, a, d, itemsize
        cdef cnp.dtype dt = _F64 if dtype is None else self._dtype(dtype)
        cdef cnp.ndarray arr

        a = 16 if align is _SIXTEEN else check_align(align)
        itemsize = dt.itemsize
        # -- shape: fast for an int or a tuple of ints, as_shape() for the rest ----
        # `extent` is the product of the non-zero dimensions: numpy refuses a shape
        # whose extent overflows even when another dimension is 0
        if type(shape) is int:
            d = _as_dim(shape)
            if d >= 0:
                nd = 1
                dims[0] = d
                count = extent = d
        elif type(shape) is tuple and len(<tuple>shape) <= MAX_NDIM:
            nd = len(<tuple>shape)
            count = extent = 1
            for i in range(nd):
                item = (<tuple>shape)[i]
                d = _as_dim(item) if type(item) is int else -1
                if d < 0 or (d and extent > MAX_BYTES // d):
                    nd = -1
                    break
                dims[i] = d
                if d:
                    extent *= d
                else:
                    count = 0
            if nd >= 0 and count:
                count = extent
        if nd < 0 or (itemsize and extent > MAX_BYTES // itemsize):
            pyshape, count = as_shape(shape, itemsize)     # raises for bad shapes
            if len(pyshape) > MAX_NDIM:
                raise ValueError(f"at most {MAX_NDIM} dimensions are supported, got {len(pyshape)}")
            nd = len(pyshape)
            for i in range(nd):
                dims[i] = pyshape[i]
        nbytes = count * itemsize

        if nbytes == 0:
            self.count += 1
            return np.empty(tuple([dims[i] for i in range(nd)]), dt)
        start = (self._pos + a - 1) & -a
        if a > CHUNK_ALIGN or start + nbytes > self._end:
            ready = self._refill(tuple([dims[i] for i in range(nd)]), dt, nbytes, a)
            if ready is not None:
                self.count += 1
                return ready
            start = (self._pos + a - 1) & -a    # a fresh chunk with room was attached
            if start + nbytes > self._end or self._data == NULL:
                raise RuntimeError("frame allocator refill did not provide room")
        end = start + nbytes
        self._pos = (end + 15) & -16
        self.count += 1
        Py_INCREF(dt)
        arr = PyArray_NewFromDescr(<PyTypeObject*>cnp.ndarray, dt, nd, dims, NULL,
                                   self._data + start, cnp.NPY_ARRAY_CARRAY, None)
        cnp.set_array_base(arr, self._u8)
        return arr

    def zeros(self, shape, dtype=None, align=16):
        """Like array(), filled with zeros."""
        cdef cnp.ndarray out = self.array(shape, dtype, align)
        if cnp.PyArray_ISCARRAY(out):
            memset(cnp.PyArray_DATA(out), 0, cnp.PyArray_NBYTES(out))
        else:  # cannot happen (every array handed out is C-contiguous); stay correct anyway
            out[...] = np.zeros((), out.dtype)
        return out
