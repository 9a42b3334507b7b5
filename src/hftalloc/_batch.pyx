# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
# cython: freethreading_compatible = False
"""The sequence of messages a batch subscriber receives (``bus.subscribe(..., batch=True)``).

A :class:`MessageBatch` is a read-only sequence of :class:`~hftalloc._message.Message`
objects, all on one topic (``batch.topic``), in publish order. It is valid during the
subscriber call that received it: ``len(batch)``, ``batch[i]``, ``batch[i:j]`` (a
tuple), iteration. Once the call returns the batch is over: it holds no message any
more and every access raises :class:`~hftalloc.errors.MessageReleased`. The messages
follow the rules of single messages: one kept without ``msg.retain()`` is released,
a retained one lives until ``msg.release()``. To keep messages, keep references to
the retained messages (``kept = [m.retain() for m in batch]``), not the batch.

The owner reuses a batch object for the next delivery only when nobody else holds it.
"""

cimport cython
from cpython.mem cimport PyMem_Free, PyMem_Realloc
from cpython.object cimport PyObject
from cpython.ref cimport Py_INCREF, Py_XDECREF
from cpython.tuple cimport PyTuple_New, PyTuple_SET_ITEM

from hftalloc._message cimport Message, not_copyable

from collections.abc import Sequence

from hftalloc.errors import MessageReleased, MessageStateError


