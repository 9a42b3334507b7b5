# Slab allocator: requests are routed in O(1) to power-of-two size-class pools.
# Release never searches: a Python Block knows its class; the C API takes the size.

cdef SlabCore* slab_core_new(size_t min_size, size_t max_size, size_t per_class, size_t align,
                             bint grow, bint fallback_system) noexcept nogil:
    """Every class gets `per_class` blocks (see slab_core_new_caps for one count per class)."""
    return _slab_core_new(min_size, max_size, NULL, per_class, align, grow, fallback_system)


cdef SlabCore* slab_core_new_caps(size_t min_size, size_t max_size, const size_t* caps,
                                  size_t align, bint grow, bint fallback_system) noexcept nogil:
    """One capacity per class: caps[k] blocks for class k (caps[0]: the smallest class).

    The caller checks the counts (positive, count x class size does not overflow);
    caps (nclasses entries) is copied. per_class becomes the largest count."""
    if caps == NULL:
        return NULL
    return _slab_core_new(min_size, max_size, caps, 0, align, grow, fallback_system)


cdef SlabCore* _slab_core_new(size_t min_size, size_t max_size, const size_t* caps,
                              size_t uniform, size_t align, bint grow,
                              bint fallback_system) noexcept nogil:
    cdef size_t k
    cdef SlabCore* s = <SlabCore*>calloc(1, sizeof(SlabCore))
    if s == NULL:
        return NULL
    s.min_shift = ca_ceil_log2(min_size)
    s.nclasses = ca_ceil_log2(max_size) - s.min_shift + 1
    s.align = align
    s.grow = grow
    s.fallback_system = fallback_system
    s.cores = <PoolCore**>calloc(s.nclasses, sizeof(PoolCore*))
    s.caps = <size_t*>calloc(s.nclasses, sizeof(size_t))
    if s.cores == NULL or s.caps == NULL:
        free(s.cores)
        free(s.caps)
        free(s)
        return NULL
    for k in range(s.nclasses):
        s.caps[k] = caps[k] if caps != NULL else uniform
        if s.caps[k] > s.per_class:
            s.per_class = s.caps[k]
    return s


cdef size_t slab_class_capacity(SlabCore* s, size_t k) noexcept nogil:
    return s.caps[k] if k < s.nclasses else 0


cdef void slab_core_destroy(SlabCore* s) noexcept nogil:
    cdef size_t k
    if s == NULL:
        return
    for k in range(s.nclasses):
        pool_core_destroy(s.cores[k])
    free(s.cores)
    free(s.caps)
    free(s)


cdef inline Py_ssize_t _class_index(SlabCore* s, size_t size) noexcept nogil:
    cdef size_t shift = ca_ceil_log2(size)
    if shift <= s.min_shift:
        return 0
    shift -= s.min_shift
    if shift >= s.nclasses:
        return -1
    return <Py_ssize_t>shift


cdef Py_ssize_t slab_class_index(SlabCore* s, size_t size) noexcept nogil:
    return _class_index(s, size)


cdef PoolCore* slab_class_core(SlabCore* s, size_t k) noexcept nogil:
    cdef PoolCore* c = <PoolCore*>ca_load_ptr(<void**>&s.cores[k])
    if c != NULL:
        return c
    ca_lock(&s.lock)
    c = s.cores[k]
    if c == NULL:
        c = pool_core_new(<size_t>1 << (s.min_shift + k), s.caps[k], s.align, s.grow)
        if c != NULL:
            ca_store_ptr(<void**>&s.cores[k], c)
        else:
            s.class_failures += 1       # out of memory: the request fails, counted
    ca_unlock(&s.lock)
    return c


cdef inline void* _slab_alloc(SlabCore* s, size_t size, Py_ssize_t* class_out,
                               uint32_t* idx_out) noexcept nogil:
    cdef Py_ssize_t k
    cdef PoolCore* c
    cdef void* p
    cdef int rc
    idx_out[0] = SLOT_NONE
    if size == 0:
        class_out[0] = -1
        return NULL
    k = _class_index(s, size)
    class_out[0] = k
    if k < 0:
        if not s.fallback_system:
            ca_lock(&s.lock)
            s.oversize_failures += 1
            ca_unlock(&s.lock)
            return NULL
        p = ca_aligned_alloc(s.align, size)
        if p != NULL:
            ca_lock(&s.lock)
            s.fallback_allocations += 1
            s.fallback_live += 1
            s.fallback_bytes_live += size
            ca_unlock(&s.lock)
        return p
    c = <PoolCore*>ca_load_ptr(<void**>&s.cores[k])
    if c == NULL:
        c = slab_class_core(s, <size_t>k)       # first use of the class: create it
        if c == NULL:
            return NULL
    ca_lock(&c.lock)                             # pool_core_take, inlined
    rc = _take(c, <uint32_t>size, idx_out)
    ca_unlock(&c.lock)
    if rc != CA_OK:
        idx_out[0] = SLOT_NONE
        return NULL
    return _ptr(c, idx_out[0])


