# Bump (arena) allocator with mark/rewind and O(1) reset.
#
# Every Python handle records (depth, serial) in a stack of live allocations; reset
# drops the stack depth to 0 and rewind to the mark's depth, both O(1). A handle is
# live only while its stack slot still holds its serial, so handles from before a
# reset/rewind raise instead of showing recycled memory. Memory exported to a
# memoryview or numpy array blocks reset/rewind (BufferStillExported) unless the
# reset policy is "detach", which leaves the old memory to the views and gives the
# arena fresh memory.

cdef size_t REGION_ALIGN = 4096


cdef inline void* _bump(ArenaCore* a, size_t size, size_t align) noexcept nogil:
    cdef size_t start = ca_align_up(a.offset, align)
    if start < a.offset or start > a.capacity or size > a.capacity - start:
        a.failures += 1
        return NULL
    a.offset = start + size
    if a.offset > a.high_water:
        a.high_water = a.offset
    a.allocations += 1
    a.bytes_requested += size
    return a.base + start


cdef void* arena_alloc_unlocked(ArenaCore* a, size_t size, size_t align) noexcept nogil:
    if size == 0 or align == 0 or (align & (align - 1)) or align > REGION_ALIGN:
        return NULL
    return _bump(a, size, align)


cdef void* arena_alloc(ArenaCore* a, size_t size, size_t align) noexcept nogil:
    cdef void* p
    ca_lock(&a.lock)
    p = arena_alloc_unlocked(a, size, align)
    ca_unlock(&a.lock)
    return p


@cython.auto_pickle(False)
cdef class _Region:
    """Owns one aligned block of arena memory; kept alive by every handle into it."""

    def __cinit__(self, size_t size):
        self.mem = <char*>ca_aligned_alloc(REGION_ALIGN, size)
        if self.mem == NULL:
            raise OutOfMemory(f"cannot reserve {size} bytes for an arena")
        self.size = size

    def __dealloc__(self):
        free(self.mem)


@cython.auto_pickle(False)
cdef class Mark:
    """A position in an arena, returned by ``Arena.mark()`` for ``rewind()``.

    A mark is an immutable value: ``copy.copy`` and ``copy.deepcopy`` return the mark
    itself; pickling is refused (TypeError), a mark only means something in its arena.
    """

    @property
    def offset(self):
        """The arena offset the mark records."""
        if self.arena is None:
            raise NotInitialized("this Mark was made with Mark.__new__; marks come from Arena.mark()")
        return self.position

    def __copy__(self):
        return self

    def __deepcopy__(self, memo):
        return self

    def __reduce__(self):
        _refuse_copy(self, "a mark only means something inside its arena")

    def __reduce_ex__(self, protocol):
        _refuse_copy(self, "a mark only means something inside its arena")

    def __repr__(self):
        if self.arena is None:
            return "<Mark (not from an arena)>"
        return f"<Mark offset={self.position} depth={self.depth}>"


