# cython: language_level=3
"""The compiled core of :class:`framealloc.FrameObjects`: hand out records, take them back.

``RecordCore(cls, slots)`` keeps the records handed out in the current frame (a
list: the records' one internal reference each) and the free ones (a list).
``core.new`` is a fast-call function: positional values go straight into the slot
offsets resolved once from the class's member descriptors, a free record is popped
in C. ``close_frame()`` ends the frame in O(1) (its records wait); ``settle()``
settles the ended records in C, without Python code per record (``end_frame()``:
both):

1. each record's referrers beyond the frame list: ``Py_REFCNT - 1`` (a record whose
   class was reassigned, or that is weakly referenced, counts as referenced from
   outside);
2. minus the references among the frame's records (their slots, looked up in an
   address hash table of the frame's records);
3. a record with referrers left is reachable from outside, so is every record it
   reaches: those are detached (counted, left to their holder);
4. the others are taken back: slots set to None, appended to the free list.

No user code can run during steps 1-4 (a dropped slot value whose last reference
that was is released after the frame's bookkeeping is complete), so a finalizer
that calls back into the pool sees a consistent one.
"""

cimport cython
from cpython.list cimport PyList_GET_ITEM, PyList_GET_SIZE
from cpython.object cimport PyObject, PyTypeObject
from cpython.ref cimport Py_INCREF
from libc.stdlib cimport free, malloc
from libc.string cimport memset

cdef extern from *:
    Py_ssize_t _refcnt "Py_REFCNT"(PyObject* ob)
    PyTypeObject* _type "Py_TYPE"(PyObject* ob)
    void _set_size "Py_SET_SIZE"(PyObject* ob, Py_ssize_t size)
    void _incref "Py_INCREF"(PyObject* ob)
    void _decref "Py_DECREF"(PyObject* ob)
    void _xdecref "Py_XDECREF"(PyObject* ob)

cdef extern from "Python.h":
    ctypedef struct PyMemberDef:
        int type
        Py_ssize_t offset
    ctypedef struct PyMemberDescrObject:
        PyMemberDef* d_member
    int T_OBJECT_EX
    PyObject* Py_None
    ctypedef struct PyListObject:
        PyObject** ob_item
    ctypedef PyObject* (*PyCFunction)(PyObject*, PyObject*)
    ctypedef struct PyMethodDef:
        const char* ml_name
        PyCFunction ml_meth
        int ml_flags
        const char* ml_doc
    int METH_FASTCALL
    int METH_KEYWORDS
    object PyCFunction_NewEx(PyMethodDef* ml, object owner, PyObject* module)
    Py_ssize_t PY_SSIZE_T_MAX
    Py_ssize_t PyTuple_GET_SIZE(PyObject* tup)
    int _list_append "PyList_Append"(PyObject* lst, PyObject* item)

import weakref

cdef object _weakcount = weakref.getweakrefcount
cdef object _member_descriptor = type(type("_Probe", (), {"__slots__": ("x",)}).x)

cdef enum:
    MAX_SLOTS = 64

cdef Py_ssize_t OUTSIDE = PY_SSIZE_T_MAX // 2  # referrers of a record that counts as held from outside

cdef PyMethodDef _new_def
_new_def.ml_name = b"new"
_new_def.ml_meth = <PyCFunction><void*>_new_record
_new_def.ml_flags = METH_FASTCALL | METH_KEYWORDS
_new_def.ml_doc = (b"new(*values, **fields)\n--\n\nA record for this frame: `values` fill "
                   b"the slots in order, `fields` by name, the rest are None.")


cdef inline size_t _hash(PyObject* p, int shift) noexcept nogil:
    return <size_t>(((<unsigned long long><size_t>p >> 4) * 11400714819323198485ULL) >> shift)


cdef PyObject* _new_record(PyObject* owner, PyObject** args, Py_ssize_t nargs,
                           PyObject* kwnames) except NULL:
    """The fast-call body of ``core.new`` (`owner`: the RecordCore)."""
    cdef RecordCore self = <RecordCore>owner
    cdef Py_ssize_t i, n = self.nslots
    cdef object obj
    if nargs > n:
        raise TypeError(f"{self.cls.__name__} has {n} slots, got {nargs} values")
    if kwnames != NULL and PyTuple_GET_SIZE(kwnames):
        obj = self._named(args, nargs, <tuple>kwnames)
    else:
        obj = self._take()
        for i in range(nargs):
            self._put(<PyObject*>obj, i, args[i])
        for i in range(nargs, n):
            self._put(<PyObject*>obj, i, Py_None)
    self._taken.append(obj)
    Py_INCREF(obj)
    return <PyObject*>obj


