# One way to export a flat run of bytes through the buffer protocol, shared by every
# exporter in this distribution (coreallocs.Block, hftalloc messages and claims).
# `length` must point into the exporting object (it is the buffer's shape).

from cpython.buffer cimport PyBUF_FORMAT, PyBUF_ND, PyBUF_STRIDES


cdef inline void fill_byte_buffer(Py_buffer* buffer, object exporter, char* ptr,
                                  Py_ssize_t* length, bint readonly, int flags) noexcept:
    buffer.buf = ptr
    buffer.obj = exporter
    buffer.len = length[0]
    buffer.readonly = readonly
    buffer.itemsize = 1
    # NULL would mean "B", but CPython reads the format when it asked for one.
    if flags & PyBUF_FORMAT:
        buffer.format = "B"
    else:
        buffer.format = NULL
    buffer.ndim = 1
    buffer.shape = length if (flags & PyBUF_ND) else NULL
    buffer.strides = &buffer.itemsize if (flags & PyBUF_STRIDES) == PyBUF_STRIDES else NULL
    buffer.suboffsets = NULL
    buffer.internal = NULL
