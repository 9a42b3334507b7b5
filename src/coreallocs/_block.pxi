# Block: the Python handle to one allocation (buffer protocol + RAII release).

cdef extern from "Python.h":
    Py_ssize_t PyLong_AsSsize_t(object obj) except? -1


cdef Py_ssize_t as_size(object value, str what) except -1:
    """Convert a user-supplied size to a positive Py_ssize_t or raise InvalidSize/TypeError."""
    cdef Py_ssize_t n
    if type(value) is not int:
        if isinstance(value, bool) or not hasattr(value, "__index__"):
            raise TypeError(f"{what} must be an integer, not {type(value).__name__}")
        value = value.__index__()
    try:
        n = PyLong_AsSsize_t(value)
    except OverflowError:
        raise InvalidSize(f"{what}={value} is too large") from None
    if n <= 0:
        raise InvalidSize(f"{what} must be positive, got {value}")
    return n


cdef Py_ssize_t as_alignment(object value) except -1:
    """Validate an alignment: a power of two between 1 and 4096."""
    cdef Py_ssize_t a
    if type(value) is not int:
        if isinstance(value, bool) or not hasattr(value, "__index__"):
            raise TypeError(f"align must be an integer, not {type(value).__name__}")
        value = value.__index__()
    try:
        a = PyLong_AsSsize_t(value)
    except OverflowError:
        a = 0
    if a <= 0 or a > 4096 or (a & (a - 1)) != 0:
        raise InvalidAlignment(f"align must be a power of two between 1 and 4096, got {value}")
    return a


