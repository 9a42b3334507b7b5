# cython: freethreading_compatible = False
"""A small Cython module that uses the C-level API exactly as a downstream user would.

It serves the benchmarks (nanoseconds per call, timed in C) and the thread tests
(several threads calling the nogil API at once, with the results checked).
"""

from libc.stdint cimport uint32_t, uint64_t, uintptr_t
from libc.stdlib cimport free, malloc
from libc.string cimport memset

from coreallocs cimport (
    CA_OK,
    Arena,
    Pool,
    SlabAllocator,
    SlabCore,
    arena_alloc,
    arena_alloc_unlocked,
    pool_alloc,
    pool_alloc_unlocked,
    pool_free,
    pool_free_unlocked,
    slab_alloc,
    slab_alloc_slot,
    slab_alloc_slots,
    slab_class_capacity,
    slab_core_destroy,
    slab_core_new,
    slab_core_new_caps,
    slab_free,
    slab_free_slot,
    slab_free_slots,
)

cdef extern from "<time.h>" nogil:
    ctypedef long time_t
    struct timespec:
        time_t tv_sec
        long tv_nsec
    int clock_gettime(int clk, timespec* ts)
    int CLOCK_MONOTONIC


cdef inline uint64_t _now() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return <uint64_t>ts.tv_sec * 1000000000 + <uint64_t>ts.tv_nsec


def pool_alloc_free_ns(Pool pool, Py_ssize_t n, bint locked=True):
    """Mean ns of one pool_alloc + pool_free pair (C level, nogil), over n pairs."""
    cdef Py_ssize_t i
    cdef void* p
    cdef uint64_t t0, t1
    cdef int bad = 0
    with nogil:
        t0 = _now()
        if locked:
            for i in range(n):
                p = pool_alloc(pool.core)
                bad |= pool_free(pool.core, p)
        else:
            for i in range(n):
                p = pool_alloc_unlocked(pool.core)
                bad |= pool_free_unlocked(pool.core, p)
        t1 = _now()
    if bad:
        raise RuntimeError("pool_free reported an error")
    return (t1 - t0) / <double>n


def pool_batch_ns(Pool pool, Py_ssize_t batch, Py_ssize_t rounds):
    """Mean ns per block to allocate `batch` blocks then free them all (a batch benchmark)."""
    cdef void** ptrs = <void**>malloc(batch * sizeof(void*))
    cdef Py_ssize_t r, i
    cdef uint64_t t0, t1
    cdef int bad = 0
    if ptrs == NULL:
        raise MemoryError()
    try:
        with nogil:
            t0 = _now()
            for r in range(rounds):
                for i in range(batch):
                    ptrs[i] = pool_alloc(pool.core)
                for i in range(batch):
                    bad |= pool_free(pool.core, ptrs[i])
            t1 = _now()
    finally:
        free(ptrs)
    if bad:
        raise RuntimeError("pool_free reported an error (pool too small for the batch?)")
    return (t1 - t0) / <double>(batch * rounds)


def malloc_batch_ns(size_t size, Py_ssize_t batch, Py_ssize_t rounds):
    """The same batch pattern with the system malloc/free, for a same-run ratio."""
    cdef void** ptrs = <void**>malloc(batch * sizeof(void*))
    cdef Py_ssize_t r, i
    cdef uint64_t t0, t1
    if ptrs == NULL:
        raise MemoryError()
    try:
        with nogil:
            t0 = _now()
            for r in range(rounds):
                for i in range(batch):
                    ptrs[i] = malloc(size)
                    (<char*>ptrs[i])[0] = 1
                for i in range(batch):
                    free(ptrs[i])
            t1 = _now()
    finally:
        free(ptrs)
    return (t1 - t0) / <double>(batch * rounds)


def slab_mixed_ns(SlabAllocator slab, Py_ssize_t rounds):
    """Mean ns per block for 1000 mixed-size (16..256 B) slab_alloc then slab_free."""
    cdef size_t sizes[5]
    cdef void* ptrs[1000]
    cdef Py_ssize_t r, i
    cdef uint64_t t0, t1
    cdef int bad = 0
    sizes[0] = 16; sizes[1] = 64; sizes[2] = 128; sizes[3] = 256; sizes[4] = 32
    with nogil:
        t0 = _now()
        for r in range(rounds):
            for i in range(1000):
                ptrs[i] = slab_alloc(slab.core, sizes[i % 5])
            for i in range(1000):
                bad |= slab_free(slab.core, ptrs[i], sizes[i % 5])
        t1 = _now()
    if bad:
        raise RuntimeError("slab_free reported an error (classes too small for 200 blocks each?)")
    return (t1 - t0) / <double>(1000 * rounds)