@cython.final
@cython.auto_pickle(False)
cdef class RecordCore:
    """Records of `cls` (a ``__slots__`` class validated by FrameObjects) for one frame."""

    cdef readonly object cls
    cdef readonly tuple slots
    cdef Py_ssize_t nslots
    cdef bint weak
    cdef Py_ssize_t weakoffset  # > 0: the weak-reference list pointer's offset in a record
    cdef list _free
    cdef list _taken
    cdef list _ended  # records of ended frames waiting for settle()
    cdef Py_ssize_t max_free
    cdef Py_ssize_t offsets[MAX_SLOTS]  # byte offset of each slot in an instance of cls
    # settle() scratch (grown on demand, used while no Python code runs)
    cdef Py_ssize_t capacity
    cdef Py_ssize_t* refs
    cdef Py_ssize_t* stack
    cdef int table_bits
    cdef PyObject** table_keys
    cdef Py_ssize_t* table_index
    cdef readonly Py_ssize_t created
    cdef readonly Py_ssize_t reused
    cdef readonly Py_ssize_t recycled
    cdef readonly Py_ssize_t detached

    def __cinit__(self, type cls, tuple slots, bint weak, Py_ssize_t max_free=65536):
        cdef Py_ssize_t i
        cdef PyMemberDef* member
        self.cls = cls
        self.slots = slots
        self.nslots = len(slots)
        self.weak = weak
        self.weakoffset = cls.__weakrefoffset__ if weak else 0
        self._free = []
        self._taken = []
        self._ended = []
        self.max_free = max_free
        if self.nslots > MAX_SLOTS:
            raise TypeError(f"frame records have at most {MAX_SLOTS} slots")
        for i in range(self.nslots):  # each slot: a member of cls's own instance layout
            descr = getattr(cls, slots[i], None)
            member = NULL
            if type(descr) is _member_descriptor:
                member = (<PyMemberDescrObject*>descr).d_member
            if (member == NULL or member.type != T_OBJECT_EX or member.offset < 16
                    or member.offset + <Py_ssize_t>sizeof(PyObject*) > cls.__basicsize__
                    or descr.__objclass__ not in cls.__mro__):
                raise TypeError(f"{cls.__name__}.{slots[i]} is not a plain slot")
            self.offsets[i] = member.offset
        if not 0 <= self.weakoffset <= cls.__basicsize__ - <Py_ssize_t>sizeof(PyObject*):
            self.weakoffset = 0  # (managed weak references: asked through weakref)

    def __dealloc__(self):
        self._release_scratch()

    def __reduce_ex__(self, protocol):
        raise TypeError("RecordCore objects cannot be pickled")

    def __copy__(self):
        raise TypeError("RecordCore objects cannot be copied")

    def __deepcopy__(self, memo):
        raise TypeError("RecordCore objects cannot be copied")

    # -- slots ---------------------------------------------------------------------
    cdef inline PyObject** _slot(self, PyObject* obj, Py_ssize_t k) noexcept:
        """Slot `k` of `obj` (exactly of class cls)."""
        return <PyObject**>(<char*>obj + self.offsets[k])

    cdef inline void _put(self, PyObject* obj, Py_ssize_t k, PyObject* value) noexcept:
        """Slot `k` of `obj` (exactly of class cls) := value; the old value is released."""
        cdef PyObject** slot = self._slot(obj, k)
        cdef PyObject* old = slot[0]
        _incref(value)
        slot[0] = value
        _xdecref(old)

    cdef bint _held_weakly(self, PyObject* obj) except -1:
        """Whether weak references to the record `obj` exist (cls has ``__weakref__``)."""
        if self.weakoffset:
            return (<PyObject**>(<char*>obj + self.weakoffset))[0] != NULL
        return _weakcount(<object>obj) > 0

    # -- new() -----------------------------------------------------------------------
    @property
    def new(self):
        """``new(*values, **fields)``: a fast-call function bound to this core (fetch it
        once and keep it)."""
        return PyCFunction_NewEx(&_new_def, self, NULL)

    cdef inline object _take(self):
        """A free record, or a fresh one (``cls.__new__(cls)``)."""
        cdef object obj
        if PyList_GET_SIZE(self._free):
            obj = self._free.pop()
            if <PyObject*>_type(<PyObject*>obj) == <PyObject*>self.cls:
                self.reused += 1
                return obj
        obj = self.cls.__new__(self.cls)
        if <PyObject*>_type(<PyObject*>obj) != <PyObject*>self.cls:
            raise TypeError(f"{self.cls.__name__}.__new__ returned another type")
        self.created += 1
        return obj

    cdef object _named(self, PyObject** args, Py_ssize_t nargs, tuple names):
        """new() with fields given by name (checked before a record is taken)."""
        cdef Py_ssize_t i, k, npos = nargs
        positional = self.slots[:npos]
        values = [None] * self.nslots
        for i in range(npos):
            values[i] = <object>args[i]
        for i in range(len(names)):
            name = names[i]
            if name not in self.slots:
                raise AttributeError(f"{self.cls.__name__} has no slot {name!r}")
            if name in positional:
                raise TypeError(f"slot {name!r} given both by position and by name")
            k = self.slots.index(name)
            values[k] = <object>args[npos + i]
        obj = self._take()
        for k in range(self.nslots):
            self._put(<PyObject*>obj, k, <PyObject*>values[k])
        return obj

    @property
    def live(self):
        return len(self._taken)

    @property
    def free(self):
        return len(self._free)

    @property
    def ended(self):
        return len(self._ended)

    # -- close_frame() and settle() ---------------------------------------------------
    cdef int _reserve(self, Py_ssize_t n) except -1:
        """Scratch for a frame of `n` records (the table: a power of two >= 2n)."""
        cdef int bits = 4
        while (<Py_ssize_t>1 << bits) < 2 * n:
            bits += 1
        if n <= self.capacity:
            self.table_bits = bits
            return 0
        self._release_scratch()
        self.refs = <Py_ssize_t*>malloc((<size_t>1 << bits) // 2 * sizeof(Py_ssize_t))
        self.stack = <Py_ssize_t*>malloc((<size_t>1 << bits) // 2 * sizeof(Py_ssize_t))
        self.table_keys = <PyObject**>malloc((<size_t>1 << bits) * sizeof(PyObject*))
        self.table_index = <Py_ssize_t*>malloc((<size_t>1 << bits) * sizeof(Py_ssize_t))
        if (self.refs == NULL or self.stack == NULL or self.table_keys == NULL
                or self.table_index == NULL):
            self._release_scratch()
            raise MemoryError()
        self.capacity = (<Py_ssize_t>1 << bits) // 2
        self.table_bits = bits
        return 0

    cdef void _release_scratch(self) noexcept:
        free(self.refs)
        free(self.stack)
        free(self.table_keys)
        free(self.table_index)
        self.refs = self.stack = self.table_index = NULL
        self.table_keys = NULL
        self.capacity = 0

    cdef inline Py_ssize_t _find(self, PyObject* p) noexcept:
        """Index of the frame record `p` in the table, -1 if it is none."""
        cdef size_t mask = (<size_t>1 << self.table_bits) - 1
        cdef size_t h = _hash(p, 64 - self.table_bits)
        cdef PyObject* key
        while True:
            key = self.table_keys[h]
            if key == p:
                return self.table_index[h]
            if key == NULL:
                return -1
            h = (h + 1) & mask

    cdef void _mark_held(self, PyObject** items, Py_ssize_t n) noexcept:
        """refs[i] := -1 for every record held from outside or reached from one of those,
        0 for the others (refs[] holds the referrers beyond the frame list)."""
        cdef PyObject* cls = <PyObject*>self.cls
        cdef PyObject* item
        cdef PyObject* value
        cdef Py_ssize_t* refs = self.refs
        cdef Py_ssize_t* stack = self.stack
        cdef Py_ssize_t i, j, k, top = 0, m = self.nslots, roots = 0
        cdef size_t mask = (<size_t>1 << self.table_bits) - 1, h
        cdef int shift = 64 - self.table_bits
        memset(self.table_keys, 0, (mask + 1) * sizeof(PyObject*))
        for i in range(n):  # the frame's records by address
            item = items[i]
            h = _hash(item, shift)
            while self.table_keys[h] != NULL and self.table_keys[h] != item:
                h = (h + 1) & mask
            if self.table_keys[h] == NULL:
                self.table_keys[h] = item
                self.table_index[h] = i
        for i in range(n):  # minus the references among them
            item = items[i]
            if <PyObject*>_type(item) != cls:
                continue  # (a reassigned class: its references count as outside ones)
            for k in range(m):
                value = self._slot(item, k)[0]
                if value != NULL and <PyObject*>_type(value) == cls:
                    j = self._find(value)
                    if j >= 0:
                        refs[j] -= 1
        for i in range(n):
            roots += refs[i] > 0
        if roots == 0:
            return
        for i in range(n):  # the roots: referrers left
            if refs[i] > 0:
                refs[i] = -1
                stack[top] = i
                top += 1
        while top:  # ... and what they reach
            top -= 1
            item = items[stack[top]]
            if <PyObject*>_type(item) != cls:
                continue
            for k in range(m):
                value = self._slot(item, k)[0]
                if value != NULL and <PyObject*>_type(value) == cls:
                    j = self._find(value)
                    if j >= 0 and refs[j] >= 0:
                        refs[j] = -1
                        stack[top] = j
                        top += 1

    def close_frame(self):
        """The frame ends: its records wait for settle() (O(1); with records of an earlier
        frame that was not settled yet, they wait together)."""
        fresh = []  # (allocated first: an allocation may start a collection)
        taken = self._taken
        if PyList_GET_SIZE(self._ended):
            self._ended.extend(taken)
        else:
            self._ended = taken
        self._taken = fresh

    def end_frame(self):
        """close_frame() then settle(): take back the frame's records nothing else
        references; return how many."""
        self.close_frame()
        return self.settle()

    def settle(self):
        """Take back the ended frames' records nothing else references; return how many."""
        cdef list ended
        cdef Py_ssize_t n
        cdef Py_ssize_t i, k, kept = 0, dropped = 0, m = self.nslots, room
        cdef Py_ssize_t* refs
        cdef PyObject** items
        cdef PyObject** slot
        cdef PyObject** release = NULL
        cdef PyObject* item
        cdef PyObject* old
        cdef PyObject* cls = <PyObject*>self.cls
        cdef bint shared = False, weak = self.weak
        fresh = []  # (allocated first: an allocation may start a collection)
        ended = self._ended
        n = PyList_GET_SIZE(ended)
        if n == 0:
            return 0
        self._ended = fresh
        try:
            self._reserve(n)
            # everything a record's slots drop, and the detached records' list references:
            # released once the bookkeeping is done (their finalizers may run Python code)
            release = <PyObject**>malloc((n * (m + 1)) * sizeof(PyObject*))
            if release == NULL:
                raise MemoryError()
        except MemoryError:
            self._ended = ended  # (nothing ran since: the fresh list is still empty)
            raise
        refs = self.refs
        items = (<PyListObject*>ended).ob_item
        for i in range(n):
            item = items[i]
            if <PyObject*>_type(item) != cls or (weak and self._held_weakly(item)):
                refs[i] = OUTSIDE
            else:
                refs[i] = _refcnt(item) - 1
            if refs[i]:
                shared = True
        # -- from here to the release no Python code runs --------------------------
        if shared:
            self._mark_held(items, n)
        for i in range(n):
            item = items[i]
            if refs[i]:
                self.detached += 1
                release[dropped] = item  # the frame list's reference
                dropped += 1
                continue
            for k in range(m):
                slot = self._slot(item, k)
                old = slot[0]
                _incref(Py_None)
                slot[0] = Py_None
                if old != NULL:
                    if _refcnt(old) > 1:
                        _decref(old)  # (not its last reference: nothing runs)
                    else:
                        release[dropped] = old
                        dropped += 1
            items[kept] = item  # the taken-back records, in order, at the front
            kept += 1
        self.recycled += kept
        room = self.max_free - PyList_GET_SIZE(self._free)
        while kept > room and kept > 0:
            kept -= 1
            release[dropped] = items[kept]
            dropped += 1
        _set_size(<PyObject*>ended, kept)
        try:
            if PyList_GET_SIZE(self._free) == 0:
                self._free = ended  # the frame list becomes the free list
            else:
                self._free.extend(ended)
        finally:
            # -- released: Python code may run from here --------------------------------
            ended = None
            for i in range(dropped):
                _decref(release[i])
            free(release)
        return kept

    def clear(self):
        """Forget every record."""
        self._taken = []
        self._ended = []
        self._free = []
