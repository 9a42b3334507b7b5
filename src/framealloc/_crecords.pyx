# cython: language_level=3
"""The compiled core of :class:`framealloc.FrameObjects`: hand out records, take them back.

``RecordCore(cls, slots)`` keeps the records handed out in the current frame and
the free ones. ``end_frame()`` takes back every record that only the core's list
references (``Py_REFCNT == 1`` on the borrowed list item), then settles the others:
references among the frame's records are counted, a record referenced more than
that (or weakly referenced, or whose class was changed) is reachable from outside
and detached together with every record it reaches; the rest are taken back. A
taken-back record has its slots set to None before it goes to the free list. All
object handling is reference-counted Python-object code: user code that runs in
the middle (a finalizer of a dropped slot value) cannot make it touch freed memory.
"""

cimport cython
from cpython.list cimport PyList_GET_ITEM, PyList_GET_SIZE
from cpython.object cimport PyObject, PyTypeObject
from cpython.ref cimport Py_XDECREF, Py_XINCREF
from libc.stdlib cimport free, malloc, qsort

cdef extern from *:
    Py_ssize_t _refcnt "Py_REFCNT"(PyObject* ob)
    PyTypeObject* _type "Py_TYPE"(PyObject* ob)

cdef extern from "Python.h":
    ctypedef struct PyMemberDef:
        int type
        Py_ssize_t offset
    ctypedef struct PyMemberDescrObject:
        PyMemberDef* d_member
    int T_OBJECT_EX

import weakref

cdef object _weakcount = weakref.getweakrefcount
cdef object _member_descriptor = type(type("_Probe", (), {"__slots__": ("x",)}).x)

cdef enum:
    MAX_SLOTS = 64

cdef struct Entry:          # a record's address and its index in the held list
    size_t addr
    Py_ssize_t index


cdef int _by_address(const void* a, const void* b) noexcept nogil:
    cdef size_t x = (<const Entry*>a).addr, y = (<const Entry*>b).addr
    return (x > y) - (x < y)


cdef Py_ssize_t _find(Entry* table, Py_ssize_t n, size_t addr) noexcept nogil:
    cdef Py_ssize_t lo = 0, hi = n - 1, mid
    while lo <= hi:
        mid = (lo + hi) >> 1
        if table[mid].addr < addr:
            lo = mid + 1
        elif table[mid].addr > addr:
            hi = mid - 1
        else:
            return table[mid].index
    return -1