@cython.final
@cython.auto_pickle(False)
cdef class MessageBatch:
    """Messages on one topic delivered in one subscriber call (see the module doc)."""

    def __init__(self):
        raise TypeError("batches are made by the bus for its batch subscribers "
                        "(bus.subscribe(pattern, handler, batch=True))")

    def __dealloc__(self):
        cdef Py_ssize_t i
        if self._items != NULL:
            for i in range(self._len):
                Py_XDECREF(self._items[i])
            self._len = 0
            PyMem_Free(self._items)
            self._items = NULL
        if self._blocks != NULL:
            PyMem_Free(self._blocks)
            self._blocks = NULL

    def __reduce__(self):
        raise not_copyable(self)

    def __reduce_ex__(self, protocol):
        raise not_copyable(self)

    def __copy__(self):
        raise not_copyable(self)

    def __deepcopy__(self, memo):
        raise not_copyable(self)

    # -- owner side ---------------------------------------------------------------------
    cdef int _open(self, str topic, object route, object owner,
                   batch_binder binder) except -1:
        """Start a delivery on ``topic`` (the batch is empty); its unbound blocks get
        their Message from ``binder(owner, ...)``."""
        self._phase = BATCH_OPEN
        self._unbound = 0
        if self.topic is not topic:
            self.topic = topic
        self._route = route
        self._owner = owner
        self._binder = binder
        return 0

    cdef int _reserve(self, Py_ssize_t n) except -1:
        """Room for ``n`` more entries (then batch_push/batch_push_block need no check)."""
        cdef PyObject** grown
        cdef BatchBlock* blocks
        cdef Py_ssize_t cap = self._cap or 16
        if self._len + n <= self._cap:
            return 0
        while cap < self._len + n:
            cap *= 2
        grown = <PyObject**>PyMem_Realloc(self._items, cap * sizeof(PyObject*))
        if grown == NULL:
            raise MemoryError("cannot grow a message batch")
        self._items = grown
        blocks = <BatchBlock*>PyMem_Realloc(self._blocks, cap * sizeof(BatchBlock))
        if blocks == NULL:
            raise MemoryError("cannot grow a message batch")
        self._blocks = blocks
        self._cap = cap
        return 0

    cdef int _append(self, Message msg) except -1:
        if self._len == self._cap:
            self._reserve(1)
        Py_INCREF(msg)
        self._items[self._len] = <PyObject*>msg
        self._len += 1
        return 0

    cdef void _close(self) noexcept:
        """End of the delivery: drop the references; later accesses raise."""
        cdef Py_ssize_t i, n = self._len
        self._phase = BATCH_CLOSED
        self._len = 0
        self._owner = None
        for i in range(n):
            Py_XDECREF(self._items[i])

    cdef object _entry(self, Py_ssize_t i):
        """Entry i's message (0 <= i < _len), bound to its block on first access."""
        if self._items[i] == NULL:
            if self._binder == NULL:
                raise MessageStateError("an unbound batch entry without a binder")
            self._binder(self._owner, self, i, i + 1)
        return <object>self._items[i]

    cdef object _over_error(self):
        if self._phase == BATCH_NEW:
            return MessageStateError("this MessageBatch was not made by a bus (batches are "
                                     "handed to batch subscribers)")
        return MessageReleased(
            f"the batch on {self.topic!r} was delivered and is over; keep retained messages "
            "(kept = [m.retain() for m in batch]), not the batch")

    # -- the sequence -------------------------------------------------------------------
    def __len__(self):
        if self._phase != BATCH_OPEN:
            raise self._over_error()
        return self._len

    def __bool__(self):
        if self._phase != BATCH_OPEN:
            raise self._over_error()
        return self._len != 0

    def __getitem__(self, index):
        cdef Py_ssize_t i, start, stop, step, count, k
        if self._phase != BATCH_OPEN:
            raise self._over_error()
        if isinstance(index, slice):
            start, stop, step = index.indices(self._len)
            count = len(range(start, stop, step))
            if step == 1 and count and self._unbound:
                self._binder(self._owner, self, start, stop)
            out = PyTuple_New(count)
            for k in range(count):
                item = self._entry(start + k * step)
                Py_INCREF(item)
                PyTuple_SET_ITEM(out, k, item)
            return out
        i = index
        if i < 0:
            i += self._len
        if not 0 <= i < self._len:
            raise IndexError(f"batch index {index} out of range ({self._len} messages)")
        return self._entry(i)

    def __iter__(self):
        cdef _BatchIterator it
        if self._phase != BATCH_OPEN:
            raise self._over_error()
        if self._unbound:
            self._binder(self._owner, self, 0, self._len)   # iterating reads them all
        it = _BatchIterator.__new__(_BatchIterator)
        it._batch = self
        return it

    def __contains__(self, item):
        cdef Py_ssize_t i
        if self._phase != BATCH_OPEN:
            raise self._over_error()
        for i in range(self._len):
            if <PyObject*>item == self._items[i]:
                return True
        return False

    @property
    def live(self):
        """True during the subscriber call that received the batch."""
        return self._phase == BATCH_OPEN

    def __repr__(self):
        if self._phase == BATCH_NEW:
            return "<MessageBatch (not initialised)>"
        if self._phase == BATCH_CLOSED:
            return f"<MessageBatch topic={self.topic!r} over>"
        return f"<MessageBatch topic={self.topic!r} messages={self._len}>"


@cython.final
@cython.auto_pickle(False)
cdef class _BatchIterator:
    """Iterator over an open batch (raises MessageReleased once the batch is over)."""
    cdef MessageBatch _batch
    cdef Py_ssize_t _i

    def __init__(self):
        raise TypeError("iterate a MessageBatch instead")

    def __iter__(self):
        return self

    def __next__(self):
        cdef MessageBatch batch = self._batch
        if batch is None:
            raise StopIteration
        if batch._phase != BATCH_OPEN:
            raise batch._over_error()
        if self._i >= batch._len:
            self._batch = None
            raise StopIteration
        self._i += 1
        return batch._entry(self._i - 1)

    def __reduce__(self):
        raise not_copyable(self)

    def __reduce_ex__(self, protocol):
        raise not_copyable(self)

    def __copy__(self):
        raise not_copyable(self)

    def __deepcopy__(self, memo):
        raise not_copyable(self)


Sequence.register(MessageBatch)
