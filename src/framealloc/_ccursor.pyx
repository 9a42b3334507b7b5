# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Compiled twin of :class:`framealloc.cursor.PyCursor` (same interface, same rules).

Every array points into the chunk's memory and takes the chunk's ``uint8`` array as
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
"""

cimport cython
cimport numpy as cnp
from cpython.object cimport PyObject, PyTypeObject
from cpython.ref cimport Py_DECREF, Py_INCREF, Py_XDECREF
from cpython.tuple cimport PyTuple_New, PyTuple_SET_ITEM
from libc.stdint cimport uintptr_t
from libc.string cimport memset

import numpy as np

from framealloc.arrays import MAX_COUNT, as_dtype, as_shape, check_align, check_count

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

cdef enum:
    MAX_NDIM = 32           # numpy 1.x limit (numpy 2.x allows 64)
    CHUNK_ALIGN = 64
    BUCKETS = 64            # recycling table: buckets keyed by (dtype, shape) ...
    WAYS = 8                # ... with this many array objects each
    KEY_NDIM = 4            # arrays with more dimensions are not recycled
    NO_TAG = -1

cdef struct Request:        # a validated array() request
    int nd
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


@cython.final
cdef class CCursor:
    """Bump allocation of numpy arrays inside one chunk; the offset stays 16-aligned."""

    cdef object _u8             # the chunk (keeps its arena block exported)
    cdef char* _data
    cdef Py_ssize_t _pos
    cdef Py_ssize_t _end
    cdef int _tag               # frame buffer of the chunk (recycling table tag)
    cdef dict _dtypes           # dtype argument -> validated numpy dtype
    cdef object _refill
    cdef public Py_ssize_t count
    cdef public Py_ssize_t recycled     # arrays handed out again from the table
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

    cdef inline object _reuse(self, Bucket* bucket, char* data):
        """A free cached array of the bucket (keyed for the request) re-pointed at `data`."""
        cdef int w
        cdef Way* way
        cdef PyArrayObject_fields* f
        cdef PyObject* old
        cdef PyObject* chunk = <PyObject*>self._u8
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
            way.tag = self._tag
            self.recycled += 1
            old = f.base
            if old != chunk:
                Py_INCREF(<object>chunk)
                f.base = chunk
                Py_XDECREF(old)
            return <object>way.arr
        return None

    cdef void _keep(self, Bucket* bucket, cnp.ndarray arr) noexcept:
        """Remember a new chunk array in `bucket`, re-keying the bucket to its key if needed."""
        cdef int w, i, nd = cnp.PyArray_NDIM(arr)
        cdef Way* way = NULL
        cdef cnp.dtype dt = arr.descr
        if dt.alignment > 16:  # the ALIGNED flag restored on reuse holds for <= 16 only
            return
        if not _keyed(bucket, dt, nd, cnp.PyArray_DIMS(arr)):
            _clear_bucket(bucket)
            Py_INCREF(dt)
            bucket.descr = <PyObject*>dt
            bucket.nd = nd
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
            _evict(way)
        Py_INCREF(arr)
        way.arr = <PyObject*>arr
        way.tag = self._tag
        way.flags = cnp.PyArray_FLAGS(arr)

    cdef cnp.dtype _dtype(self, object dtype):
        cdef cnp.dtype dt
        try:
            return <cnp.dtype>self._dtypes[dtype]
        except KeyError:
            pass
        except TypeError:       # unhashable spec (list of fields): validate, do not cache
            return <cnp.dtype>as_dtype(dtype)
        dt = <cnp.dtype>as_dtype(dtype)
        self._dtypes[dtype] = dt
        return dt

    @cython.binding(False)   # a plain method descriptor: the cheapest call from Python
    def array(self, shape, dtype=None, align=16):
        """An uninitialised C-contiguous array of `shape` and `dtype` from the chunk."""
        cdef Request r
        cdef cnp.dtype dt
        if shape is self._memo_shape and dtype is self._memo_dtype and align is _SIXTEEN:
            return self._carve(self._memo_dt, &self._memo)   # same request as last time
        dt = self._parse(shape, dtype, align, &r)
        if align is _SIXTEEN and (type(shape) is int or type(shape) is tuple) and (
                dtype is None or isinstance(dtype, (str, type, np.dtype))):
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
        # (extent < 2**40 and itemsize < 2**20 cannot exceed the limit: no division)
        if nd < 0 or ((extent >> 40 or itemsize >> 20) and itemsize
                      and extent > MAX_BYTES // itemsize):
            pyshape, count = as_shape(shape, itemsize)     # raises for bad shapes
            if len(pyshape) > MAX_NDIM:
                raise ValueError(f"at most {MAX_NDIM} dimensions are supported, got {len(pyshape)}")
            nd = len(pyshape)
            for i in range(nd):
                r.dims[i] = pyshape[i]
        r.nd = nd
        r.nbytes = count * itemsize
        return dt

    cdef inline object _carve(self, cnp.dtype dt, Request* r):
        """One array for a parsed request: recycled, new in the chunk, or from refill."""
        cdef Py_ssize_t start, end, a = r.align, nbytes = r.nbytes
        cdef cnp.ndarray arr
        cdef Bucket* bucket
        cdef int i
        if nbytes == 0:
            self.count += 1
            return np.empty(tuple([r.dims[i] for i in range(r.nd)]), dt)
        start = (self._pos + a - 1) & -a
        if a > CHUNK_ALIGN or start + nbytes > self._end:
            ready = self._refill(tuple([r.dims[i] for i in range(r.nd)]), dt, nbytes, a)
            if ready is not None:
                self.count += 1
                return ready
            start = (self._pos + a - 1) & -a    # a fresh chunk with room was attached
            if start + nbytes > self._end or self._data == NULL:
                raise RuntimeError("frame allocator refill did not provide room")
        end = start + nbytes
        self._pos = (end + 15) & -16
        self.count += 1
        bucket = self._hint
        if bucket == NULL or not _keyed(bucket, dt, r.nd, r.dims):
            bucket = self._bucket(dt, r.nd, r.dims)
            self._hint = bucket
        if bucket != NULL and _keyed(bucket, dt, r.nd, r.dims):
            out = self._reuse(bucket, self._data + start)
            if out is not None:
                return out
        Py_INCREF(dt)
        arr = PyArray_NewFromDescr(<PyTypeObject*>cnp.ndarray, dt, r.nd, r.dims, NULL,
                                   self._data + start, cnp.NPY_ARRAY_CARRAY, None)
        cnp.set_array_base(arr, self._u8)
        if bucket != NULL:
            self._keep(bucket, arr)
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
    cdef int w
    cdef PyObject* descr = bucket.descr
    for w in range(WAYS):
        _evict(&bucket.ways[w])
    bucket.descr = NULL
    bucket.nd = 0
    bucket.victim = 0
    if descr != NULL:
        Py_DECREF(<object>descr)