@cython.final
@cython.auto_pickle(False)
cdef class RecordCore:
    """Records of `cls` (a ``__slots__`` class validated by FrameObjects) for one frame."""

    cdef readonly object cls
    cdef readonly tuple slots
    cdef Py_ssize_t nslots
    cdef bint weak
    cdef list _free
    cdef list _taken
    cdef Py_ssize_t max_free
    cdef Py_ssize_t offsets[MAX_SLOTS]  # byte offset of each slot in an instance of cls
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
        self._free = []
        self._taken = []
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

    def __reduce_ex__(self, protocol):
        raise TypeError("RecordCore objects cannot be pickled")

    def __copy__(self):
        raise TypeError("RecordCore objects cannot be copied")

    def __deepcopy__(self, memo):
        raise TypeError("RecordCore objects cannot be copied")

    cdef inline void _set(self, object obj, Py_ssize_t k, object value) noexcept:
        """Slot `k` of `obj` (exactly of class cls) := value; the old value is released."""
        cdef PyObject** slot = <PyObject**>(<char*><PyObject*>obj + self.offsets[k])
        cdef PyObject* old = slot[0]
        Py_XINCREF(<PyObject*>value)
        slot[0] = <PyObject*>value
        Py_XDECREF(old)

    cdef inline PyObject* _get(self, PyObject* obj, Py_ssize_t k) noexcept:
        """Slot `k` of `obj` (exactly of class cls), borrowed, NULL when unset."""
        return (<PyObject**>(<char*>obj + self.offsets[k]))[0]

    @property
    def live(self):
        return len(self._taken)

    @property
    def free(self):
        return len(self._free)

    @cython.binding(False)
    def new(self, *values, **fields):
        """A record for this frame: `values` fill the slots in order, `fields` by name,
        the rest are None."""
        cdef Py_ssize_t i, n = len(values)
        if n > self.nslots:
            raise TypeError(f"{self.cls.__name__} has {self.nslots} slots, got {n} values")
        if fields:
            for name in fields:
                if name not in self.slots:
                    raise AttributeError(f"{self.cls.__name__} has no slot {name!r}")
                if name in self.slots[:n]:
                    raise TypeError(f"slot {name!r} given both by position and by name")
        if self._free:
            obj = self._free.pop()
            self.reused += 1
        else:
            obj = self.cls.__new__(self.cls)
            self.created += 1
        if <PyObject*>_type(<PyObject*>obj) != <PyObject*>self.cls:
            raise TypeError(f"{self.cls.__name__}.__new__ returned another type")
        for i in range(n):
            self._set(obj, i, values[i])
        if fields:
            for i in range(n, self.nslots):
                self._set(obj, i, fields.get(self.slots[i]))
        else:
            for i in range(n, self.nslots):
                self._set(obj, i, None)
        self._taken.append(obj)
        return obj

    def end_frame(self):
        """Take back the frame's records nothing else references; return how many."""
        cdef list taken = self._taken
        cdef list keep = [], held = []
        cdef Py_ssize_t i, n = PyList_GET_SIZE(taken)
        cdef PyObject* item
        if n == 0:
            return 0
        self._taken = []
        for i in range(n):
            item = PyList_GET_ITEM(taken, i)   # borrowed: the list holds one reference
            if _refcnt(item) == 1 and <PyObject*>_type(item) == <PyObject*>self.cls and not (
                    self.weak and _weakcount(<object>item)):
                keep.append(<object>item)
            else:
                held.append(<object>item)
        del taken[:]
        if held:
            keep.extend(self._settle(held))
            del held[:]
        self._clear(keep)
        self.recycled += len(keep)
        room = self.max_free - len(self._free)
        if room < len(keep):
            del keep[room:]
        self._free.extend(keep)
        return len(keep)

    cdef list _settle(self, list held):
        """Of records that have referrers, those only other frame records reach."""
        cdef Py_ssize_t i, j, k, n = len(held), m = self.nslots, top
        cdef Entry* table = <Entry*>malloc(n * sizeof(Entry))
        cdef Py_ssize_t* inner = <Py_ssize_t*>malloc(n * sizeof(Py_ssize_t))
        cdef Py_ssize_t* target = <Py_ssize_t*>malloc(n * m * sizeof(Py_ssize_t) + 1)
        cdef Py_ssize_t* stack = <Py_ssize_t*>malloc(n * sizeof(Py_ssize_t))
        cdef char* reached = <char*>malloc(n)
        cdef PyObject* item
        cdef PyObject* value
        cdef bint exact
        if table == NULL or inner == NULL or target == NULL or stack == NULL or reached == NULL:
            free(table); free(inner); free(target); free(stack); free(reached)
            raise MemoryError()
        try:
            for i in range(n):
                table[i].addr = <size_t>PyList_GET_ITEM(held, i)
                table[i].index = i
                inner[i] = 0
                reached[i] = 0
            qsort(table, n, sizeof(Entry), _by_address)
            for i in range(n):  # references among the held records (no Python code runs)
                item = PyList_GET_ITEM(held, i)
                exact = <PyObject*>_type(item) == <PyObject*>self.cls
                for k in range(m):
                    j = -1
                    if exact:
                        value = self._get(item, k)
                        if value != NULL:
                            j = _find(table, n, <size_t>value)
                    target[i * m + k] = j
                    if j >= 0:
                        inner[j] += 1
            top = 0
            for i in range(n):  # reachable from outside: more referrers than the records
                item = PyList_GET_ITEM(held, i)   # borrowed: `held` holds one reference
                if (_refcnt(item) - 1 > inner[i]
                        or <PyObject*>_type(item) != <PyObject*>self.cls
                        or (self.weak and _weakcount(<object>item))):
                    reached[i] = 1
                    stack[top] = i
                    top += 1
            while top:  # ... and so is every record they reach
                top -= 1
                i = stack[top]
                for k in range(m):
                    j = target[i * m + k]
                    if j >= 0 and not reached[j]:
                        reached[j] = 1
                        stack[top] = j
                        top += 1
            out = []
            for i in range(n):
                if reached[i]:
                    self.detached += 1
                else:
                    out.append(held[i])
            return out
        finally:
            free(table); free(inner); free(target); free(stack); free(reached)

    cdef void _clear(self, list objects) except *:
        cdef Py_ssize_t k
        for obj in objects:
            for k in range(self.nslots):
                self._set(obj, k, None)

    def clear(self):
        """Forget every record."""
        self._taken = []
        self._free = []