def arena_alloc_ns(Arena arena, Py_ssize_t n, size_t size, bint locked=True):
    """Mean ns of one arena_alloc (C level) over n allocations; the caller resets the arena."""
    cdef Py_ssize_t i
    cdef uint64_t t0, t1
    cdef void* p = NULL
    with nogil:
        t0 = _now()
        for i in range(n):
            p = arena_alloc(&arena.core, size, 8) if locked else arena_alloc_unlocked(&arena.core, size, 8)
            if p == NULL:
                break
        t1 = _now()
    if p == NULL:
        raise RuntimeError("arena full: give it at least n*size bytes")
    return (t1 - t0) / <double>n


def pool_free_address(Pool pool, size_t address):
    """Free a block by address through the C API; returns the C status code."""
    return pool_free(pool.core, <void*>address)


def pool_alloc_address(Pool pool):
    """Allocate through the C API; returns the address (0 when exhausted)."""
    return <size_t>pool_alloc(pool.core)


def slab_free_address(SlabAllocator slab, size_t address, size_t size):
    return slab_free(slab.core, <void*>address, size)


def slab_alloc_address(SlabAllocator slab, size_t size):
    return <size_t>slab_alloc(slab.core, size)


def slab_alloc_slot_address(SlabAllocator slab, size_t size):
    """slab_alloc_slot through the C API: (address or 0, class index, slot)."""
    cdef Py_ssize_t k = -2
    cdef uint32_t idx = 0
    cdef void* p = slab_alloc_slot(slab.core, size, &k, &idx)
    return <size_t>p, k, idx


def slab_free_slot_index(SlabAllocator slab, Py_ssize_t k, uint32_t idx):
    """slab_free_slot through the C API; returns the C status code."""
    return slab_free_slot(slab.core, k, idx)


def slab_alloc_slots_list(SlabAllocator slab, sizes):
    """slab_alloc_slots through the C API: [(address, class index, slot)] of the requests
    served, in order."""
    cdef Py_ssize_t n = len(sizes), j, got
    cdef size_t* want = <size_t*>malloc((n or 1) * sizeof(size_t))
    cdef Py_ssize_t* classes = <Py_ssize_t*>malloc((n or 1) * sizeof(Py_ssize_t))
    cdef uint32_t* slots = <uint32_t*>malloc((n or 1) * sizeof(uint32_t))
    cdef char** ptrs = <char**>malloc((n or 1) * sizeof(char*))
    try:
        if want == NULL or classes == NULL or slots == NULL or ptrs == NULL:
            raise MemoryError()
        for j in range(n):
            want[j] = sizes[j]
        got = slab_alloc_slots(slab.core, want, n, classes, slots, ptrs)
        return [(<size_t>ptrs[j], classes[j], slots[j]) for j in range(got)]
    finally:
        free(want)
        free(classes)
        free(slots)
        free(ptrs)


def slab_free_slots_list(SlabAllocator slab, Py_ssize_t k, slots):
    """slab_free_slots through the C API; returns the C status code."""
    cdef Py_ssize_t n = len(slots), j
    cdef uint32_t* idx = <uint32_t*>malloc((n or 1) * sizeof(uint32_t))
    if idx == NULL:
        raise MemoryError()
    try:
        for j in range(n):
            idx[j] = slots[j]
        return slab_free_slots(slab.core, k, idx, n)
    finally:
        free(idx)


