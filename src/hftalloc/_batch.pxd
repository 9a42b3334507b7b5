# The batch sequence handed to batch subscribers (hftalloc._batch): MessageBatch.
#
# An owner (the bus core) fills a batch with _append() while it is open, hands it to
# its batch subscribers, then calls _close(): the batch drops its references and every
# later access raises MessageReleased. A closed batch that only its owner references
# (reference count 1) may be reopened with _open() for the next delivery.

cimport cython
from cpython.object cimport PyObject
from cpython.ref cimport Py_INCREF

from hftalloc._message cimport Message


@cython.final
cdef class MessageBatch:
    cdef PyObject** _items          # strong references to the messages, _len of them
    cdef Py_ssize_t _len
    cdef Py_ssize_t _cap
    cdef int _phase                 # BATCH_NEW (never opened), BATCH_OPEN, BATCH_CLOSED
    cdef readonly str topic
    cdef object _route              # the owner's per-topic entry

    cdef int _open(self, str topic, object route) except -1
    cdef int _reserve(self, Py_ssize_t n) except -1
    cdef int _append(self, Message msg) except -1
    cdef void _close(self) noexcept
    cdef object _over_error(self)


cdef enum:
    BATCH_NEW = 0
    BATCH_OPEN = 1
    BATCH_CLOSED = 2


cdef inline Message batch_item(MessageBatch batch, Py_ssize_t i):
    """The i-th message (0 <= i < batch._len; no check)."""
    return <Message>batch._items[i]


cdef inline void batch_push(MessageBatch batch, Message msg) noexcept:
    """Append ``msg`` to an open batch that _reserve() made room for (no check)."""
    Py_INCREF(msg)
    batch._items[batch._len] = <PyObject*>msg
    batch._len += 1
