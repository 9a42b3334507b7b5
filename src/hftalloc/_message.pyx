# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
# cython: freethreading_compatible = False
"""One compiled message type for every hftalloc core (bus, shared-memory channels).

A :class:`Message` is a run of bytes owned by a :class:`MessageOwner` (the bus core, a
channel's producer or consumer core) plus its topic, sequence number and publish time.
The message implements what is the same for every owner: the state machine, the
``retain()``/``release()`` count, payload views (a cached read-only view, a writable
view while claimed), the buffer protocol with export counting, and the rule that the
memory is reused only once no view of it is left (``_settle_views``). What differs per
owner (commit, abort, giving the memory back, the tick clock) is a virtual call on the
owner, declared in ``_message.pxd``.
"""

cimport cython
from cpython.buffer cimport PyBUF_WRITABLE
from cpython.memoryview cimport PyMemoryView_FromObject
from cpython.object cimport PyObject, PyObject_GenericGetAttr

from coreallocs._buffer cimport fill_byte_buffer

import sys

from hftalloc import policies as _policies
from hftalloc.errors import BufferStillExported, MessageReleased, MessageStateError, NotRetained

STATE_NAMES = _policies.STATE_NAMES
if ((NOT_INITIALISED, RELEASED, COMMITTED, ABORTED, CLAIMED, IN_FLIGHT, RETAINED)
        != (_policies.NOT_INITIALISED, _policies.RELEASED, _policies.COMMITTED,
            _policies.ABORTED, _policies.CLAIMED, _policies.IN_FLIGHT, _policies.RETAINED)
        or (POLICY_RAISE, POLICY_DROP, POLICY_BLOCK)
        != (_policies.RAISE, _policies.DROP, _policies.BLOCK)):
    raise ImportError("hftalloc._message was built for other state/policy numbers; rebuild it")

cdef str _PAYLOAD = sys.intern("payload")
cdef str _PUBLISH_NS = sys.intern("publish_ns")


cdef object not_copyable(object obj):
    """The TypeError every compiled hftalloc object raises for copy/deepcopy/pickle."""
    return TypeError(f"{type(obj).__name__} objects cannot be copied or pickled (they stand "
                     "for memory and counters owned by one live bus or channel)")


@cython.auto_pickle(False)
cdef class MessageOwner:
    """Base of the compiled cores that own messages (see ``_message.pxd``)."""

    cdef object _commit_message(self, Message msg):
        raise NotImplementedError(f"{type(self).__name__} cannot commit messages")

    cdef int _abort_message(self, Message msg) except -1:
        raise NotImplementedError(f"{type(self).__name__} cannot abort messages")

    cdef int _release_message(self, Message msg) except -1:
        raise NotImplementedError(f"{type(self).__name__} cannot release messages")

    cdef void _discard_message(self, Message msg) noexcept:
        pass

    cdef int64_t _ticks_to_ns(self, int64_t ticks) noexcept:
        return ticks

    def __reduce__(self):
        raise not_copyable(self)

    def __reduce_ex__(self, protocol):
        raise not_copyable(self)

    def __copy__(self):
        raise not_copyable(self)

    def __deepcopy__(self, memo):
        raise not_copyable(self)


