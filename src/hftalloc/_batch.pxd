# The batch sequence handed to batch subscribers (hftalloc._batch): MessageBatch.
#
# An owner (the bus core) fills a batch with _append() while it is open, hands it to
# its batch subscribers, then calls _close(): the batch drops its references and every
# later access raises MessageReleased. A closed batch that only its owner references
# (reference count 1) may be reopened with _open() for the next delivery.
#
# An entry may also be a block without its Message yet (batch_push_block): the batch
# asks the owner's binder for the Message the first time a subscriber reads that entry
# (for all of them when it iterates). The owner gives back the blocks nobody read
# itself before _close() (batch_block).

cimport cython
from cpython.object cimport PyObject
from cpython.ref cimport Py_INCREF

from libc.stdint cimport int32_t, int64_t, uint32_t, uint64_t

from hftalloc._message cimport Message


# A published message whose Message object is made on first access: its block and
# stamps, as the owner recorded them.
ctypedef struct BatchBlock:
    char* ptr
    Py_ssize_t length               # payload bytes (the block holds at least 1)
    uint64_t seq
    int64_t pub_ticks
    int64_t pub_ns
    int32_t cls                     # size class (>= 0)
    uint32_t idx                    # slot in the class

# The owner makes the Message of every unbound block among entries [start, stop) and
# stores it in batch._items.
ctypedef int (*batch_binder)(object owner, object batch, Py_ssize_t start,
                             Py_ssize_t stop) except -1


@cython.final
cdef class MessageBatch:
    cdef PyObject** _items          # strong references to the messages, _len of them
                                    # (NULL: an unbound block, see _blocks[i])
    cdef BatchBlock* _blocks        # per entry, meaningful where _items[i] is NULL
    cdef Py_ssize_t _len
    cdef Py_ssize_t _cap
    cdef Py_ssize_t _unbound        # entries pushed as unbound blocks in this delivery
    cdef int _phase                 # BATCH_NEW (never opened), BATCH_OPEN, BATCH_CLOSED
    cdef readonly str topic
    cdef object _route              # the owner's per-topic entry
    cdef object _owner              # while open: what _binder is called with
    cdef batch_binder _binder

    cdef int _open(self, str topic, object route, object owner,
                   batch_binder binder) except -1
    cdef object _entry(self, Py_ssize_t i)
    cdef int _reserve(self, Py_ssize_t n) except -1
    cdef int _append(self, Message msg) except -1
    cdef void _close(self) noexcept
    cdef object _over_error(self)


cdef enum:
    BATCH_NEW = 0
    BATCH_OPEN = 1
    BATCH_CLOSED = 2


cdef inline Message batch_item(MessageBatch batch, Py_ssize_t i):
    """The i-th message, None for an unbound block (0 <= i < batch._len; no check)."""
    if batch._items[i] == NULL:
        return None
    return <Message>batch._items[i]


cdef inline BatchBlock* batch_block(MessageBatch batch, Py_ssize_t i) noexcept:
    """The i-th entry's block record (meaningful when batch_item() is None)."""
    return &batch._blocks[i]


cdef inline BatchBlock* batch_push_block(MessageBatch batch) noexcept:
    """Append an unbound block to an open batch that _reserve() made room for (no
    check); the caller fills the returned record."""
    batch._items[batch._len] = NULL
    batch._len += 1
    batch._unbound += 1
    return &batch._blocks[batch._len - 1]


cdef inline void batch_push(MessageBatch batch, Message msg) noexcept:
    """Append ``msg`` to an open batch that _reserve() made room for (no check)."""
    Py_INCREF(msg)
    batch._items[batch._len] = <PyObject*>msg
    batch._len += 1
