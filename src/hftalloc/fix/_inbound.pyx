# cython: language_level=3, boundscheck=False, wraparound=False
"""Receive buffers of FIX connections: the transport writes into them, the codec parses in
place, and a bus block goes to the bus as it is.

An :class:`InboundBuffer` is memory of its own or a claimed bus block (a
:class:`hftalloc.Message` from ``bus.claim``). It is a buffer exporter with two faces:

- a *writable* export is the receive window armed by :meth:`arm` (what
  ``asyncio.BufferedProtocol.get_buffer`` hands the transport);
- a *read-only* export is the received bytes ``[0, length)`` (what ``parse()`` and the
  views of a parsed message hold).

Both kinds are counted. Bytes are moved, handed to the bus or given back only while no
export of either kind is alive, so a view kept by an application never sees its bytes
change or its block reused, and the transport never writes into a block it no longer owns.
A callback set with :meth:`when_written` runs when the last writable export goes (a
transport such as uvloop releases its export only after ``buffer_updated`` returns).
"""

from cpython.buffer cimport PyBUF_WRITABLE, PyBuffer_FillInfo
from libc.stdlib cimport free, malloc
from libc.string cimport memcpy, memmove

from hftalloc._message cimport CLAIMED, Message
from hftalloc.fix._codec cimport hft_fix_find_begin, hft_fix_frame

from hftalloc.fix._codec import _parse_error_for

__all__ = ["InboundBuffer"]