@cython.final
@cython.no_gc_clear
@cython.auto_pickle(False)
cdef class Message:
    """One message: a block of bytes plus topic, sequence number and publish time.

    Subscribers read ``msg.payload`` (a read-only memoryview of the block, no copy).
    ``msg.producer`` is the producer slot of a shared-memory channel it came through.
    It is valid until the subscriber returns; to keep the message longer call
    ``msg.retain()`` and later ``msg.release()``. A claimed message is written
    through ``msg.buffer`` and published by ``commit()`` (or leaving its ``with``).
    """

    def __init__(self):
        raise TypeError("messages are created by their owner (MessageBus.claim()/publish(), "
                        "a channel reader or writer)")

    def __dealloc__(self):
        # Safety net: a message dropped while it still owns memory (an abandoned claim,
        # a bus dropped with queued messages) gives it back. No export can be alive here:
        # every export holds a reference to the message.
        if self._ptr != NULL and self._owner is not None:
            self._owner._discard_message(self)
        self._ptr = NULL

    def __reduce__(self):
        raise not_copyable(self)

    def __reduce_ex__(self, protocol):
        raise not_copyable(self)

    def __copy__(self):
        raise not_copyable(self)

    def __deepcopy__(self, memo):
        raise not_copyable(self)

    # -- owner side ---------------------------------------------------------------------
    cdef int _reset(self, int state) except -1:
        """Start a new life in ``state`` (CLAIMED or IN_FLIGHT): no retain, no stamp."""
        self._refs = 0
        self._state = state
        if self._rview is not None:   # a kept view, disarmed while its block was free
            hft_view_rearm(<PyObject*>self._rview, self._rview_len)
        self.seq = 0
        self._pub_ticks = 0
        self._pub_ns = 0
        self.receive_ns = 0
        return 0

    cdef int _end_claim_views(self) except -1:
        """Commit of a claim: drop the writable views (BufferStillExported if one of them,
        or a buffer derived from one, is still alive)."""
        if self._wview is not None or self._wexports:
            if (self._wview is not None and not self._drop_view(True)) or (
                    self._rview is not None and self._wexports and not self._drop_view(False)) \
                    or self._wexports:
                raise BufferStillExported(
                    f"claimed message on {self.topic!r}: a view derived from msg.buffer/payload "
                    "is still alive; drop it before commit"
                )
        return 0

    cdef int _drop_view(self, bint writable) except -1:
        """Drop one cached view; invalidate it first if someone else holds it.

        Returns 0 when the view could not be released (a buffer derived from it is alive).
        """
        view = self._wview if writable else self._rview
        if hft_refcnt(<PyObject*>view) > 2:   # the attribute, our local and someone else
            try:
                view.release()
            except BufferError:
                return 0
        if writable:
            self._wview = None
        else:
            self._rview = None
        return 1

    cdef bint _settle_views(self) except -1:
        """End of life: keep the payload view only if nobody else holds it (no reference,
        no derived view, no weak reference).

        True when no other export of the memory is alive (the memory may be reused).
        """
        if self._wview is not None and not self._drop_view(True):
            return False
        if self._rview is not None:
            if (self._wexports or hft_refcnt(<PyObject*>self._rview) > 1
                    or hft_view_shared(<PyObject*>self._rview)
                    or not hft_view_disarm(<PyObject*>self._rview)):   # length 0 while free
                if not self._drop_view(False):
                    return False
        return self._wexports == 0 and self._exports == (0 if self._rview is None else 1)

    cdef object _released_error(self):
        return MessageReleased(
            f"message seq={self.seq} on {self.topic!r} was released; call msg.retain() in the "
            "subscriber to keep it"
        )

    cdef object _state_error(self, str action):
        """The error for ``action`` in a state that does not allow it."""
        if self._state == NOT_INITIALISED:
            return MessageStateError(
                "this Message was not initialised by an owner (messages are created by "
                "MessageBus.claim()/publish() or a channel)")
        return MessageStateError(f"message on {self.topic!r} is {STATE_NAMES[self._state]}, "
                                 f"{action}")

    cdef object _access_error(self):
        """The error for reading the memory of a message in a state below CLAIMED."""
        if self._state == RELEASED:
            return self._released_error()
        return self._state_error("its memory is not the message's any more")

    # -- buffer protocol: the message itself exports the block's bytes ---------------
    def __getbuffer__(self, Py_buffer* buffer, int flags):
        if self._state < CLAIMED:
            raise self._access_error()
        if (flags & PyBUF_WRITABLE) and self._state != CLAIMED:
            raise BufferError(f"message seq={self.seq} on {self.topic!r} is read-only once "
                              "published")
        fill_byte_buffer(buffer, self, self._ptr, &self._length, self._state != CLAIMED, flags)
        self._exports += 1
        if not buffer.readonly:
            self._wexports += 1

    def __releasebuffer__(self, Py_buffer* buffer):
        self._exports -= 1
        if not buffer.readonly:
            self._wexports -= 1

    # -- payload access ---------------------------------------------------------------
    def __getattribute__(self, name):
        # `msg.payload` and `msg.publish_ns` are what subscribers read: answer them here
        # instead of through the generic lookup and the properties below (same results;
        # anything else, a view still to be made or an error to raise takes the normal
        # path).
        if name is _PAYLOAD:
            if self._rview is not None and self._state >= CLAIMED:
                return self._rview
        elif name is _PUBLISH_NS and self._state != NOT_INITIALISED:
            return self._converted_pub_ns()
        return PyObject_GenericGetAttr(self, name)

    @property
    def payload(self):
        """Read-only view of the payload (zero copy)."""
        if self._state < CLAIMED:
            raise self._access_error()
        view = self._rview
        if view is None:
            view = PyMemoryView_FromObject(self)
            if self._state == CLAIMED:
                view = view.toreadonly()
            self._rview = view
            self._rview_len = self._length
        return view

    @property
    def buffer(self):
        """Writable view of a claimed message (before commit)."""
        if self._state != CLAIMED:
            if self._state == NOT_INITIALISED:
                raise self._state_error("")
            raise MessageStateError(
                f"message seq={self.seq} on {self.topic!r} is {STATE_NAMES[self._state]}; "
                "only a claimed message can be written"
            )
        view = self._wview
        if view is None:
            view = PyMemoryView_FromObject(self)
            self._wview = view
        return view

    @cython.binding(False)   # a plain method descriptor: the cheapest call
    def tobytes(self):
        """A copy of the payload."""
        if self._state < CLAIMED:
            raise self._access_error()
        return self._ptr[:self._length]

    def __len__(self):
        return self._length

    @property
    def nbytes(self):
        """Payload length in bytes."""
        return self._length

    @property
    def publish_ns(self):
        """Commit time, CLOCK_MONOTONIC ns (``time.perf_counter_ns()``); 0 before commit."""
        if self._state == NOT_INITIALISED and not (self._pub_ns == 0 and self._pub_ticks != 0):
            raise self._state_error("")
        return self._converted_pub_ns()

    cdef int64_t _converted_pub_ns(self) noexcept:
        if self._pub_ns == 0 and self._pub_ticks != 0:
            self._pub_ns = self._owner._ticks_to_ns(self._pub_ticks)
        return self._pub_ns

    @property
    def size_class(self):
        """Bytes reserved for this message (its size class)."""
        if self._state <= RELEASED:
            raise self._access_error()
        return self._reserved

    @property
    def live(self):
        """True while the message may be read (claimed, in flight or retained)."""
        if self._state == NOT_INITIALISED:
            raise self._state_error("")
        return self._state >= CLAIMED

    @property
    def state(self):
        """One of ``hftalloc.policies.STATE_NAMES``."""
        return STATE_NAMES[self._state]

    @property
    def refcount(self):
        """Outstanding ``retain()`` calls."""
        return self._refs

    # -- ownership ----------------------------------------------------------------------
    @cython.binding(False)   # a plain method descriptor: the cheapest call
    def retain(self):
        """Keep the message (and its block) alive after the subscriber returns."""
        if self._state < IN_FLIGHT:
            if self._state == CLAIMED:
                raise MessageStateError(
                    "retain() is for subscribers; a claimed message is owned by its claimer")
            raise self._access_error()
        self._refs += 1
        return self

    @cython.binding(False)   # a plain method descriptor: the cheapest call
    def release(self):
        """Undo one ``retain()``; the block goes back once nobody holds the message."""
        if self._refs <= 0:
            if self._state == NOT_INITIALISED:
                raise self._state_error("")
            if self._state <= RELEASED:
                raise NotRetained(f"message seq={self.seq} on {self.topic!r} was already released")
            raise NotRetained(
                f"message seq={self.seq} on {self.topic!r}: release() without retain()")
        self._refs -= 1
        if self._refs == 0 and self._state == RETAINED:
            self._owner._release_message(self)

    # -- claim / commit -------------------------------------------------------------------
    @cython.binding(False)   # a plain method descriptor: the cheapest call
    def commit(self):
        """Publish a claimed message; returns its sequence number."""
        if self._state != CLAIMED:
            raise self._state_error("commit() needs a claimed message")
        return self._owner._commit_message(self)

    def abort(self):
        """Give a claimed message's block back without publishing it (counted)."""
        if self._state != CLAIMED:
            raise self._state_error("abort() needs a claimed message")
        self._owner._abort_message(self)

    def __enter__(self):
        if self._state == NOT_INITIALISED:
            raise self._state_error("")
        return self

    def __exit__(self, exc_type, exc, tb):
        if self._state != CLAIMED:
            return
        if exc_type is not None:
            self._owner._abort_message(self)
            return
        try:
            self._owner._commit_message(self)
        except BufferStillExported:
            if self._state == CLAIMED:
                self._owner._abort_message(self)
            raise

    def __repr__(self):
        if self._state == NOT_INITIALISED:
            return "<Message (not initialised)>"
        return (f"<Message seq={self.seq} topic={self.topic!r} nbytes={self._length} "
                f"{STATE_NAMES[self._state]}>")
