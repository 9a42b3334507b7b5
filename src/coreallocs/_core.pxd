# C-level declarations of coreallocs (cimport them from other Cython modules).
#
# Thread safety: every function without `_unlocked` in its name takes the owning
# allocator's spin lock and may be called from several threads without the GIL.
# `_unlocked` variants skip the lock: only for a caller with exclusive access.
#
# Pool:   void* pool_alloc(PoolCore*)          NULL when exhausted
#         int   pool_free(PoolCore*, void*)    CA_OK / CA_FOREIGN / CA_DOUBLE_FREE
# Slab:   void* slab_alloc(SlabCore*, size_t size)
#         int   slab_free(SlabCore*, void*, size_t size)   size selects the class in O(1)
#         void* slab_alloc_slot(SlabCore*, size_t size, Py_ssize_t* class_out, uint32_t* idx_out)
#               also reports the block's class (-1: system fallback block / refused) and
#               slot (SLOT_NONE for system blocks and failures): no pointer -> slot search
#         int   slab_free_slot(SlabCore*, Py_ssize_t k, uint32_t idx)   free by (class, slot)
#               from slab_alloc_slot: CA_OK / CA_FOREIGN / CA_DOUBLE_FREE (class blocks only)
#         Py_ssize_t slab_alloc_slots(SlabCore*, const size_t* sizes, n, class_out, idx_out,
#               ptr_out)  n class blocks, one lock per run of one class; stops at the first
#               it cannot serve (size 0, above the largest class, class full): how many served
#         int   slab_free_slots(SlabCore*, k, const uint32_t* idx, n)  n slots of class k,
#               one lock: CA_OK or the status of the first slot not freed
#         slab_core_new(min, max, per_class, ...) gives every class per_class blocks;
#         slab_core_new_caps(min, max, caps, ...) one capacity per class (caps[0]: smallest);
#         size_t slab_class_capacity(SlabCore*, size_t k)   class k's capacity (0: no class k)
# Arena:  void* arena_alloc(ArenaCore*, size_t size, size_t align)
# Cores:  (<Pool>p).core, (<SlabAllocator>s).core, &(<Arena>a).core; keep the Python
#         object alive while you use its core.

cimport cython
from libc.stdint cimport uint32_t, uint64_t

cdef extern from "coreallocs/_capi.h":
    ctypedef unsigned char ca_lock_t
    void ca_lock(ca_lock_t* flag) nogil
    void ca_unlock(ca_lock_t* flag) nogil
    unsigned ca_ceil_log2(size_t n) nogil
    int ca_is_pow2(size_t n) nogil
    void* ca_aligned_alloc(size_t align, size_t size) nogil
    size_t ca_align_up(size_t n, size_t align) nogil
    void* ca_load_ptr(void** slot) nogil
    void ca_store_ptr(void** slot, void* value) nogil
    void ca_poison(void* p, size_t n) nogil
    void ca_unpoison(void* p, size_t n) nogil

cdef enum:
    CA_OK = 0
    CA_EXHAUSTED = 1
    CA_NOMEM = 2
    CA_FOREIGN = 3
    CA_DOUBLE_FREE = 4

cdef enum:
    SLOT_NONE = 0xFFFFFFFF

cdef enum BlockKind:
    KIND_POOL = 0
    KIND_SYSTEM = 1
    KIND_ARENA = 2

# -- pool --------------------------------------------------------------------
cdef struct SlotMeta:
    uint64_t gen          # bumped on every release: stale handles stop matching (64 bits: never wraps)
    uint32_t next         # free-list link (global slot index) while free
    uint32_t requested    # bytes requested by the live allocation
    uint32_t live         # 1 while allocated

cdef struct PoolSlab:
    char* base
    SlotMeta* meta

cdef struct PoolCore:
    ca_lock_t lock
    size_t block_size     # rounded up to `align`
    size_t align
    size_t per_slab       # blocks per slab
    size_t nslabs
    size_t slab_cap
    PoolSlab* slabs
    uint32_t* order       # slab numbers sorted by base address (pointer -> slot lookup)
    uint32_t free_head
    bint grow
    size_t max_blocks
    size_t in_use
    size_t high_water
    uint64_t allocations
    uint64_t releases
    uint64_t failures
    uint64_t bytes_requested

cdef PoolCore* pool_core_new(size_t block_size, size_t per_slab, size_t align, bint grow) noexcept nogil
cdef void pool_core_destroy(PoolCore* p) noexcept nogil
cdef int pool_core_take(PoolCore* p, uint32_t requested, uint32_t* idx_out) noexcept nogil
cdef int pool_core_give(PoolCore* p, uint32_t idx, uint64_t gen) noexcept nogil
cdef int pool_core_find(PoolCore* p, void* ptr, uint32_t* idx_out) noexcept nogil
cdef size_t pool_core_capacity(PoolCore* p) noexcept nogil
cdef void* pool_alloc(PoolCore* p) noexcept nogil
cdef int pool_free(PoolCore* p, void* ptr) noexcept nogil
cdef void* pool_alloc_unlocked(PoolCore* p) noexcept nogil
cdef int pool_free_unlocked(PoolCore* p, void* ptr) noexcept nogil