cdef class InboundBuffer:
    """Receive memory with a counted write window and counted read views (see the module)."""

    cdef char *_ptr
    cdef char *_own                 # malloc'd memory (None for a block)
    cdef Py_ssize_t _cap
    cdef Py_ssize_t _len            # bytes readable through read-only exports
    cdef Py_ssize_t _wlo
    cdef Py_ssize_t _whi
    cdef readonly Py_ssize_t exports        # live read-only exports
    cdef readonly Py_ssize_t wexports       # live writable exports (the transport's)
    cdef Message _block
    cdef readonly str topic
    cdef object _on_written

    def __init__(self, *args, **kwargs):
        raise TypeError("use InboundBuffer.own(capacity) or InboundBuffer.claim(bus, ...)")

    def __dealloc__(self):
        # the last view of an abandoned buffer is gone (every export holds a reference to
        # this object): a block still claimed goes back to its bus (counted as aborted),
        # own memory is freed
        cdef Message msg = self._block
        self._ptr = NULL
        if msg is not None and msg._state == CLAIMED:
            try:
                msg.abort()
            except Exception:
                pass   # the message's own safety net frees the block when it goes
        if self._own != NULL:
            free(self._own)
            self._own = NULL

    @staticmethod
    def own(Py_ssize_t capacity):
        """A buffer of ``capacity`` bytes of its own."""
        cdef InboundBuffer b
        if capacity < 64 or capacity > (1 << 30):
            raise ValueError(f"capacity must be 64 B..1 GiB, not {capacity}")
        b = InboundBuffer.__new__(InboundBuffer)
        b._own = <char*>malloc(capacity)
        if b._own == NULL:
            raise MemoryError()
        b._ptr = b._own
        b._cap = capacity
        return b

    @staticmethod
    def claim(bus, str topic, Py_ssize_t size):
        """A claimed block of ``bus`` for ``topic`` (at least ``size`` bytes), or None when
        the bus's policy dropped the claim. The bus's own errors propagate."""
        cdef InboundBuffer b
        cdef Message msg
        m = bus.claim(topic, size)
        if m is None:
            return None
        if type(m) is not Message:
            raise TypeError("bus.claim() did not return a hftalloc Message")
        msg = <Message>m
        if msg._state != CLAIMED or msg._ptr == NULL:
            raise ValueError("bus.claim() returned a message that is not claimed")
        b = InboundBuffer.__new__(InboundBuffer)
        b._block = msg
        b._ptr = msg._ptr
        b._cap = msg._reserved
        b.topic = topic
        return b

    # -- buffer protocol --------------------------------------------------------------------
    def __getbuffer__(self, Py_buffer *view, int flags):
        if self._ptr == NULL:
            raise BufferError("this receive buffer was handed over or given back")
        if flags & PyBUF_WRITABLE:
            if self._whi <= self._wlo:
                raise BufferError("no receive window is armed")
            PyBuffer_FillInfo(view, self, self._ptr + self._wlo, self._whi - self._wlo, 0,
                              flags)
            view.internal = <void*>1
            self.wexports += 1
        else:
            PyBuffer_FillInfo(view, self, self._ptr, self._len, 1, flags)
            view.internal = NULL
            self.exports += 1

    def __releasebuffer__(self, Py_buffer *view):
        if view.internal != NULL:
            self.wexports -= 1
            if self.wexports == 0 and self._on_written is not None:
                callback = self._on_written
                self._on_written = None
                callback()   # the connection's callback handles its own errors
        else:
            self.exports -= 1

    def __len__(self):
        """Size of the armed receive window (what a transport may write)."""
        return self._whi - self._wlo

    # -- state ------------------------------------------------------------------------------
    @property
    def capacity(self):
        return self._cap

    @property
    def length(self):
        """Bytes readable through a read-only export."""
        return self._len

    @property
    def is_block(self):
        """True for a claimed bus block (still held)."""
        return self._block is not None

    @property
    def address(self):
        """Address of the first byte (0 once handed over): diagnostics and tests only."""
        return <size_t>self._ptr

    @property
    def idle(self):
        """No export of either kind is alive."""
        return self.exports == 0 and self.wexports == 0

    cdef int _quiet(self, str what) except -1:
        if self._ptr == NULL:
            raise BufferError(f"cannot {what}: the buffer was handed over or given back")
        if self.exports or self.wexports:
            raise BufferError(f"cannot {what}: {self.exports} view(s) and {self.wexports} "
                              "receive window(s) of the buffer are alive")
        return 0

    def arm(self, Py_ssize_t lo, Py_ssize_t hi):
        """Let the next writable export cover ``[lo, hi)``; returns self."""
        if self._ptr == NULL:
            raise BufferError("the buffer was handed over or given back")
        if lo < 0 or hi > self._cap or lo >= hi:
            raise ValueError(f"window {lo}..{hi} outside 0..{self._cap}")
        self._wlo = lo
        self._whi = hi
        return self

    def disarm(self):
        self._wlo = self._whi = 0

    def received(self, Py_ssize_t n):
        """The transport wrote ``n`` bytes at the start of the armed window: they become
        readable (the window is used up)."""
        if n < 0 or n > self._whi - self._wlo:
            raise ValueError(f"{n} bytes do not fit the {self._whi - self._wlo} B window")
        if self._wlo + n > self._len:
            self._len = self._wlo + n
        self._wlo = self._whi = 0

    def when_written(self, callback):
        """Call ``callback()`` once the last writable export is released (now: False)."""
        if self.wexports == 0:
            return False
        self._on_written = callback
        return True

    def set_length(self, Py_ssize_t n):
        """Readable length ``n`` (bytes beyond it are forgotten); for a block also the
        message's payload length. Needs no export alive."""
        cdef Message msg = self._block
        self._quiet("set its length")
        if n < 0 or n > self._cap:
            raise ValueError(f"length {n} outside 0..{self._cap}")
        if msg is not None and msg._length != n:
            if msg._state != CLAIMED or msg._wview is not None or msg._exports > (
                    1 if msg._rview is not None else 0):
                raise BufferError("the claimed message has views of its own")
            if msg._rview is not None and not msg._drop_view(False):
                raise BufferError("the claimed message's cached view is shared")
            msg._length = n
        self._len = n

    def move(self, Py_ssize_t lo, Py_ssize_t hi, Py_ssize_t to):
        """Move bytes ``[lo, hi)`` to offset ``to`` (overlap allowed). Needs no export."""
        self._quiet("move bytes")
        if lo < 0 or hi > self._cap or lo > hi or to < 0 or to + (hi - lo) > self._cap:
            raise ValueError(f"move {lo}..{hi} -> {to} outside 0..{self._cap}")
        memmove(self._ptr + to, self._ptr + lo, hi - lo)
        self._len = to + (hi - lo)

    def copy_into(self, InboundBuffer dst, Py_ssize_t lo, Py_ssize_t hi, Py_ssize_t to=0):
        """Copy bytes ``[lo, hi)`` into ``dst`` at ``to``. ``dst`` needs no export alive."""
        if self._ptr == NULL:
            raise BufferError("the source buffer was handed over or given back")
        dst._quiet("receive bytes")
        if lo < 0 or hi > self._len or lo > hi:
            raise ValueError(f"copy {lo}..{hi} outside the received bytes")
        if to < 0 or to + (hi - lo) > dst._cap:
            raise ValueError(f"copy of {hi - lo} B does not fit at {to} in {dst._cap} B")
        memcpy(dst._ptr + to, self._ptr + lo, hi - lo)
        if to + (hi - lo) > dst._len:
            dst._len = to + (hi - lo)

    def commit(self):
        """Publish the block (its payload: the first ``length`` bytes); returns the bus's
        answer. The buffer is empty afterwards."""
        cdef Message msg = self._block
        if msg is None:
            raise BufferError("not a bus block")
        self._quiet("publish it")
        if msg._length != self._len:
            self.set_length(self._len)
        self._retire()
        return msg.commit()

    def abort(self):
        """Give the block back unpublished (the bus counts it); the buffer is empty
        afterwards. For own memory: free it."""
        cdef Message msg = self._block
        self._quiet("give it back")
        self._retire()
        if msg is not None:
            msg.abort()

    cdef void _retire(self):
        self._ptr = NULL
        self._cap = self._len = self._wlo = self._whi = 0
        self._block = None
        self._on_written = None
        if self._own != NULL:
            free(self._own)
            self._own = NULL

    # -- framing ----------------------------------------------------------------------------
    def peek(self, Py_ssize_t start, Py_ssize_t end, Py_ssize_t max_size):
        """What ``[start, end)`` (received bytes) holds: ``(skip, size, total, msg_type)``.

        ``skip``: garbage bytes before ``8=FIX``; ``size``: the length of the complete
        message after them (0: more bytes needed); ``total``: its declared length once
        BodyLength is read (else 0); ``msg_type``: MsgType once it is in (else None). A
        broken message raises the error of :func:`hftalloc.fix.frame` (its ``skip``: where
        it starts), as does a declared length above ``max_size`` (FixOversize).
        """
        cdef const unsigned char *p
        cdef Py_ssize_t pos, size, bstart = 0, blen = -1, total = 0, k, n
        if self._ptr == NULL:
            raise BufferError("the buffer was handed over or given back")
        if start < 0 or end > self._cap or start > end:
            raise ValueError(f"range {start}..{end} outside 0..{self._cap}")
        p = <const unsigned char*>self._ptr
        pos = hft_fix_find_begin(p, end, start)
        if pos < 0:
            return (end - start, 0, 0, None)
        n = end - pos
        size = hft_fix_frame(p + pos, n, max_size, 1, &bstart, &blen)
        if size < 0:
            exc = _parse_error_for(size)
            exc.skip = pos - start
            raise exc
        if blen < 0:
            return (pos - start, 0, 0, None)
        total = bstart + blen + 7
        mt = None
        if bstart + 3 < n and p[pos + bstart] == 51 and p[pos + bstart + 1] == 53 \
                and p[pos + bstart + 2] == 61:
            k = bstart + 3
            while k < n and k < bstart + 19 and p[pos + k] != 1:
                k += 1
            if k < n and p[pos + k] == 1 and k > bstart + 3:
                mt = (<const char*>(p + pos + bstart + 3))[:k - bstart - 3].decode("latin-1")
        return (pos - start, size, total, mt)

    def __repr__(self):
        kind = f"block {self.topic!r}" if self._block is not None else "own"
        return (f"<InboundBuffer {kind} {self._len}/{self._cap} B exports={self.exports} "
                f"windows={self.wexports}>")