@cython.final
@cython.no_gc
@cython.freelist(1024)
@cython.auto_pickle(False)
cdef class Block:
    """A handle to one block of allocator memory.

    Exposes the memory through the buffer protocol (``memoryview(blk)``,
    ``numpy.frombuffer(blk)``, ``struct.pack_into(fmt, blk, 0, ...)``). Release it
    with ``release()``, a ``with`` block, or by dropping the last reference (the
    safety net). Using a released handle raises :class:`UseAfterRelease` (or
    :class:`StaleHandle` for arena memory reclaimed by reset/rewind); releasing
    twice raises :class:`DoubleRelease`; releasing while a memoryview or numpy
    array still exposes the memory raises :class:`BufferStillExported`. A handle
    cannot be copied or pickled (TypeError): it owns its block.
    """

    def __init__(self):
        raise TypeError("Block handles are created by allocators, not directly")

    cdef bint _is_live(self) noexcept:
        cdef Arena arena
        if self.released or self.ptr == NULL:
            return False
        if self.kind == KIND_POOL:
            return self.meta.gen == self.gen
        if self.kind == KIND_ARENA:
            arena = <Arena>self.owner
            return self.depth < arena.depth and arena.stack[self.depth] == self.serial
        return True

    cdef int _check(self) except -1:
        if not self._is_live():
            self._raise_dead()
        return 0

    cdef int _raise_dead(self) except -1:
        if self.owner is None:
            raise NotInitialized("this Block was made with Block.__new__; blocks come from "
                                 "an allocator (Pool, SlabAllocator, Arena)")
        if self.kind == KIND_ARENA and not self.released:
            raise (<Arena>self.owner).stale_error(
                f"{self._describe()} from generation {self.generation} of arena "
                f"{(<Arena>self.owner).name!r} was reclaimed by reset()/rewind() "
                f"(arena generation is now {(<Arena>self.owner).core.resets})"
            )
        raise UseAfterRelease(f"{self._describe()} was released; it cannot be used any more")

    cdef int _bound(self) except -1:
        if self.owner is None:
            self._raise_dead()
        return 0

    def _describe(self):
        if self.owner is None:
            return "Block(not from an allocator)"
        if self.kind == KIND_POOL:
            return f"Block(size={self.size}, class={self.reserved} B, slot={self.idx}, owner={self.owner.name!r})"
        if self.kind == KIND_ARENA:
            return f"Block(size={self.size}, arena offset={self.offset}, owner={self.owner.name!r})"
        return f"Block(size={self.size}, system fallback, owner={self.owner.name!r})"

    # -- release -------------------------------------------------------------
    def release(self):
        """Return the block to its allocator. Raises if already released or still exported."""
        if self.released:
            raise DoubleRelease(f"{self._describe()} was already released")
        if not self._is_live():
            self._bound()
            if self.kind == KIND_POOL:
                raise DoubleRelease(f"{self._describe()} was already released through its allocator")
            self._raise_dead()
        if self.exports:
            raise BufferStillExported(
                f"{self._describe()} still has {self.exports} exported buffer(s) "
                f"(memoryview / numpy array); drop or release them before releasing the block"
            )
        self._release_memory()

    cdef void _release_memory(self) noexcept:
        self.released = True
        if self.kind == KIND_POOL:
            pool_core_give(self.core, self.idx, self.gen)
        elif self.kind == KIND_SYSTEM:
            _system_release((<SlabAllocator>self.owner).core, self.ptr, <size_t>self.size)
        else:
            # bump memory comes back on reset()/rewind(); releasing retires the handle
            (<Arena>self.owner).core.releases += 1

    def __dealloc__(self):
        # Safety net: a handle dropped without release() gives its memory back.
        # (No buffer can be exported here: every export holds a reference to us.)
        if self.ptr != NULL and not self.released and self.owner is not None and self._is_live():
            self._release_memory()

    def __enter__(self):
        self._check()
        return self

    def __exit__(self, exc_type, exc, tb):
        if not self.released and self._is_live():
            self.release()
        return False

    # -- introspection ------------------------------------------------------
    def __len__(self):
        self._check()
        return self.size

    @property
    def nbytes(self):
        """Usable bytes of the block (what was requested)."""
        self._bound()
        return self.size

    @property
    def reserved(self):
        """Bytes the allocator set aside for this block (its size class)."""
        self._bound()
        return self.reserved

    @property
    def address(self):
        """Start address of the block's memory, as an int."""
        self._check()
        return <size_t>self.ptr

    @property
    def live(self):
        """True while the handle may be used."""
        self._bound()
        return self._is_live()

    @property
    def kind(self):
        """'pool', 'system' (slab fallback) or 'arena'."""
        self._bound()
        return ("pool", "system", "arena")[<int>self.kind]

    @property
    def owner(self):
        """The allocator this block came from."""
        self._bound()
        return self.owner

    @property
    def exported(self):
        """Number of buffers (memoryviews, numpy arrays) currently exported from this block."""
        self._bound()
        return self.exports

    @property
    def generation(self):
        """Arena blocks: the arena's reset count when allocated. Pool blocks: the slot generation."""
        self._bound()
        return self.generation if self.kind == KIND_ARENA else self.gen

    @property
    def offset(self):
        """Arena blocks: byte offset inside the arena (0 otherwise)."""
        self._bound()
        return self.offset

    def view(self, bint readonly=False):
        """A memoryview of the block (read-only when asked)."""
        mv = memoryview(self)
        return mv.toreadonly() if readonly else mv

    def tobytes(self):
        """A copy of the block's bytes."""
        self._check()
        return self.ptr[:self.size]

    # -- buffer protocol ------------------------------------------------------
    def __getbuffer__(self, Py_buffer* buffer, int flags):
        self._check()
        fill_byte_buffer(buffer, self, self.ptr, &self.size, False, flags)
        self.exports += 1
        if self.exports == 1 and self.kind == KIND_ARENA:
            (<Arena>self.owner)._exported.add(self)

    def __releasebuffer__(self, Py_buffer* buffer):
        self.exports -= 1
        if self.exports == 0 and self.kind == KIND_ARENA:
            (<Arena>self.owner)._exported.discard(self)

    def __reduce__(self):
        _refuse_copy(self, "it owns its block (copy the bytes with tobytes())")

    def __reduce_ex__(self, protocol):
        _refuse_copy(self, "it owns its block (copy the bytes with tobytes())")

    def __copy__(self):
        _refuse_copy(self, "it owns its block (copy the bytes with tobytes())")

    def __deepcopy__(self, memo):
        _refuse_copy(self, "it owns its block (copy the bytes with tobytes())")

    def __repr__(self):
        if self.owner is None:
            return "<Block (not from an allocator)>"
        state = "live" if self._is_live() else "released"
        return f"<{self._describe()} {state} at 0x{<size_t>self.ptr:x}>"


cdef inline Block _new_block(object owner, BlockKind kind, char* ptr, Py_ssize_t size, Py_ssize_t reserved):
    cdef Block b = Block.__new__(Block)
    b.owner = owner
    b.kind = kind
    b.ptr = ptr
    b.size = size
    b.reserved = reserved
    return b