# -- slab --------------------------------------------------------------------
cdef struct SlabCore:
    ca_lock_t lock           # guards lazy class creation and the fallback counters
    size_t min_shift
    size_t nclasses
    size_t per_class         # the largest class capacity (every class's when uniform)
    size_t align
    bint grow
    bint fallback_system
    PoolCore** cores         # one per class, NULL until first used
    uint64_t oversize_failures
    uint64_t fallback_allocations
    uint64_t fallback_releases
    uint64_t fallback_live
    uint64_t fallback_bytes_live
    size_t* caps             # nclasses entries: blocks of class k (grow=True: per growth step)
    uint64_t class_failures  # requests refused because a class's pool could not be created

cdef SlabCore* slab_core_new(size_t min_size, size_t max_size, size_t per_class, size_t align,
                             bint grow, bint fallback_system) noexcept nogil
cdef SlabCore* slab_core_new_caps(size_t min_size, size_t max_size, const size_t* caps,
                                  size_t align, bint grow, bint fallback_system) noexcept nogil
cdef size_t slab_class_capacity(SlabCore* s, size_t k) noexcept nogil
cdef void slab_core_destroy(SlabCore* s) noexcept nogil
cdef Py_ssize_t slab_class_index(SlabCore* s, size_t size) noexcept nogil
cdef PoolCore* slab_class_core(SlabCore* s, size_t k) noexcept nogil
cdef void* slab_alloc(SlabCore* s, size_t size) noexcept nogil
cdef void* slab_alloc_slot(SlabCore* s, size_t size, Py_ssize_t* class_out,
                           uint32_t* idx_out) noexcept nogil
cdef int slab_free_slot(SlabCore* s, Py_ssize_t k, uint32_t idx) noexcept nogil
cdef Py_ssize_t slab_alloc_slots(SlabCore* s, const size_t* sizes, Py_ssize_t n,
                                 Py_ssize_t* class_out, uint32_t* idx_out,
                                 char** ptr_out) noexcept nogil
cdef int slab_free_slots(SlabCore* s, Py_ssize_t k, const uint32_t* idx,
                         Py_ssize_t n) noexcept nogil
cdef int slab_free(SlabCore* s, void* ptr, size_t size) noexcept nogil

# -- arena -------------------------------------------------------------------
cdef struct ArenaCore:
    ca_lock_t lock
    char* base
    size_t capacity
    size_t offset
    size_t high_water
    uint64_t allocations
    uint64_t releases
    uint64_t failures
    uint64_t resets
    uint64_t rewinds
    uint64_t bytes_requested

cdef void* arena_alloc(ArenaCore* a, size_t size, size_t align) noexcept nogil
cdef void* arena_alloc_unlocked(ArenaCore* a, size_t size, size_t align) noexcept nogil


# -- Python classes ------------------------------------------------------------
@cython.final
@cython.no_gc
cdef class Block:
    cdef char* ptr
    cdef Py_ssize_t size          # usable bytes (what was requested)
    cdef Py_ssize_t reserved      # bytes set aside (class size)
    cdef Py_ssize_t exports       # live buffer exports (memoryview, numpy, ...)
    cdef bint released            # released through this handle
    cdef BlockKind kind
    cdef object owner             # Pool / SlabAllocator / Arena: keeps the memory alive
    cdef object region            # arena region the memory lives in
    cdef public str origin        # public API: allocation site (debug mode) or None; str only: Block is not GC-tracked
    cdef PoolCore* core           # pool / slab class blocks
    cdef SlotMeta* meta
    cdef uint32_t idx
    cdef uint64_t gen
    cdef size_t depth             # arena blocks
    cdef size_t offset
    cdef uint64_t serial
    cdef uint64_t generation

    cdef bint _is_live(self) noexcept
    cdef int _check(self) except -1
    cdef int _raise_dead(self) except -1
    cdef void _release_memory(self) noexcept
    cdef int _bound(self) except -1


cdef class Pool:
    cdef PoolCore* core
    cdef readonly str name
    cdef size_t _block_size_requested
    cdef bint _closed


cdef class SlabAllocator:
    cdef SlabCore* core
    cdef readonly str name
    cdef readonly str fallback
    cdef bint _closed

    cdef Py_ssize_t _route(self, Py_ssize_t size) except -2
    cdef object _allocate(self, Py_ssize_t size, bint raise_on_exhaust)


@cython.final
cdef class _Region:
    cdef char* mem
    cdef size_t size


cdef class Arena:
    cdef ArenaCore core
    cdef _Region region
    cdef uint64_t* stack          # serials of live Python handles/marks, by depth
    cdef size_t depth
    cdef size_t stack_cap
    cdef uint64_t next_serial
    cdef set _exported            # Blocks of this arena that currently export buffers
    cdef readonly str name
    cdef readonly bint debug
    cdef readonly object stale_error
    cdef readonly uint64_t detached
    cdef bint _closed

    cdef int _grow_stack(self) except -1
    cdef object _allocate(self, Py_ssize_t size, Py_ssize_t align, bint raise_on_full)


@cython.final
cdef class Mark:
    cdef Arena arena
    cdef size_t depth
    cdef uint64_t serial
    cdef size_t position          # the arena offset (Python: Mark.offset)
    cdef uint64_t bytes_requested