@cython.auto_pickle(False)
cdef class Arena:
    """Bump allocator over one contiguous region.

    ``Arena(capacity, *, name=None, debug=False, stale_error=StaleHandle)``.
    ``allocate(size, align=8)`` is O(1); ``mark()`` / ``rewind(mark)`` free
    everything allocated after the mark; ``reset()`` frees everything. Handles
    from before a reset/rewind raise ``stale_error`` on use. With ``debug=True``
    each handle records its allocation site in ``block.origin``.
    """

    def __cinit__(self, capacity, *, name=None, bint debug=False, stale_error=StaleHandle):
        cdef Py_ssize_t cap = as_size(capacity, "capacity")
        if not (isinstance(stale_error, type) and issubclass(stale_error, StaleHandle)):
            raise TypeError("stale_error must be a subclass of StaleHandle")
        self.region = _Region(<size_t>cap)
        self.core.base = self.region.mem
        self.core.capacity = <size_t>cap
        self.name = name if name is not None else "arena"
        self.debug = debug
        self.stale_error = stale_error
        self._exported = set()
        self.next_serial = 1

    def __dealloc__(self):
        free(self.stack)
        self.stack = NULL

    cdef int _grow_stack(self) except -1:
        cdef size_t cap = self.stack_cap * 2 if self.stack_cap else 64
        cdef uint64_t* grown = <uint64_t*>realloc(self.stack, cap * sizeof(uint64_t))
        if grown == NULL:
            raise OutOfMemory("cannot grow the arena's handle stack")
        self.stack = grown
        self.stack_cap = cap
        return 0

    cdef object _allocate(self, Py_ssize_t size, Py_ssize_t align, bint raise_on_full):
        cdef Block b
        cdef char* p
        if self._closed:
            raise AllocatorClosed(f"arena {self.name!r} is closed")
        if self.depth == self.stack_cap:
            self._grow_stack()      # before touching the arena: nothing to undo on failure
        b = Block.__new__(Block)
        ca_lock(&self.core.lock)
        p = <char*>_bump(&self.core, <size_t>size, <size_t>align)
        ca_unlock(&self.core.lock)
        if p == NULL:
            if not raise_on_full:
                return None
            raise ArenaOverflow(
                f"arena {self.name!r}: {size} B (align {align}) does not fit; "
                f"{self.core.offset} of {self.core.capacity} B used, "
                f"{self.core.capacity - self.core.offset} B free"
            )
        b.kind = KIND_ARENA
        b.owner = self
        b.ptr = p
        b.size = size
        b.reserved = size
        b.region = self.region
        b.offset = <size_t>(p - self.core.base)
        b.generation = self.core.resets
        b.serial = self.next_serial
        self.next_serial += 1
        b.depth = self.depth
        self.stack[self.depth] = b.serial
        self.depth += 1
        if self.debug:
            import traceback
            b.origin = "".join(traceback.format_stack(limit=8))
        return b

    def allocate(self, size, align=8):
        """Bump `size` bytes aligned to `align` (a power of two <= 4096). ArenaOverflow when full."""
        return self._allocate(as_size(size, "size"), as_alignment(align), True)

    def try_allocate(self, size, align=8):
        """Like allocate() but returns None when the arena is full."""
        return self._allocate(as_size(size, "size"), as_alignment(align), False)

    def mark(self):
        """The current position, for rewind()."""
        cdef Mark m = Mark.__new__(Mark)
        if self._closed:
            raise AllocatorClosed(f"arena {self.name!r} is closed")
        m.arena = self
        m.serial = self.next_serial
        self.next_serial += 1
        if self.depth == self.stack_cap:
            self._grow_stack()
        m.depth = self.depth
        self.stack[self.depth] = m.serial
        self.depth += 1
        ca_lock(&self.core.lock)
        m.position = self.core.offset
        m.bytes_requested = self.core.bytes_requested
        ca_unlock(&self.core.lock)
        return m

    def rewind(self, Mark mark not None):
        """Free everything allocated after `mark` in O(1). The mark stays usable."""
        if mark.arena is not self:
            raise InvalidMark(f"{mark!r} belongs to another arena than {self.name!r}")
        if not (mark.depth < self.depth and self.stack[mark.depth] == mark.serial):
            raise InvalidMark(f"{mark!r} was invalidated by an earlier reset() or rewind()")
        above = [b for b in self._exported if (<Block>b).depth > mark.depth]
        if above:
            raise BufferStillExported(self._exported_message(above, "rewind"))
        self.depth = mark.depth + 1
        ca_lock(&self.core.lock)
        self.core.offset = mark.position
        self.core.bytes_requested = mark.bytes_requested
        self.core.rewinds += 1
        ca_unlock(&self.core.lock)

    def reset(self, str on_exported="raise"):
        """Free everything in O(1) and invalidate every handle and mark.

        If buffers (memoryviews, numpy arrays) still expose arena memory:
        ``on_exported="raise"`` raises BufferStillExported and changes nothing;
        ``"detach"`` leaves the old memory to those views (freed when they go) and
        continues on fresh memory, counted in ``detached``.
        """
        if on_exported not in ("raise", "detach"):
            raise ValueError(f"on_exported must be 'raise' or 'detach', got {on_exported!r}")
        if self._exported:
            if on_exported == "raise":
                raise BufferStillExported(self._exported_message(list(self._exported), "reset"))
            self.region = _Region(self.core.capacity)
            self._exported = set()
            self.detached += 1
        self.depth = 0
        ca_lock(&self.core.lock)
        self.core.base = self.region.mem
        self.core.offset = 0
        self.core.bytes_requested = 0
        self.core.resets += 1
        ca_unlock(&self.core.lock)

    def exported_blocks(self):
        """Blocks of this arena that currently export buffers."""
        return list(self._exported)

    def _exported_message(self, blocks, str action):
        lines = [f"cannot {action} arena {self.name!r}: {len(blocks)} block(s) still exported "
                 f"to memoryviews/numpy arrays:"]
        for b in blocks[:10]:
            where = f"\n    allocated at:\n{b.origin}" if b.origin else ""
            lines.append(f"  - {b._describe()} with {(<Block>b).exports} export(s){where}")
        if len(blocks) > 10:
            lines.append(f"  ... and {len(blocks) - 10} more")
        return "\n".join(lines)

    def close(self):
        """Refuse further allocations (memory goes when the arena and its handles go)."""
        self._closed = True

    @property
    def closed(self):
        return self._closed

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        self.close()
        return False

    @property
    def capacity(self):
        return self.core.capacity

    @property
    def used(self):
        """Bytes bumped so far (including alignment padding)."""
        return self.core.offset

    @property
    def remaining(self):
        return self.core.capacity - self.core.offset

    @property
    def generation(self):
        """Number of resets so far."""
        return self.core.resets

    @property
    def live_handles(self):
        """Python handles and marks currently on the live stack (O(1) bookkeeping)."""
        return self.depth

    @property
    def stats(self):
        cdef ArenaCore snap
        ca_lock(&self.core.lock)     # copy under the lock, build the object after it
        snap = self.core
        ca_unlock(&self.core.lock)
        return AllocatorStats(
            name=self.name,
            unit="bytes",
            block_size=0,
            capacity=snap.capacity,
            in_use=snap.offset,
            high_water=snap.high_water,
            allocations=snap.allocations,
            releases=snap.releases,
            failures=snap.failures,
            bytes_requested=snap.bytes_requested,
            bytes_reserved=snap.offset,
            resets=snap.resets,
        )

    def report(self):
        return format_table([self.stats])

    def __reduce__(self):
        _refuse_copy(self, "it owns its memory and the handles into it")

    def __reduce_ex__(self, protocol):
        _refuse_copy(self, "it owns its memory and the handles into it")

    def __copy__(self):
        _refuse_copy(self, "it owns its memory and the handles into it")

    def __deepcopy__(self, memo):
        _refuse_copy(self, "it owns its memory and the handles into it")

    def __repr__(self):
        return f"<Arena {self.name!r} used={self.core.offset}/{self.core.capacity} gen={self.core.resets}>"
