# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""The bump cursor that carves frame arrays out of the current chunk.

A *chunk* is one arena block exported once as a ``uint8`` numpy array. Every array
points into the chunk's memory and takes the chunk's ``uint8`` array as
its base, so the chunk's arena block stays exported while any of them is alive --
exactly like the pure-Python views.

Recycled array objects. Creating an ndarray costs about as much as ``numpy.empty``
itself, so the cursor keeps the arrays it made in a small fixed table (64 buckets
keyed by dtype and shape, two probed slots per key, 8 arrays each) and hands one out again once the table holds
the only reference to it: the object is re-pointed at fresh chunk memory (``data``),
takes the new chunk as its ``base`` and gets its creation flags back. The memory is
always new (bump allocated), so views and buffers taken from the previous use keep
seeing their own bytes; they reference the chunk, not the array object. An array is
reused only if nothing else references it and its dtype, shape, strides were not
changed in place and it has no weak references. Before a frame buffer is reset,
``release_cached(tag)`` unhooks the free cached arrays that point into it (a scan of
the fixed table: the same work whatever the number of allocations), so they do not
count as leaks; cached arrays the user still holds keep their base and are leaks.

Re-entrancy. A request can run Python code half-way (a dtype's ``.dtype`` attribute,
a shape's ``__index__``, the refill callback, finalizers run by a garbage collection
while an array is created) and that code may use this cursor again. So a request
works on its own copies (parsed request, dtype, chunk, its memory), the recycling
table is always consistent before a reference is dropped, and references are only
dropped at the end of a table update. Only arguments that cannot change are
memoized: None, exact strings, numpy dtypes and builtin types (see
``framealloc.arrays.memoizable``).
"""

cimport cython
cimport numpy as cnp
from cpython.object cimport Py_TPFLAGS_HEAPTYPE, PyObject, PyTypeObject
from cpython.ref cimport Py_DECREF, Py_INCREF, Py_XDECREF
from cpython.tuple cimport PyTuple_New, PyTuple_SET_ITEM
from cpython.type cimport PyType_Check
from libc.stdint cimport uintptr_t
from libc.string cimport memset

import numpy as np

from framealloc import arrays as _arrays
from framealloc.arrays import (
    MAX_COUNT,
    MAX_MEMO,
    as_dtype,
    as_shape,
    check_align,
    check_count,
    split_request,
)

cnp.import_array()

cdef extern from "numpy/arrayobject.h":
    # steals a reference to `descr`
    object PyArray_NewFromDescr(PyTypeObject* subtype, cnp.dtype descr, int nd,
                                cnp.npy_intp* dims, cnp.npy_intp* strides, void* data,
                                int flags, object obj)

    # the public (since numpy 1.7) layout of an array object; only these fields are used
    ctypedef struct PyArrayObject_fields:
        char* data
        int nd
        cnp.npy_intp* dimensions
        cnp.npy_intp* strides
        PyObject* base
        void* descr         # PyArray_Descr*
        int flags
        PyObject* weakreflist

cdef extern from *:
    Py_ssize_t _refcnt "Py_REFCNT"(PyObject* ob)

cdef extern from "numpy/ndarraytypes.h":
    enum: NPY_ITEM_HASOBJECT

cdef enum:
    MAX_NDIM = 32           # = framealloc.arrays.MAX_NDIM (numpy 1.x limit; 2.x allows 64)
    CHUNK_ALIGN = 64
    BUCKETS = 64            # recycling table: buckets keyed by (dtype, shape) ...
    WAYS = 8                # ... with this many array objects each
    DROPPED = 10            # references a table update may drop (WAYS, a base, a descr)
    KEY_NDIM = 4            # arrays with more dimensions are not recycled
    NO_TAG = -1

cdef struct Request:        # a validated array() request
    int nd
    bint memo               # parsed on the fast path (exact ints, plain dtype): memoizable
    Py_ssize_t nbytes
    Py_ssize_t align
    cnp.npy_intp dims[MAX_NDIM]

cdef struct Way:
    PyObject* arr           # owned reference, or NULL
    int tag                 # frame buffer the array's memory belongs to (NO_TAG: unhooked)
    int flags               # flags at creation, restored on reuse

cdef struct Bucket:
    PyObject* descr         # owned reference (NULL: bucket unused)
    int nd
    cnp.npy_intp dims[KEY_NDIM]
    cnp.npy_intp strides[KEY_NDIM]
    int victim              # next way to replace when every way is taken
    Way ways[WAYS]

# unhooked cached arrays point here (never read: only the table references them)
cdef char _PARKED[64]

cdef Py_ssize_t MAX_BYTES = (<Py_ssize_t>1) << 62

cdef cnp.dtype _F64 = np.dtype(np.float64)
cdef object _NO_MEMO = object()
cdef object _SIXTEEN = 16   # the default alignment (a cached small int: identity test)


cdef inline Py_ssize_t _as_dim(object value):
    """A non-negative int that fits the byte limit, else -1 (the slow path decides)."""
    cdef Py_ssize_t d
    try:
        d = value
    except OverflowError:
        return -1
    return d if 0 <= d <= MAX_BYTES else -1
cdef object _EMPTY = np.empty(0, np.uint8)

if _arrays.MAX_NDIM != MAX_NDIM:  # pragma: no cover - a build mismatch
    raise ImportError("framealloc._ccursor was built for another framealloc.arrays")


cdef inline bint _fixed(object dtype):
    """`dtype` always names the same dtype (framealloc.arrays.memoizable, in C)."""
    return (dtype is None or type(dtype) is str or isinstance(dtype, cnp.dtype)
            or (PyType_Check(dtype)
                and not ((<PyTypeObject*>dtype).tp_flags & Py_TPFLAGS_HEAPTYPE)))


cdef inline void _drop(PyObject** dropped, int n) noexcept:
    """Release references a table update took out (after the table is consistent)."""
    cdef int i
    for i in range(n):
        Py_DECREF(<object>dropped[i])


@cython.final
@cython.auto_pickle(False)
cdef class CCursor:
    """Bump allocation of numpy arrays inside one chunk; the offset stays 16-aligned."""

    cdef object _u8             # the chunk (keeps its arena block exported)
    cdef char* _data
    cdef Py_ssize_t _pos
    cdef Py_ssize_t _end
    cdef int _tag               # frame buffer of the chunk (recycling table tag)
    cdef dict _dtypes           # fixed dtype argument -> validated numpy dtype (no subarray)
    cdef object _refill
    cdef readonly Py_ssize_t count      # arrays carved in this frame (reset_count() at swap)
    cdef readonly Py_ssize_t recycled   # arrays handed out again from the table
    cdef Bucket _table[BUCKETS]
    # the last array() request, parsed (repeated requests skip the argument checks)
    cdef object _memo_shape
    cdef object _memo_dtype
    cdef cnp.dtype _memo_dt
    cdef Request _memo
    cdef Bucket* _hint          # bucket of the last array carved

    def __cinit__(self, refill):
        self._refill = refill
        self._u8 = _EMPTY
        self._data = NULL
        self._tag = NO_TAG
        self._dtypes = {None: _F64}
        memset(self._table, 0, sizeof(self._table))
        self._memo_shape = self._memo_dtype = _NO_MEMO

    def __dealloc__(self):
        self._clear_table()

    def __reduce_ex__(self, protocol):
        raise TypeError("CCursor objects cannot be pickled: they point into frame memory")

    def __copy__(self):
        raise TypeError("CCursor objects cannot be copied: they point into frame memory")

    def __deepcopy__(self, memo):
        raise TypeError("CCursor objects cannot be copied: they point into frame memory")

    def reset_count(self):
        """A new frame starts: its arrays are numbered from 0 again."""
        self.count = 0

    def attach(self, cnp.ndarray chunk not None, Py_ssize_t pos=0, int tag=0):
        """Carve the next arrays from `chunk` (a writable, 64-aligned, contiguous uint8 array).

        `pos` resumes a chunk that was detached at that offset (a refused swap); `tag`
        names the frame buffer the chunk belongs to (see release_cached()).
        """
        if (chunk.dtype.num != cnp.NPY_UINT8 or chunk.ndim != 1
                or not cnp.PyArray_ISCARRAY(chunk)
                or (<size_t>cnp.PyArray_DATA(chunk)) % CHUNK_ALIGN
                or cnp.PyArray_SIZE(chunk) % CHUNK_ALIGN):
            raise ValueError("a chunk must be a writable C-contiguous uint8 array, "
                             "64-byte aligned, with a length multiple of 64")
        if pos < 0 or pos > cnp.PyArray_SIZE(chunk):
            raise ValueError(f"pos={pos} is outside the chunk (0..{cnp.PyArray_SIZE(chunk)})")
        if tag < 0:
            raise ValueError(f"tag must be >= 0, got {tag}")
        self._u8 = chunk
        self._data = <char*>cnp.PyArray_DATA(chunk)
        self._pos = pos
        self._end = cnp.PyArray_SIZE(chunk)
        self._tag = tag

    @property
    def chunk(self):
        """The chunk being carved (an empty array when detached)."""
        return self._u8

    def detach(self):
        """Drop the chunk; return the bytes left unused at its end."""
        cdef Py_ssize_t unused = self._end - self._pos
        self._u8 = _EMPTY
        self._data = NULL
        self._pos = self._end = 0
        self._tag = NO_TAG
        return unused

    @property
    def used(self):
        """Bytes of the current chunk handed out (including alignment padding)."""
        return self._pos

    # -- recycling table ------------------------------------------------------------------
    def release_cached(self, int tag):
        """Unhook the free cached arrays whose memory belongs to frame buffer `tag`.

        Called before that buffer is reset: a free array (only the table holds it)
        drops its chunk reference, so it does not keep the buffer exported. Arrays the
        user still holds are left alone (they are what the leak check must see).
        Returns how many were unhooked. The work is a scan of the fixed-size table.
        """
        cdef int b, w, n = 0
        cdef Way* way
        for b in range(BUCKETS):
            if self._table[b].descr == NULL:
                continue
            for w in range(WAYS):
                way = &self._table[b].ways[w]
                if way.arr != NULL and way.tag == tag and _refcnt(way.arr) == 1:
                    _park(way)
                    n += 1
        return n

    def clear_cache(self):
        """Forget every cached array (the allocator closes)."""
        self._clear_table()

    @property
    def cached(self):
        """Array objects held by the recycling table."""
        cdef int b, w, n = 0
        for b in range(BUCKETS):
            for w in range(WAYS):
                n += self._table[b].ways[w].arr != NULL
        return n

    cdef void _clear_table(self) noexcept:
        cdef int b
        for b in range(BUCKETS):
            _clear_bucket(&self._table[b])

    cdef Bucket* _bucket(self, cnp.dtype dt, int nd, cnp.npy_intp* dims) noexcept:
        """The bucket for (dt, shape): the one keyed so among two probed slots, else an
        unused one, else the first (re-keyed if an array is stored). NULL for shapes
        the table does not keep (0-d, more than KEY_NDIM dimensions)."""
        cdef uintptr_t h = (<uintptr_t><PyObject*>dt) >> 4
        cdef int i
        cdef Bucket* first
        cdef Bucket* second
        if nd > KEY_NDIM or nd == 0:
            return NULL
        h = h * 31 + <uintptr_t>nd
        for i in range(nd):
            h = h * 1000003 + <uintptr_t>dims[i]
        h ^= h >> 17
        first = &self._table[h & (BUCKETS - 1)]
        if _keyed(first, dt, nd, dims):
            return first
        second = &self._table[(h + 1) & (BUCKETS - 1)]
        if _keyed(second, dt, nd, dims):
            return second
        if first.descr != NULL and second.descr == NULL:
            return second
        return first

    cdef inline object _reuse(self, Bucket* bucket, char* data, object chunk, int tag):
        """A free cached array of the bucket (keyed for the request) re-pointed at `data`
        inside `chunk`, or None. The table is consistent whenever a reference goes
        (a finalizer run by it may use this cursor)."""
        cdef int w
        cdef Way* way
        cdef PyArrayObject_fields* f
        cdef PyObject* old
        for w in range(WAYS):
            way = &bucket.ways[w]
            if way.arr == NULL or _refcnt(way.arr) != 1:
                continue
            f = <PyArrayObject_fields*>way.arr
            if not _intact(f, bucket):
                _evict(way)        # reshaped / retyped in place, or weakly referenced
                continue
            f.data = data
            f.flags = way.flags
            way.tag = tag
            self.recycled += 1
            out = <object>way.arr
            old = f.base
            if old != <PyObject*>chunk:
                Py_INCREF(chunk)
                f.base = <PyObject*>chunk
                Py_XDECREF(old)
            return out
        return None

    cdef void _keep(self, Bucket* bucket, cnp.ndarray arr, int tag) noexcept:
        """Remember a new chunk array in `bucket`, re-keying the bucket to its key if needed."""
        cdef int w, i, n = 0, nd = cnp.PyArray_NDIM(arr)
        cdef Way* way = NULL
        cdef PyObject* dropped[DROPPED]
        cdef cnp.dtype dt = arr.descr
        if nd == 0 or nd > KEY_NDIM or dt.alignment > 16:
            return  # (the ALIGNED flag restored on reuse holds for alignments <= 16 only)
        if not _keyed(bucket, dt, nd, cnp.PyArray_DIMS(arr)):
            for w in range(WAYS):  # empty the bucket, dropping the references at the end
                if bucket.ways[w].arr != NULL:
                    dropped[n] = bucket.ways[w].arr
                    n += 1
                    bucket.ways[w].arr = NULL
                    bucket.ways[w].tag = NO_TAG
            if bucket.descr != NULL:
                dropped[n] = bucket.descr
                n += 1
            Py_INCREF(dt)
            bucket.descr = <PyObject*>dt
            bucket.nd = nd
            bucket.victim = 0
            for i in range(nd):
                bucket.dims[i] = cnp.PyArray_DIM(arr, i)
                bucket.strides[i] = cnp.PyArray_STRIDE(arr, i)
        for w in range(WAYS):
            if bucket.ways[w].arr == NULL:
                way = &bucket.ways[w]
                break
        if way == NULL:        # every way holds an array the user still uses: replace one
            way = &bucket.ways[bucket.victim]
            bucket.victim = (bucket.victim + 1) % WAYS
            dropped[n] = way.arr
            n += 1
        Py_INCREF(arr)
        way.arr = <PyObject*>arr
        way.tag = tag
        way.flags = cnp.PyArray_FLAGS(arr)
        _drop(dropped, n)

    cdef cnp.dtype _dtype(self, object dtype):
        """The numpy dtype of a dtype argument (may have a subarray: _parse splits it)."""
        cdef cnp.dtype dt
        if dtype is None:
            return _F64
        if isinstance(dtype, cnp.dtype):
            if cnp.PyDataType_FLAGS(<cnp.dtype>dtype) & NPY_ITEM_HASOBJECT:
                return <cnp.dtype>as_dtype(dtype)   # raises TypeError
            return <cnp.dtype>dtype
        if not _fixed(dtype):   # a Python class or another object: may change, not cached
            return <cnp.dtype>as_dtype(dtype)
        try:
            return <cnp.dtype>self._dtypes[dtype]
        except KeyError:
            pass
        dt = <cnp.dtype>as_dtype(dtype)
        if not cnp.PyDataType_HASSUBARRAY(dt) and len(self._dtypes) < MAX_MEMO:
            self._dtypes[dtype] = dt
        return dt

    @cython.binding(False)   # a plain method descriptor: the cheapest call from Python
    def array(self, shape, dtype=None, align=16):
        """An uninitialised C-contiguous array of `shape` and `dtype` from the chunk."""
        cdef Request r
        cdef cnp.dtype dt
        cdef int i
        if shape is self._memo_shape and dtype is self._memo_dtype and align is _SIXTEEN:
            # same request as last time: work on copies (re-entrant calls may re-memo)
            dt = self._memo_dt
            r.nd = self._memo.nd
            r.nbytes = self._memo.nbytes
            r.align = self._memo.align
            for i in range(r.nd):
                r.dims[i] = self._memo.dims[i]
            return self._carve(dt, &r)
        dt = self._parse(shape, dtype, align, &r)
        if r.memo and align is _SIXTEEN and _fixed(dtype):
            self._memo = r            # ints and tuples of ints are immutable: remember
            self._memo_shape = shape
            self._memo_dtype = dtype
            self._memo_dt = dt
        return self._carve(dt, &r)

    @cython.binding(False)   # a plain method descriptor: the cheapest call from Python
    def arrays(self, count, shape, dtype=None, align=16):
        """A tuple of `count` arrays like array(shape, dtype, align) (one call, one parse)."""
        cdef Request r
        cdef cnp.dtype dt
        cdef Py_ssize_t i, n = (count if type(count) is int and 0 <= count <= MAX_COUNT
                                else check_count(count))
        dt = self._parse(shape, dtype, align, &r)
        out = PyTuple_New(n)
        for i in range(n):
            item = self._carve(dt, &r)
            Py_INCREF(item)
            PyTuple_SET_ITEM(out, i, item)
        return out

    @cython.binding(False)   # a plain method descriptor: the cheapest call from Python
    def zeros(self, shape, dtype=None, align=16):
        """Like array(), filled with zeros."""
        cdef Request r
        cdef cnp.dtype dt = self._parse(shape, dtype, align, &r)
        cdef cnp.ndarray out = self._carve(dt, &r)
        if cnp.PyArray_ISCARRAY(out):
            memset(cnp.PyArray_DATA(out), 0, cnp.PyArray_NBYTES(out))
        else:  # cannot happen (every array handed out is C-contiguous); stay correct anyway
            out[...] = np.zeros((), out.dtype)
        return out

    cdef cnp.dtype _parse(self, object shape, object dtype, object align, Request* r):
        """Validate a request into `r`; returns the dtype (raises for bad arguments)."""
        cdef int nd = -1
        cdef int i
        cdef Py_ssize_t count = 0, extent = 0, d, itemsize
        cdef cnp.dtype dt = _F64 if dtype is None else self._dtype(dtype)

        r.align = 16 if align is _SIXTEEN else check_align(align)
        r.memo = False
        if cnp.PyDataType_HASSUBARRAY(dt):
            return self._parse_subarray(shape, dt, r)
        itemsize = dt.itemsize
        # -- shape: fast for an int or a tuple of ints, as_shape() for the rest ----
        # `extent` is the product of the non-zero dimensions: numpy refuses a shape
        # whose extent overflows even when another dimension is 0
        if type(shape) is int:
            d = _as_dim(shape)
            if d >= 0:
                nd = 1
                r.dims[0] = d
                count = extent = d
        elif type(shape) is tuple and len(<tuple>shape) <= MAX_NDIM:
            nd = len(<tuple>shape)
            count = extent = 1
            for i in range(nd):
                item = (<tuple>shape)[i]
                d = _as_dim(item) if type(item) is int else -1
                if d < 0 or (d and extent > MAX_BYTES // d):
                    nd = -1
                    break
                r.dims[i] = d
                if d:
                    extent *= d
                else:
                    count = 0
            if nd >= 0 and count:
                count = extent
        r.memo = nd >= 0
        # (extent < 2**40 and itemsize < 2**20 cannot exceed the limit: no division)
        if nd < 0 or ((extent >> 40 or itemsize >> 20) and itemsize
                      and extent > MAX_BYTES // itemsize):
            r.memo = False
            pyshape, count = as_shape(shape, itemsize)     # raises for bad shapes
            if len(pyshape) > MAX_NDIM:
                split_request(pyshape, dt)                  # raises InvalidSize
            nd = len(pyshape)
            for i in range(nd):
                r.dims[i] = pyshape[i]
        r.nd = nd
        r.nbytes = count * itemsize
        return dt

    cdef cnp.dtype _parse_subarray(self, object shape, cnp.dtype dt, Request* r):
        """A subarray dtype: its dimensions join the shape's, its element dtype is used.

        The checks (dimensions, bytes) are those of the array that will exist, before
        any fixed-size field is written."""
        cdef int i, nd
        cdef Py_ssize_t count
        pyshape, base, count = split_request(shape, dt)    # raises for bad requests
        nd = len(pyshape)
        if nd > MAX_NDIM:  # pragma: no cover - split_request() refuses them
            raise RuntimeError("too many dimensions")
        for i in range(nd):
            r.dims[i] = pyshape[i]
        r.nd = nd
        r.nbytes = count * (<cnp.dtype>base).itemsize
        return <cnp.dtype>base

    cdef inline object _carve(self, cnp.dtype dt, Request* r):
        """One array for a parsed request (`r` is the caller's own copy, never the memo):
        recycled or new in the chunk; _carve_slow() for the rest."""
        cdef Py_ssize_t start, a = r.align, nbytes = r.nbytes
        start = (self._pos + a - 1) & -a
        if nbytes == 0 or a > CHUNK_ALIGN or start + nbytes > self._end:
            return self._carve_slow(dt, r)
        return self._place(dt, r, start)

    cdef object _carve_slow(self, cnp.dtype dt, Request* r):
        """Zero-size arrays, and requests the chunk cannot serve (refill)."""
        cdef Py_ssize_t start, a = r.align, nbytes = r.nbytes
        cdef int i, nd = r.nd
        if nbytes == 0:
            self.count += 1
            return np.empty(tuple([r.dims[i] for i in range(nd)]), dt)
        ready = self._refill(tuple([r.dims[i] for i in range(nd)]), dt, nbytes, a)
        if ready is not None:
            self.count += 1
            return ready
        start = (self._pos + a - 1) & -a    # a fresh chunk with room was attached
        if start + nbytes > self._end or self._data == NULL:
            raise RuntimeError("frame allocator refill did not provide room")
        return self._place(dt, r, start)

    cdef inline object _place(self, cnp.dtype dt, Request* r, Py_ssize_t start):
        """The array at `start` of the chunk: a recycled object or a new one."""
        cdef int tag, nd = r.nd
        cdef cnp.npy_intp* dims = r.dims
        cdef cnp.ndarray arr
        cdef Bucket* bucket
        cdef char* data
        self._pos = (start + r.nbytes + 15) & -16
        self.count += 1
        # from here on Python code may run (finalizers): work on our own references
        chunk = self._u8
        data = self._data + start
        tag = self._tag
        bucket = self._hint
        if bucket == NULL or not _keyed(bucket, dt, nd, dims):
            bucket = self._bucket(dt, nd, dims)
            self._hint = bucket
        if bucket != NULL and _keyed(bucket, dt, nd, dims):
            out = self._reuse(bucket, data, chunk, tag)
            if out is not None:
                return out
        Py_INCREF(dt)
        arr = PyArray_NewFromDescr(<PyTypeObject*>cnp.ndarray, dt, nd, dims, NULL,
                                   data, cnp.NPY_ARRAY_CARRAY, None)
        cnp.set_array_base(arr, chunk)
        if bucket != NULL:
            self._keep(bucket, arr, tag)
        return arr


cdef inline bint _keyed(Bucket* bucket, cnp.dtype dt, int nd, cnp.npy_intp* dims) noexcept:
    """`bucket` holds arrays of exactly this dtype and shape."""
    cdef int i
    if bucket.descr != <PyObject*>dt or bucket.nd != nd:
        return False
    for i in range(nd):
        if bucket.dims[i] != dims[i]:
            return False
    return True


cdef inline bint _intact(PyArrayObject_fields* f, Bucket* bucket) noexcept:
    """The cached array still has the key's dtype, shape and strides, and no weakref."""
    cdef int i
    if f.descr != <void*>bucket.descr or f.nd != bucket.nd or f.weakreflist != NULL:
        return False
    for i in range(bucket.nd):
        if f.dimensions[i] != bucket.dims[i] or f.strides[i] != bucket.strides[i]:
            return False
    return True


cdef void _park(Way* way) noexcept:
    """Unhook a free cached array from its chunk (it keeps its object, not the memory)."""
    cdef PyArrayObject_fields* f = <PyArrayObject_fields*>way.arr
    cdef PyObject* old = f.base
    f.base = NULL
    f.data = _PARKED
    way.tag = NO_TAG
    Py_XDECREF(old)


cdef void _evict(Way* way) noexcept:
    cdef PyObject* arr = way.arr
    way.arr = NULL
    way.tag = NO_TAG
    if arr != NULL:
        Py_DECREF(<object>arr)


cdef void _clear_bucket(Bucket* bucket) noexcept:
    """Empty `bucket`; the references go once it is consistent (finalizers may run)."""
    cdef int w, n = 0
    cdef PyObject* dropped[DROPPED]
    for w in range(WAYS):
        if bucket.ways[w].arr != NULL:
            dropped[n] = bucket.ways[w].arr
            n += 1
            bucket.ways[w].arr = NULL
            bucket.ways[w].tag = NO_TAG
    if bucket.descr != NULL:
        dropped[n] = bucket.descr
        n += 1
    bucket.descr = NULL
    bucket.nd = 0
    bucket.victim = 0
    _drop(dropped, n)