cdef int _hammer(void* core_owner, int which, Py_ssize_t iters, Py_ssize_t batch, uint64_t tag) noexcept nogil:
    """Allocate `batch` blocks, stamp each with (tag, i), verify, free; repeat. Returns errors.

    which: 0 pool_alloc/pool_free, 1 slab_alloc/slab_free, 2 slab_alloc_slot/slab_free_slot.
    """
    cdef void** ptrs = <void**>malloc(batch * sizeof(void*))
    cdef uint32_t* slots = <uint32_t*>malloc(batch * sizeof(uint32_t))
    cdef Py_ssize_t r, i, k = 0
    cdef int errors = 0
    cdef uint64_t stamp
    if ptrs == NULL or slots == NULL:
        free(ptrs)
        free(slots)
        return 1
    for r in range(iters):
        for i in range(batch):
            if which == 0:
                ptrs[i] = pool_alloc((<Pool>core_owner).core)
            elif which == 1:
                ptrs[i] = slab_alloc((<SlabAllocator>core_owner).core, 64)
            else:
                ptrs[i] = slab_alloc_slot((<SlabAllocator>core_owner).core, 64, &k, &slots[i])
            if ptrs[i] != NULL:
                stamp = (tag << 32) | <uint64_t>i
                (<uint64_t*>ptrs[i])[0] = stamp
        for i in range(batch):
            if ptrs[i] == NULL:
                continue
            stamp = (tag << 32) | <uint64_t>i
            if (<uint64_t*>ptrs[i])[0] != stamp:
                errors += 1         # another thread got the same block
            if which == 0:
                errors += pool_free((<Pool>core_owner).core, ptrs[i]) != CA_OK
            elif which == 1:
                errors += slab_free((<SlabAllocator>core_owner).core, ptrs[i], 64) != CA_OK
            else:
                errors += slab_free_slot((<SlabAllocator>core_owner).core, k, slots[i]) != CA_OK
    free(ptrs)
    free(slots)
    return errors


def hammer(allocator, Py_ssize_t iters, Py_ssize_t batch, uint64_t tag, bint by_slot=False):
    """Run the nogil stress loop on a Pool (block >= 8 B) or SlabAllocator; returns error count.

    Call it from several Python threads at once: the GIL is released for the whole loop.
    by_slot (slab only): allocate with slab_alloc_slot and free with slab_free_slot.
    """
    cdef int which
    cdef int errors
    cdef void* owner = <void*>allocator
    if isinstance(allocator, Pool):
        if (<Pool>allocator).core.block_size < 8:
            raise ValueError("hammer needs blocks of at least 8 bytes")
        which = 0
    elif isinstance(allocator, SlabAllocator):
        which = 2 if by_slot else 1
    else:
        raise TypeError("hammer needs a Pool or a SlabAllocator")
    with nogil:
        errors = _hammer(owner, which, iters, batch, tag)
    return errors


cdef list _fill_classes(SlabCore* core):
    """For each class (smallest first): slab_alloc its class size until NULL, free them all,
    and report (blocks obtained, slab_class_capacity)."""
    cdef size_t k, i, n, size
    cdef void** ptrs
    out = []
    for k in range(core.nclasses):
        size = (<size_t>1) << (core.min_shift + k)
        ptrs = <void**>malloc((slab_class_capacity(core, k) + 1) * sizeof(void*))
        if ptrs == NULL:
            raise MemoryError()
        n = 0
        with nogil:
            while n <= slab_class_capacity(core, k):
                ptrs[n] = slab_alloc(core, size)
                if ptrs[n] == NULL:
                    break
                n += 1
            for i in range(n):
                slab_free(core, ptrs[i], size)
        free(ptrs)
        out.append((n, slab_class_capacity(core, k)))
    return out


def slab_fill_classes(SlabAllocator slab):
    """_fill_classes on a SlabAllocator's core (use grow=False: a growing class never fills)."""
    return _fill_classes(slab.core)


def slab_core_caps_fill(size_t min_size, size_t max_size, caps):
    """Build a SlabCore with the C API, slab_core_new_caps(caps) or slab_core_new(caps) for an
    int, fill every class (grow off), destroy it; returns ([(obtained, capacity)], per_class)."""
    cdef SlabCore* core
    cdef size_t* arr
    cdef size_t k
    if isinstance(caps, int):
        core = slab_core_new(min_size, max_size, caps, 8, False, False)
    else:
        arr = <size_t*>malloc(len(caps) * sizeof(size_t))
        if arr == NULL:
            raise MemoryError()
        for k in range(<size_t>len(caps)):
            arr[k] = caps[k]
        core = slab_core_new_caps(min_size, max_size, arr, 8, False, False)
        free(arr)
    if core == NULL:
        raise MemoryError()
    try:
        return _fill_classes(core), core.per_class
    finally:
        slab_core_destroy(core)
