# cython: freethreading_compatible = False
"""The compiled core of coreallocs: blocks, pools, slab allocator and arena.

One extension module so that the hot paths (allocate, release, liveness checks)
are direct C calls; each part lives in its own include file.
"""

cimport cython
from coreallocs._buffer cimport fill_byte_buffer
from libc.stdint cimport uint32_t, uint64_t
from libc.stdlib cimport calloc, free, realloc

from collections.abc import Mapping

from coreallocs.errors import (
    AllocatorClosed,
    ArenaOverflow,
    BlocksStillLive,
    BufferStillExported,
    DoubleRelease,
    ForeignBlock,
    InvalidAlignment,
    InvalidMark,
    InvalidSize,
    NotInitialized,
    OutOfMemory,
    PoolExhausted,
    SizeTooLarge,
    StaleHandle,
    UseAfterRelease,
)
from coreallocs.stats import AllocatorStats, format_table


cdef object _refuse_copy(object obj, str why):
    """TypeError for copy.copy / copy.deepcopy / pickle of a type that owns memory."""
    raise TypeError(f"a {type(obj).__name__} cannot be copied or pickled: {why}")

include "_block.pxi"
include "_pool.pxi"
include "_slab.pxi"
include "_arena.pxi"