cdef void* slab_alloc(SlabCore* s, size_t size) noexcept nogil:
    cdef Py_ssize_t k
    cdef uint32_t idx
    return _slab_alloc(s, size, &k, &idx)


cdef void* slab_alloc_slot(SlabCore* s, size_t size, Py_ssize_t* class_out,
                           uint32_t* idx_out) noexcept nogil:
    """slab_alloc that also says where the block came from, so that the caller never
    has to map the pointer back (pool_core_find) and can free it with slab_free_slot.

    *class_out: the size class tried (-1: above the largest class, i.e. a system
    fallback block or a refused request; also -1 for size 0). *idx_out: the slot in
    that class, SLOT_NONE for a system block or when NULL is returned.
    """
    return _slab_alloc(s, size, class_out, idx_out)


cdef int slab_free_slot(SlabCore* s, Py_ssize_t k, uint32_t idx) noexcept nogil:
    """Free a class block by the (class, slot) that slab_alloc_slot reported: O(1), no
    pointer search. CA_FOREIGN for a class or slot that does not exist (system blocks
    go back through slab_free), CA_DOUBLE_FREE when the slot is not allocated."""
    cdef PoolCore* c
    cdef int rc
    if k < 0 or <size_t>k >= s.nclasses:
        return CA_FOREIGN
    c = <PoolCore*>ca_load_ptr(<void**>&s.cores[k])
    if c == NULL:
        return CA_FOREIGN
    ca_lock(&c.lock)
    if idx >= c.nslabs * c.per_slab:
        rc = CA_FOREIGN
    else:
        rc = _give(c, idx, _meta(c, idx).gen)
    ca_unlock(&c.lock)
    return rc


cdef Py_ssize_t slab_alloc_slots(SlabCore* s, const size_t* sizes, Py_ssize_t n,
                                 Py_ssize_t* class_out, uint32_t* idx_out,
                                 char** ptr_out) noexcept nogil:
    """slab_alloc_slot for n requests in order, taking each class's lock once per run of
    requests of that class. Serves class blocks only: stops at the first request of size 0,
    above the largest class or whose class is full, and returns how many it served (the
    first ones; each as slab_alloc_slot reports it)."""
    cdef Py_ssize_t j, k, locked = -1
    cdef PoolCore* c = NULL
    cdef uint32_t idx
    for j in range(n):
        if sizes[j] == 0:
            break
        k = _class_index(s, sizes[j])
        if k < 0:
            break
        if k != locked:
            if locked >= 0:
                ca_unlock(&c.lock)
                locked = -1
            c = <PoolCore*>ca_load_ptr(<void**>&s.cores[k])
            if c == NULL:
                c = slab_class_core(s, <size_t>k)
                if c == NULL:
                    break
            ca_lock(&c.lock)
            locked = k
        if _take(c, <uint32_t>sizes[j], &idx) != CA_OK:
            break
        class_out[j] = k
        idx_out[j] = idx
        ptr_out[j] = _ptr(c, idx)
    else:
        j = n
    if locked >= 0:
        ca_unlock(&c.lock)
    return j


cdef int slab_free_slots(SlabCore* s, Py_ssize_t k, const uint32_t* idx,
                         Py_ssize_t n) noexcept nogil:
    """slab_free_slot for n slots of class k under one lock: frees every slot it can and
    returns CA_OK, or the status of the first slot it could not free."""
    cdef PoolCore* c
    cdef Py_ssize_t j
    cdef int rc, first = CA_OK
    cdef size_t capacity
    if n <= 0:
        return CA_OK
    if k < 0 or <size_t>k >= s.nclasses:
        return CA_FOREIGN
    c = <PoolCore*>ca_load_ptr(<void**>&s.cores[k])
    if c == NULL:
        return CA_FOREIGN
    ca_lock(&c.lock)
    capacity = c.nslabs * c.per_slab
    for j in range(n):
        if idx[j] >= capacity:
            rc = CA_FOREIGN
        else:
            rc = _give(c, idx[j], _meta(c, idx[j]).gen)
        if rc != CA_OK and first == CA_OK:
            first = rc
    ca_unlock(&c.lock)
    return first


