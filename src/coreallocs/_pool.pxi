# Fixed-size pool allocator: one contiguous aligned slab per growth step, O(1) free list.
#
# The free list is threaded through per-slot metadata (SlotMeta.next) rather than
# through the blocks' own bytes, so a stray write into a freed block cannot corrupt
# the allocator and a double free is detected even at the C level.

cdef size_t MAX_BLOCK = 0xFFFFFFF0u        # requested sizes are stored in 32 bits
cdef size_t MAX_SLOTS = 0xFFFFFFF0u        # slot indices are 32 bits (SLOT_NONE reserved)
cdef size_t SLAB_ALIGN_MIN = 64            # slabs start on a cache line at least


# ---------------------------------------------------------------------------
# C core
# ---------------------------------------------------------------------------

cdef int _add_slab(PoolCore* p) noexcept nogil:
    """Append one slab of `per_slab` blocks and push its slots on the free list."""
    cdef size_t n = p.nslabs, i, j, newcap
    cdef PoolSlab* slabs
    cdef uint32_t* order
    cdef char* base
    cdef SlotMeta* meta
    cdef size_t first = n * p.per_slab
    if first + p.per_slab > p.max_blocks:
        return CA_EXHAUSTED
    if n == p.slab_cap:
        newcap = p.slab_cap * 2 if p.slab_cap else 1
        slabs = <PoolSlab*>realloc(p.slabs, newcap * sizeof(PoolSlab))
        if slabs == NULL:
            return CA_NOMEM
        p.slabs = slabs
        order = <uint32_t*>realloc(p.order, newcap * sizeof(uint32_t))
        if order == NULL:
            return CA_NOMEM
        p.order = order
        p.slab_cap = newcap
    base = <char*>ca_aligned_alloc(p.align if p.align > SLAB_ALIGN_MIN else SLAB_ALIGN_MIN,
                                   p.block_size * p.per_slab)
    if base == NULL:
        return CA_NOMEM
    meta = <SlotMeta*>calloc(p.per_slab, sizeof(SlotMeta))
    if meta == NULL:
        free(base)
        return CA_NOMEM
    p.slabs[n].base = base
    p.slabs[n].meta = meta
    ca_poison(base, p.block_size * p.per_slab)       # free slots: no access (ASan builds)
    # keep `order` sorted by base address (insertion; growth is rare)
    i = n
    while i > 0 and p.slabs[p.order[i - 1]].base > base:
        p.order[i] = p.order[i - 1]
        i -= 1
    p.order[i] = <uint32_t>n
    p.nslabs = n + 1
    # lowest address first out of the free list
    j = p.per_slab
    while j > 0:
        j -= 1
        meta[j].next = p.free_head
        p.free_head = <uint32_t>(first + j)
    return CA_OK


cdef PoolCore* pool_core_new(size_t block_size, size_t per_slab, size_t align, bint grow) noexcept nogil:
    cdef PoolCore* p = <PoolCore*>calloc(1, sizeof(PoolCore))
    if p == NULL:
        return NULL
    p.block_size = ca_align_up(block_size, align)
    p.align = align
    p.per_slab = per_slab
    p.grow = grow
    p.free_head = SLOT_NONE
    p.max_blocks = MAX_SLOTS
    if _add_slab(p) != CA_OK:
        pool_core_destroy(p)
        return NULL
    return p


cdef void pool_core_destroy(PoolCore* p) noexcept nogil:
    cdef size_t i
    if p == NULL:
        return
    for i in range(p.nslabs):
        ca_unpoison(p.slabs[i].base, p.block_size * p.per_slab)
        free(p.slabs[i].base)
        free(p.slabs[i].meta)
    free(p.slabs)
    free(p.order)
    free(p)