cdef int slab_free(SlabCore* s, void* ptr, size_t size) noexcept nogil:
    cdef Py_ssize_t k = _class_index(s, size) if size else 0
    cdef PoolCore* c
    if k < 0:
        if not s.fallback_system or ptr == NULL:
            return CA_FOREIGN
        free(ptr)
        ca_lock(&s.lock)
        s.fallback_releases += 1
        s.fallback_live -= 1
        s.fallback_bytes_live -= size
        ca_unlock(&s.lock)
        return CA_OK
    c = <PoolCore*>ca_load_ptr(<void**>&s.cores[k])
    if c == NULL:
        return CA_FOREIGN
    return pool_free(c, ptr)


# ---------------------------------------------------------------------------
# Python layer
# ---------------------------------------------------------------------------

# The typed boxes live on top of the core (coreallocs.boxes registers its box function
# here when it is imported), so the core never imports them.
cdef object _box_factory = None


def _register_box_factory(factory):
    """Install the function behind SlabAllocator.box(layout, value)."""
    global _box_factory
    if not callable(factory):
        raise TypeError(f"the box factory must be callable, not {type(factory).__name__}")
    _box_factory = factory


DEFAULT_BLOCKS_PER_CLASS = 1024   # also what the dict form gives the classes it leaves out


cdef list _parse_class_capacities(object spec, Py_ssize_t lo, Py_ssize_t nclasses):
    """One positive block count per class (smallest first) from `blocks_per_class`:
    an int (every class), a sequence (one per class) or a mapping {class_size: blocks}
    (classes left out get DEFAULT_BLOCKS_PER_CLASS). Checks each count x class size."""
    cdef Py_ssize_t k, n
    cdef bint uniform = False
    sizes = [lo << k for k in range(nclasses)]
    if isinstance(spec, Mapping):
        caps = [DEFAULT_BLOCKS_PER_CLASS] * nclasses
        for key, value in spec.items():
            if isinstance(key, bool) or not hasattr(key, "__index__"):
                raise TypeError(f"blocks_per_class keys must be class sizes (int), "
                                f"not {type(key).__name__}")
            size = key.__index__()
            if size not in sizes:
                raise InvalidSize(f"blocks_per_class: {size} is not a size class "
                                  f"(classes: {', '.join(map(str, sizes))})")
            caps[sizes.index(size)] = as_size(value, f"blocks_per_class[{size}]")
        if len(spec) != len({key.__index__() for key in spec}):
            raise InvalidSize("blocks_per_class: a size class is given twice")
    elif isinstance(spec, bool) or (hasattr(spec, "__index__") and not hasattr(spec, "__iter__")):
        caps = [as_size(spec, "blocks_per_class")] * nclasses     # bool: TypeError
        uniform = True
    elif isinstance(spec, (str, bytes, bytearray, memoryview)) or not hasattr(spec, "__iter__"):
        raise TypeError(f"blocks_per_class must be an int, a sequence of ints (one per class) "
                        f"or a dict {{class_size: blocks}}, not {type(spec).__name__}")
    else:
        values = list(spec)
        if len(values) != nclasses:
            raise InvalidSize(f"blocks_per_class has {len(values)} entries but there are "
                              f"{nclasses} size classes ({sizes[0]}..{sizes[nclasses - 1]} B)")
        caps = [as_size(values[k], f"blocks_per_class[{sizes[k]}]") for k in range(nclasses)]
    for k in range(nclasses):
        n = caps[k]
        if n > 0xFFFFFFF0 or <size_t>n > (<size_t>-1) // 4 // <size_t>sizes[k]:
            if uniform:
                raise InvalidSize(
                    f"blocks_per_class={n} x max_size={sizes[nclasses - 1]} overflows")
            raise InvalidSize(f"blocks_per_class[{sizes[k]}]={n} x {sizes[k]} B overflows")
    return caps


cdef void _system_release(SlabCore* s, char* ptr, size_t size) noexcept:
    free(ptr)
    ca_lock(&s.lock)
    s.fallback_releases += 1
    s.fallback_live -= 1
    s.fallback_bytes_live -= size
    ca_unlock(&s.lock)