cdef inline SlotMeta* _meta(PoolCore* p, uint32_t idx) noexcept nogil:
    if idx < p.per_slab:
        return &p.slabs[0].meta[idx]
    return &p.slabs[idx // p.per_slab].meta[idx % p.per_slab]


cdef inline char* _ptr(PoolCore* p, uint32_t idx) noexcept nogil:
    if idx < p.per_slab:
        return p.slabs[0].base + idx * p.block_size
    return p.slabs[idx // p.per_slab].base + (idx % p.per_slab) * p.block_size


cdef size_t pool_core_capacity(PoolCore* p) noexcept nogil:
    return p.nslabs * p.per_slab


cdef inline int _take(PoolCore* p, uint32_t requested, uint32_t* idx_out) noexcept nogil:
    cdef uint32_t idx = p.free_head
    cdef int rc
    cdef SlotMeta* m
    if idx == SLOT_NONE:
        rc = _add_slab(p) if p.grow else CA_EXHAUSTED
        if rc != CA_OK:
            p.failures += 1
            return rc
        idx = p.free_head
    m = _meta(p, idx)
    p.free_head = m.next
    m.next = SLOT_NONE
    m.live = 1
    m.requested = requested
    p.in_use += 1
    if p.in_use > p.high_water:
        p.high_water = p.in_use
    p.allocations += 1
    p.bytes_requested += requested
    ca_unpoison(_ptr(p, idx), p.block_size)
    idx_out[0] = idx
    return CA_OK


cdef inline int _give(PoolCore* p, uint32_t idx, uint64_t gen) noexcept nogil:
    cdef SlotMeta* m
    if idx >= p.nslabs * p.per_slab:
        return CA_FOREIGN
    m = _meta(p, idx)
    if not m.live or m.gen != gen:
        return CA_DOUBLE_FREE
    ca_poison(_ptr(p, idx), p.block_size)
    m.live = 0
    m.gen += 1
    m.next = p.free_head
    p.free_head = idx
    p.in_use -= 1
    p.releases += 1
    p.bytes_requested -= m.requested
    return CA_OK


cdef int pool_core_take(PoolCore* p, uint32_t requested, uint32_t* idx_out) noexcept nogil:
    """Pop a free slot (locked). Returns CA_OK, CA_EXHAUSTED or CA_NOMEM."""
    cdef int rc
    ca_lock(&p.lock)
    rc = _take(p, requested, idx_out)
    ca_unlock(&p.lock)
    return rc


cdef int pool_core_give(PoolCore* p, uint32_t idx, uint64_t gen) noexcept nogil:
    """Return slot `idx` if its generation still matches (locked)."""
    cdef int rc
    ca_lock(&p.lock)
    rc = _give(p, idx, gen)
    ca_unlock(&p.lock)
    return rc


cdef int pool_core_find(PoolCore* p, void* ptr, uint32_t* idx_out) noexcept nogil:
    """Map a pointer to its slot index: O(log slabs). CA_FOREIGN if not a block start."""
    cdef char* c = <char*>ptr
    cdef size_t lo = 0, hi = p.nslabs, mid, off
    cdef PoolSlab* s
    if p.nslabs == 1:
        s = &p.slabs[0]
        if c < s.base:
            return CA_FOREIGN
        off = <size_t>(c - s.base)
        if off >= p.per_slab * p.block_size or off % p.block_size:
            return CA_FOREIGN
        idx_out[0] = <uint32_t>(off // p.block_size)
        return CA_OK
    while lo < hi:                       # last slab whose base <= c
        mid = (lo + hi) // 2
        if p.slabs[p.order[mid]].base <= c:
            lo = mid + 1
        else:
            hi = mid
    if lo == 0:
        return CA_FOREIGN
    s = &p.slabs[p.order[lo - 1]]
    off = <size_t>(c - s.base)
    if off >= p.per_slab * p.block_size or off % p.block_size:
        return CA_FOREIGN
    idx_out[0] = <uint32_t>(p.order[lo - 1] * p.per_slab + off // p.block_size)
    return CA_OK


cdef void* pool_alloc_unlocked(PoolCore* p) noexcept nogil:
    cdef uint32_t idx
    if _take(p, <uint32_t>p.block_size, &idx) != CA_OK:
        return NULL
    return _ptr(p, idx)


cdef int pool_free_unlocked(PoolCore* p, void* ptr) noexcept nogil:
    cdef uint32_t idx
    cdef SlotMeta* m
    if pool_core_find(p, ptr, &idx) != CA_OK:
        return CA_FOREIGN
    m = _meta(p, idx)
    return _give(p, idx, m.gen)


cdef void* pool_alloc(PoolCore* p) noexcept nogil:
    cdef void* r
    ca_lock(&p.lock)
    r = pool_alloc_unlocked(p)
    ca_unlock(&p.lock)
    return r


cdef int pool_free(PoolCore* p, void* ptr) noexcept nogil:
    cdef int rc
    ca_lock(&p.lock)
    rc = pool_free_unlocked(p, ptr)
    ca_unlock(&p.lock)
    return rc


# ---------------------------------------------------------------------------
# Python layer
# ---------------------------------------------------------------------------

cdef inline void _fill_pool_block(Block b, PoolCore* core, uint32_t idx, Py_ssize_t size) noexcept:
    cdef SlotMeta* m = _meta(core, idx)
    b.core = core
    b.meta = m
    b.idx = idx
    b.gen = m.gen
    b.ptr = _ptr(core, idx)
    b.size = size
    b.reserved = <Py_ssize_t>core.block_size


cdef int raise_take_error(PoolCore* p, int rc, str name) except -1:
    if rc == CA_NOMEM:
        raise OutOfMemory(f"{name}: the system refused memory for another slab of "
                          f"{p.per_slab} x {p.block_size} B blocks")
    raise PoolExhausted(
        f"{name}: all {pool_core_capacity(p)} blocks of {p.block_size} B are in use"
        + ("" if p.grow else " (capacity is fixed; pass grow=True to add slabs)")
    )


cdef object pool_core_stats(PoolCore* p, str name):
    # copy the counters under the lock, build the Python object after it: Python code
    # may switch threads, and a thread spinning on the lock holds the GIL
    cdef PoolCore snap
    ca_lock(&p.lock)
    snap = p[0]
    ca_unlock(&p.lock)
    return AllocatorStats(
        name=name,
        unit="blocks",
        block_size=snap.block_size,
        capacity=snap.nslabs * snap.per_slab,
        in_use=snap.in_use,
        high_water=snap.high_water,
        allocations=snap.allocations,
        releases=snap.releases,
        failures=snap.failures,
        bytes_requested=snap.bytes_requested,
        bytes_reserved=snap.in_use * snap.block_size,
    )


@cython.auto_pickle(False)
cdef class Pool:
    """Fixed-size block pool.

    ``Pool(block_size, capacity, *, align=8, grow=False, name=None)`` carves
    ``capacity`` blocks of ``block_size`` bytes (rounded up to ``align``) from one
    contiguous, aligned slab. ``allocate()`` and ``release()`` are O(1). With
    ``grow=True`` an exhausted pool adds another slab of ``capacity`` blocks;
    otherwise it raises :class:`PoolExhausted` (``try_allocate()`` returns None).
    """

    def __cinit__(self, block_size, capacity, *, align=8, bint grow=False, name=None):
        cdef Py_ssize_t bs = as_size(block_size, "block_size")
        cdef Py_ssize_t cap = as_size(capacity, "capacity")
        cdef Py_ssize_t al = as_alignment(align)
        cdef size_t rounded
        if <size_t>bs > MAX_BLOCK:
            raise InvalidSize(f"block_size={bs} exceeds the maximum of {MAX_BLOCK} bytes")
        if <size_t>cap > MAX_SLOTS:
            raise InvalidSize(f"capacity={cap} exceeds the maximum of {MAX_SLOTS} blocks")
        rounded = ca_align_up(<size_t>bs, <size_t>al)
        if rounded > (<size_t>-1) // 4 // <size_t>cap:
            raise InvalidSize(f"block_size={bs} x capacity={cap} overflows the address space")
        self.name = name if name is not None else f"pool{bs}"
        self._block_size_requested = bs
        self.core = pool_core_new(<size_t>bs, <size_t>cap, <size_t>al, grow)
        if self.core == NULL:
            raise OutOfMemory(f"cannot reserve {rounded * cap} bytes for {cap} blocks of {rounded} B")

    def __dealloc__(self):
        # Only reached once no Block references this pool any more.
        pool_core_destroy(self.core)
        self.core = NULL

    def allocate(self):
        """Take one block. Raises PoolExhausted when none is free (and grow is off)."""
        cdef uint32_t idx = 0      # set by pool_core_take (gcc cannot see raise_take_error never returns)
        cdef int rc
        cdef Block b
        if self._closed:
            raise AllocatorClosed(f"pool {self.name!r} is closed")
        b = Block.__new__(Block)       # before taking a slot: no slot stranded on MemoryError
        rc = pool_core_take(self.core, <uint32_t>self._block_size_requested, &idx)
        if rc != CA_OK:
            raise_take_error(self.core, rc, self.name)
        b.owner = self
        b.kind = KIND_POOL
        _fill_pool_block(b, self.core, idx, self._block_size_requested)
        return b

    def try_allocate(self):
        """Like allocate() but returns None instead of raising when exhausted."""
        cdef uint32_t idx
        cdef Block b
        if self._closed:
            raise AllocatorClosed(f"pool {self.name!r} is closed")
        b = Block.__new__(Block)
        if pool_core_take(self.core, <uint32_t>self._block_size_requested, &idx) != CA_OK:
            return None
        b.owner = self
        b.kind = KIND_POOL
        _fill_pool_block(b, self.core, idx, self._block_size_requested)
        return b

    def release(self, block):
        """Release `block` into this pool; ForeignBlock if it came from elsewhere."""
        if not isinstance(block, Block) or (<Block>block).owner is not self:
            raise ForeignBlock(f"{block!r} does not belong to pool {self.name!r}")
        block.release()

    def close(self):
        """Refuse further allocations. Raises BlocksStillLive while blocks are in use.

        The memory itself is returned once the pool object and every handle are gone,
        so no handle can ever point at freed memory.
        """
        if self.core.in_use:
            raise BlocksStillLive(f"pool {self.name!r} still has {self.core.in_use} block(s) in use")
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
    def block_size(self):
        """Usable bytes per block, as requested."""
        return self._block_size_requested

    @property
    def stride(self):
        """Bytes between consecutive blocks (block size rounded up to the alignment)."""
        return self.core.block_size

    @property
    def align(self):
        return self.core.align

    @property
    def grow(self):
        return bool(self.core.grow)

    @property
    def capacity(self):
        """Blocks currently reserved (grows by `per_slab` when grow=True)."""
        return pool_core_capacity(self.core)

    @property
    def in_use(self):
        return self.core.in_use

    @property
    def available(self):
        return pool_core_capacity(self.core) - self.core.in_use

    @property
    def stats(self):
        """An AllocatorStats snapshot."""
        return pool_core_stats(self.core, self.name)

    def report(self):
        """The statistics as a text table."""
        return format_table([self.stats])

    def __reduce__(self):
        _refuse_copy(self, "it owns its memory and the blocks handed out from it")

    def __reduce_ex__(self, protocol):
        _refuse_copy(self, "it owns its memory and the blocks handed out from it")

    def __copy__(self):
        _refuse_copy(self, "it owns its memory and the blocks handed out from it")

    def __deepcopy__(self, memo):
        _refuse_copy(self, "it owns its memory and the blocks handed out from it")

    def __repr__(self):
        return (f"<Pool {self.name!r} block={self._block_size_requested} "
                f"in_use={self.core.in_use}/{pool_core_capacity(self.core)}>")