@cython.auto_pickle(False)
cdef class SlabAllocator:
    """Power-of-two size classes, each backed by a lazily created pool.

    ``SlabAllocator(min_size=8, max_size=4096, blocks_per_class=1024, *, align=8,
    grow=True, fallback="raise", name=None)``. ``blocks_per_class``: an int (every
    class), a sequence with one count per class (smallest first) or a dict
    ``{class_size: blocks}`` (classes left out get 1024). ``allocate(size)`` routes to the
    smallest class >= size in O(1). Requests above ``max_size`` raise
    :class:`SizeTooLarge` (``fallback="raise"``) or come from the system allocator
    and are counted (``fallback="system"``).
    """

    def __cinit__(self, min_size=8, max_size=4096, blocks_per_class=1024, *, align=8,
                  bint grow=True, str fallback="raise", name=None):
        cdef Py_ssize_t lo = as_size(min_size, "min_size")
        cdef Py_ssize_t hi = as_size(max_size, "max_size")
        cdef Py_ssize_t al = as_alignment(align)
        cdef size_t* caps
        cdef size_t k
        if not ca_is_pow2(lo) or not ca_is_pow2(hi):
            raise InvalidSize(f"min_size and max_size must be powers of two, got {lo} and {hi}")
        if lo > hi:
            raise InvalidSize(f"min_size={lo} is larger than max_size={hi}")
        if hi > (1 << 30):
            raise InvalidSize(f"max_size={hi} exceeds the largest supported class (1 GiB)")
        counts = _parse_class_capacities(blocks_per_class, lo,
                                         ca_ceil_log2(hi) - ca_ceil_log2(lo) + 1)
        if fallback not in ("raise", "system"):
            raise ValueError(f"fallback must be 'raise' or 'system', got {fallback!r}")
        self.fallback = fallback
        self.name = name if name is not None else "slab"
        caps = <size_t*>calloc(len(counts), sizeof(size_t))
        if caps == NULL:
            raise OutOfMemory("cannot allocate the slab allocator's class table")
        for k in range(<size_t>len(counts)):
            caps[k] = <size_t>counts[k]
        self.core = slab_core_new_caps(lo, hi, caps, al, grow, fallback == "system")
        free(caps)
        if self.core == NULL:
            raise OutOfMemory("cannot allocate the slab allocator's class table")

    def __dealloc__(self):
        slab_core_destroy(self.core)
        self.core = NULL

    cdef Py_ssize_t _route(self, Py_ssize_t size) except -2:
        """Class index for `size`, -1 for the system fallback; raises for bad sizes."""
        cdef Py_ssize_t k
        if self._closed:
            raise AllocatorClosed(f"slab allocator {self.name!r} is closed")
        k = _class_index(self.core, <size_t>size)
        if k < 0 and not self.core.fallback_system:
            ca_lock(&self.core.lock)
            self.core.oversize_failures += 1
            ca_unlock(&self.core.lock)
            raise SizeTooLarge(
                f"{self.name}: {size} B is larger than the largest size class "
                f"({self.max_size} B) and fallback='raise'"
            )
        return k

    cdef object _allocate(self, Py_ssize_t size, bint raise_on_exhaust):
        cdef Py_ssize_t k = self._route(size)
        cdef PoolCore* c
        cdef uint32_t idx
        cdef int rc
        cdef Block b
        b = Block.__new__(Block)
        b.owner = self
        if k < 0:
            b.ptr = <char*>ca_aligned_alloc(self.core.align, <size_t>size)
            if b.ptr == NULL:
                raise OutOfMemory(f"{self.name}: the system refused {size} B")
            b.kind = KIND_SYSTEM
            b.size = size
            b.reserved = size
            ca_lock(&self.core.lock)
            self.core.fallback_allocations += 1
            self.core.fallback_live += 1
            self.core.fallback_bytes_live += <size_t>size
            ca_unlock(&self.core.lock)
            return b
        c = slab_class_core(self.core, <size_t>k)
        if c == NULL:
            raise OutOfMemory(f"{self.name}: cannot create the {1 << (self.core.min_shift + k)} B class")
        rc = pool_core_take(c, <uint32_t>size, &idx)
        if rc != CA_OK:
            if not raise_on_exhaust:
                return None
            raise_take_error(c, rc, f"{self.name}[{c.block_size} B]")
        b.kind = KIND_POOL
        _fill_pool_block(b, c, idx, size)
        return b

    def allocate(self, size):
        """A block of at least `size` bytes from the smallest class that fits."""
        return self._allocate(as_size(size, "size"), True)

    def try_allocate(self, size):
        """Like allocate() but returns None when the class is exhausted."""
        return self._allocate(as_size(size, "size"), False)

    def release(self, block):
        """Release `block` into this allocator; ForeignBlock if it came from elsewhere."""
        if not isinstance(block, Block) or (<Block>block).owner is not self:
            raise ForeignBlock(f"{block!r} does not belong to slab allocator {self.name!r}")
        block.release()

    def size_class(self, size):
        """The class size a request of `size` bytes is served from (None: above the largest)."""
        cdef Py_ssize_t k = _class_index(self.core, <size_t>as_size(size, "size"))
        return None if k < 0 else 1 << (self.core.min_shift + k)

    def box(self, layout, value=None):
        """Place one fixed-layout value (struct format or numpy dtype) in a slab block."""
        if _box_factory is None:
            raise RuntimeError("SlabAllocator.box needs coreallocs.boxes (import coreallocs)")
        return _box_factory(self, layout, value)

    @property
    def class_sizes(self):
        return tuple(1 << (self.core.min_shift + k) for k in range(self.core.nclasses))

    @property
    def min_size(self):
        return 1 << self.core.min_shift

    @property
    def max_size(self):
        return 1 << (self.core.min_shift + self.core.nclasses - 1)

    @property
    def blocks_per_class(self):
        """The largest class capacity: every class's when they are all equal
        (see class_capacities for one count per class)."""
        return self.core.per_class

    @property
    def class_capacities(self):
        """Blocks per size class, smallest class first (grow=True: per growth step)."""
        return tuple(self.core.caps[k] for k in range(self.core.nclasses))

    def class_capacity(self, size):
        """The capacity of the class serving `size` bytes (None: above the largest class)."""
        cdef Py_ssize_t k = _class_index(self.core, <size_t>as_size(size, "size"))
        return None if k < 0 else self.core.caps[k]

    @property
    def in_use(self):
        """Live blocks over all classes, including system fallback blocks."""
        cdef size_t k, n = self.core.fallback_live
        for k in range(self.core.nclasses):
            if self.core.cores[k] != NULL:
                n += self.core.cores[k].in_use
        return n

    def class_stats(self):
        """One AllocatorStats per size class (classes never used report zeros)."""
        cdef size_t k
        cdef PoolCore* c
        rows = []
        for k in range(self.core.nclasses):
            c = self.core.cores[k]
            size = 1 << (self.core.min_shift + k)
            name = f"{self.name}[{size}]"
            if c == NULL:
                rows.append(AllocatorStats(name, "blocks", size, 0, 0, 0, 0, 0, 0, 0, 0))
            else:
                rows.append(pool_core_stats(c, name))
        return rows

    @property
    def stats(self):
        """Totals over every class, plus the system-fallback and oversize counters
        (``failures`` also counts requests whose class could not be created)."""
        rows = self.class_stats()
        cdef SlabCore* s = self.core
        cdef uint64_t fb_alloc, fb_rel, fb_live, fb_bytes, oversize
        ca_lock(&s.lock)             # C copies under the lock: no Python code runs in it
        fb_alloc, fb_rel, fb_live, fb_bytes, oversize = (
            s.fallback_allocations, s.fallback_releases, s.fallback_live,
            s.fallback_bytes_live, s.oversize_failures + s.class_failures)
        ca_unlock(&s.lock)
        return AllocatorStats(
            name=self.name,
            unit="blocks",
            block_size=0,
            capacity=sum(r.capacity for r in rows),
            in_use=sum(r.in_use for r in rows) + fb_live,
            high_water=sum(r.high_water for r in rows),
            allocations=sum(r.allocations for r in rows) + fb_alloc,
            releases=sum(r.releases for r in rows) + fb_rel,
            failures=sum(r.failures for r in rows) + oversize,
            bytes_requested=sum(r.bytes_requested for r in rows) + fb_bytes,
            bytes_reserved=sum(r.bytes_reserved for r in rows) + fb_bytes,
            fallback_allocations=fb_alloc,
        )

    def report(self):
        """One row per size class, then the totals."""
        return format_table([*self.class_stats(), self.stats])

    def close(self):
        """Refuse further allocations; BlocksStillLive while blocks are in use."""
        live = self.in_use
        if live:
            raise BlocksStillLive(f"slab allocator {self.name!r} still has {live} block(s) in use")
        self._closed = True

    @property
    def closed(self):
        return self._closed

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        self.close()
        return False

    def __reduce__(self):
        _refuse_copy(self, "it owns its memory and the blocks handed out from it")

    def __reduce_ex__(self, protocol):
        _refuse_copy(self, "it owns its memory and the blocks handed out from it")

    def __copy__(self):
        _refuse_copy(self, "it owns its memory and the blocks handed out from it")

    def __deepcopy__(self, memo):
        _refuse_copy(self, "it owns its memory and the blocks handed out from it")

    def __repr__(self):
        return (f"<SlabAllocator {self.name!r} classes={self.min_size}..{self.max_size} "
                f"in_use={self.in_use} fallback={self.fallback!r}>")
