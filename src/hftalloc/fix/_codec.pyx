# cython: language_level=3, boundscheck=False, wraparound=False
"""Compiled FIX tag=value codec: framing, one-pass parsing, typed accessors, encoding.

``parse(data)`` splits one message held in any bytes-like object (a bus payload, a pool
block, ``bytes``) into a table of (tag, value offset, length) after checking BeginString
(8), BodyLength (9) and CheckSum (10); values are read in place by the typed accessors.
``frame(data, start, end)`` finds the extent of the next message in a receive buffer.
``FixEncoder.encode_into(buf, ...)`` writes a message with its standard header and
trailer straight into a writable buffer, computing BodyLength and CheckSum in place.

Data fields (a length field followed by bytes that may hold SOH, e.g. RawDataLength 95 /
RawData 96) are read by their declared length; repeating groups nest (``GROUPS``).
Every offset and length comes from the wire and is checked against the buffer.
"""

from cpython.buffer cimport (PyBUF_SIMPLE, PyBUF_WRITABLE, PyBuffer_Release,
                             PyObject_GetBuffer)
from cpython.bytes cimport PyBytes_FromStringAndSize
from cpython.long cimport PyLong_AsLongLong
from cpython.unicode cimport PyUnicode_AsUTF8AndSize, PyUnicode_DecodeLatin1
from libc.stdint cimport int32_t, int64_t, uint64_t
from libc.stdlib cimport free, malloc, strtod
from libc.string cimport memchr, memcpy, memmove, strlen

import time as _time

from hftalloc.fix.errors import (
    FixBadBodyLength,
    FixBadChecksum,
    FixBufferTooSmall,
    FixEncodeError,
    FixFieldMissing,
    FixGarbage,
    FixGroupError,
    FixOversize,
    FixParseError,
    FixRawDataError,
    FixValueError,
)
from hftalloc.fix.groups import ALT_DELIMITERS, GROUPS, MAX_GROUP_DEPTH

cdef extern from "Python.h":
    char* PyOS_double_to_string(double val, char format_code, int precision, int flags,
                                int *ptype) except NULL
    void PyMem_Free(void *p)

DEFAULT_MAX_SIZE = 65536
DEFAULT_MAX_FIELDS = 1024
cdef int MAX_FIELDS_LIMIT = 1 << 20
cdef object _MISSING = object()

cdef int _MAX_DEPTH = MAX_GROUP_DEPTH


cdef object _parse_error(Py_ssize_t code, int at, int tag):
    if code == HFT_FIX_E_GARBAGE:
        return FixGarbage("message does not start with 8=FIX")
    if code == HFT_FIX_E_BODYLEN:
        return FixBadBodyLength("BodyLength (9) missing, malformed or wrong", 9)
    if code == HFT_FIX_E_CHECKSUM:
        return FixBadChecksum("CheckSum (10) missing, malformed or wrong", 10)
    if code == HFT_FIX_E_OVERSIZE:
        return FixOversize("message larger than the size limit")
    if code == HFT_FIX_E_NOVALUE:
        return FixParseError(f"tag {tag} has no value (field {at})", tag, 4)
    if code == HFT_FIX_E_FIELDS:
        return FixParseError(f"more than the field limit ({at} fields)", 0, 99)
    if code == HFT_FIX_E_TRUNCATED:
        return FixBadBodyLength(f"field {at} not terminated by SOH", 0)
    if code == HFT_FIX_E_RAWLEN:
        return FixRawDataError(
            f"tag {tag}: raw data length missing, malformed or past the message end, or "
            "data without its length field", tag)
    if code == HFT_FIX_E_ORDER:
        return FixParseError("8, 9 and 35 must be the first fields, 10 the last", tag, 14)
    return FixParseError(f"field {at}: tag is not a positive number", 0, 0)


def _parse_error_for(Py_ssize_t code):
    """The exception for a negative framing code of hft_fix_frame (for the receive path)."""
    return _parse_error(code, 0, 0)


def frame(data, Py_ssize_t start=0, Py_ssize_t end=-1, Py_ssize_t max_size=DEFAULT_MAX_SIZE,
          bint verify=True):
    """Extent of the next message in ``data[start:end]``: ``(skip, size)``.

    ``skip`` bytes of garbage precede the message (they do not start with ``8=FIX``);
    ``size`` is the message's length, 0 when more bytes are needed. Raises a
    :class:`~hftalloc.fix.errors.FixGarbled` subclass for a broken message that starts at
    ``start + skip`` (the caller drops it and resynchronises after that offset), and
    :class:`~hftalloc.fix.errors.FixOversize` when the declared size exceeds ``max_size``;
    the exception's ``skip`` attribute gives the offset of the broken message.
    """
    cdef Py_buffer view
    cdef Py_ssize_t n, pos, size, bstart = 0, blen = 0
    PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
    try:
        n = view.len if end < 0 or end > view.len else end
        if start < 0 or start > n:
            raise ValueError(f"start {start} outside the buffer (0..{n})")
        pos = hft_fix_find_begin(<const unsigned char*>view.buf, n, start)
        if pos < 0:
            # keep a possible partial BeginString at the end; everything else is garbage
            return (n - start, 0)
        size = hft_fix_frame(<const unsigned char*>view.buf + pos, n - pos, max_size, verify,
                             &bstart, &blen)
        if size < 0:
            exc = _parse_error(size, 0, 0)
            exc.skip = pos - start
            raise exc
        return (pos - start, size)
    finally:
        PyBuffer_Release(&view)


def checksum(data):
    """The FIX CheckSum (sum of the bytes modulo 256) of a bytes-like object."""
    cdef Py_buffer view
    PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
    try:
        return hft_fix_checksum(<const unsigned char*>view.buf, view.len)
    finally:
        PyBuffer_Release(&view)


def parse(data, Py_ssize_t start=0, Py_ssize_t end=-1, *, bint verify=True,
          Py_ssize_t max_size=DEFAULT_MAX_SIZE, int max_fields=DEFAULT_MAX_FIELDS):
    """Parse exactly one message occupying ``data[start:end]`` (the whole object by default).

    The message keeps a buffer export of ``data`` until it is released (``release()``, the
    ``with`` block, or garbage collection): values are read in place, never copied.
    """
    cdef FixMessage msg = FixMessage.__new__(FixMessage)
    msg._load(data, start, end, verify, max_size, max_fields)
    return msg


cdef inline bint _is_digit(unsigned char c) nogil:
    return c >= 48 and c <= 57


cdef class FixMessage:
    """One parsed FIX message: a field table over the caller's buffer."""

    def __cinit__(self):
        self._has_view = False
        self._fields = self._inline
        self._cap = 64
        self._count = 0
        self._seq = -1
        self._n = 0
        self._p = NULL

    def __init__(self, *args, **kwargs):
        raise TypeError("use hftalloc.fix.parse(data) to parse a message")

    def __dealloc__(self):
        self._drop()

    cdef void _drop(self):
        if self._has_view:
            PyBuffer_Release(&self._view)
            self._has_view = False
        if self._fields != self._inline:
            free(self._fields)
            self._fields = self._inline
            self._cap = 64
        self._p = NULL
        self._n = 0
        self._count = 0

    cdef int _load(self, object data, Py_ssize_t start, Py_ssize_t end, bint verify,
                   Py_ssize_t max_size, int max_fields) except -1:
        cdef Py_ssize_t size, bstart = 0, blen = 0, n
        cdef int count, at = 0
        cdef const unsigned char *p
        cdef hft_fix_field *big
        if max_fields < 4 or max_fields > MAX_FIELDS_LIMIT:
            raise ValueError(f"max_fields must be 4..{MAX_FIELDS_LIMIT}, not {max_fields}")
        self._drop()
        PyObject_GetBuffer(data, &self._view, PyBUF_SIMPLE)
        self._has_view = True
        self._owner = data
        n = self._view.len if end < 0 or end > self._view.len else end
        if start < 0 or start > n:
            self._drop()
            raise ValueError(f"start {start} outside the buffer (0..{n})")
        p = <const unsigned char*>self._view.buf + start
        n -= start
        if n < 5 or p[0] != 56 or p[1] != 61:
            self._drop()
            raise FixGarbage("message does not start with 8=FIX")
        size = hft_fix_frame(p, n, max_size, verify, &bstart, &blen)
        if size == 0:
            self._drop()
            raise FixBadBodyLength("message shorter than its BodyLength (9) says", 9)
        if size < 0:
            self._drop()
            raise _parse_error(size, 0, 0)
        if size != n:
            self._drop()
            raise FixBadBodyLength(
                f"BodyLength (9) gives a {size}-byte message in {n} bytes", 9)
        self._p = p
        self._n = n
        count = hft_fix_split(p, n, self._fields, self._cap, &at)
        if count == HFT_FIX_E_FIELDS and max_fields > self._cap:
            big = <hft_fix_field*>malloc(sizeof(hft_fix_field) * max_fields)
            if big == NULL:
                self._drop()
                raise MemoryError()
            self._fields = big
            self._cap = max_fields
            count = hft_fix_split(p, n, self._fields, self._cap, &at)
        if count < 0:
            tag = self._fields[at].tag if count == HFT_FIX_E_NOVALUE \
                or count == HFT_FIX_E_RAWLEN else 0
            self._drop()
            raise _parse_error(count, at, tag)
        if count < 4 or self._fields[0].tag != 8 or self._fields[1].tag != 9 \
                or self._fields[2].tag != 35 or self._fields[count - 1].tag != 10:
            self._drop()
            if count >= 3 and self._fields[2].tag != 35:
                raise FixParseError("MsgType (35) must be the third field", 35, 14)
            raise _parse_error(HFT_FIX_E_ORDER, 0, 0)
        self._count = count
        self._msg_type = None
        self._seq = -1
        return 0

    # -- lifetime ---------------------------------------------------------------------------
    def release(self):
        """Drop the buffer export; the message is empty afterwards."""
        self._drop()
        self._owner = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()

    cdef void _alive(self) except *:
        if self._p == NULL:
            raise ValueError("the message was released")

    # -- lookup -----------------------------------------------------------------------------
    cdef int _find(self, int tag, int lo, int hi):
        cdef int i
        for i in range(lo, hi):
            if self._fields[i].tag == tag:
                return i
        return -1

    cdef int _index(self, int tag) except -2:
        if self._p == NULL:
            raise ValueError("the message was released")
        return self._find(tag, 0, self._count)

    def __len__(self):
        return self._count

    @property
    def size(self):
        """Bytes of the message on the wire."""
        return self._n

    @property
    def msg_type(self):
        """MsgType (35) as str."""
        if self._msg_type is None:
            self._alive()
            self._msg_type = _text(self, 2)
        return self._msg_type

    @property
    def seq_num(self):
        """MsgSeqNum (34) as int; raises FixFieldMissing when absent."""
        cdef int i
        if self._seq < 0:
            i = self._index(34)
            if i < 0:
                raise FixFieldMissing("MsgSeqNum (34) is missing", 34)
            self._seq = _int_at(self, i)
        return self._seq

    @property
    def begin_string(self):
        """BeginString (8) as str."""
        self._alive()
        return _text(self, 0)

    def has(self, int tag):
        """True when ``tag`` occurs in the message."""
        return self._index(tag) >= 0

    def count(self, int tag):
        """How often ``tag`` occurs."""
        cdef int i, k = 0
        self._alive()
        for i in range(self._count):
            k += self._fields[i].tag == tag
        return k

    def tag_at(self, int index):
        """Tag of field ``index`` (0-based, 8 is field 0)."""
        self._alive()
        if index < 0 or index >= self._count:
            raise IndexError(f"field {index} outside 0..{self._count - 1}")
        return self._fields[index].tag

    def value_at(self, int index):
        """Value of field ``index`` as bytes (a copy)."""
        self._alive()
        if index < 0 or index >= self._count:
            raise IndexError(f"field {index} outside 0..{self._count - 1}")
        return _raw(self, index)

    def fields(self):
        """All fields as ``[(tag, value bytes), ...]`` (copies), header and trailer included."""
        self._alive()
        return [(self._fields[i].tag, _raw(self, i)) for i in range(self._count)]

    def duplicate_tag(self):
        """The first tag that occurs twice outside repeating groups, or 0.

        Walks every repeating group of ``GROUPS`` found at the top level (nested ones
        included) and raises :class:`~hftalloc.fix.errors.FixGroupError` for one whose
        NumInGroup does not match its entries.
        """
        cdef int j = 0, t
        cdef set seen = set()
        self._alive()
        while j < self._count:
            t = self._fields[j].tag
            spec = GROUPS.get(t)
            if spec is not None:
                j = _scan_group(self, t, j, self._count, spec[0], spec[1], True, 1, None)
                continue
            if t in seen:
                return t
            seen.add(t)
            j += 1
        return 0

    def check_groups(self):
        """Raise :class:`~hftalloc.fix.errors.FixGroupError` if a repeating group of the
        message (nested ones included) is malformed; returns the number of top-level
        groups."""
        cdef int j = 0, t, n = 0
        self._alive()
        while j < self._count:
            t = self._fields[j].tag
            spec = GROUPS.get(t)
            if spec is not None:
                j = _scan_group(self, t, j, self._count, spec[0], spec[1], True, 1, None)
                n += 1
            else:
                j += 1
        return n

    def view(self):
        """The whole message as a read-only memoryview of the parsed buffer (no copy)."""
        self._alive()
        cdef Py_ssize_t base = self._p - <const unsigned char*>self._view.buf
        return memoryview(self._owner).cast("B")[base:base + self._n].toreadonly()

    def tobytes(self):
        """The whole message as bytes (a copy)."""
        self._alive()
        return PyBytes_FromStringAndSize(<const char*>self._p, self._n)

    # -- typed accessors ------------------------------------------------------------------
    def get_int(self, int tag, default=_MISSING):
        """Value of ``tag`` as int (FIX int/SeqNum/Length/NumInGroup)."""
        cdef int i = self._index(tag)
        if i < 0:
            return _missing(tag, default)
        return _int_at(self, i)

    def get_float(self, int tag, default=_MISSING):
        """Value of ``tag`` (FIX float/Price/Qty) as a Python float."""
        cdef int i = self._index(tag)
        if i < 0:
            return _missing(tag, default)
        return _float_at(self, i)

    def get_decimal(self, int tag, default=_MISSING):
        """Value of ``tag`` (FIX float/Price/Qty) as its exact decimal text (str)."""
        cdef int i = self._index(tag)
        if i < 0:
            return _missing(tag, default)
        _check_decimal(self, i)
        return _text(self, i)

    def get_str(self, int tag, default=_MISSING):
        """Value of ``tag`` as str (bytes decoded as Latin-1, never fails)."""
        cdef int i = self._index(tag)
        if i < 0:
            return _missing(tag, default)
        return _text(self, i)

    def get_bytes(self, int tag, default=_MISSING):
        """Value of ``tag`` as bytes (a copy)."""
        cdef int i = self._index(tag)
        if i < 0:
            return _missing(tag, default)
        return _raw(self, i)

    def get_view(self, int tag):
        """Value of ``tag`` as a read-only memoryview of the message buffer (no copy)."""
        cdef int i = self._index(tag)
        if i < 0:
            raise FixFieldMissing(f"tag {tag} is missing", tag)
        return _view_at(self, i)

    def get_bool(self, int tag, default=_MISSING):
        """Value of ``tag`` (FIX Boolean ``Y``/``N``) as bool."""
        cdef int i = self._index(tag)
        if i < 0:
            return _missing(tag, default)
        return _bool_at(self, i)

    def group(self, int count_tag, int delimiter=0, members=None):
        """Entries of the repeating group ``count_tag`` as :class:`FixGroup` views.

        The delimiter and member tags default to the package's table (``GROUPS``; an
        entry of NoMDEntries starts with 269 in W, 279 in X: ``ALT_DELIMITERS``). A member that is a
        NumInGroup tag of ``GROUPS`` is a nested group (``entry.group(tag)``). Raises
        FixGroupError when NumInGroup does not match the entries found, is more than the
        message can hold, or groups nest deeper than ``MAX_GROUP_DEPTH``.
        """
        cdef int i = self._index(count_tag)
        if i < 0:
            return []
        return _group_entries(self, count_tag, i, self._count, delimiter, members, 1)

    def __repr__(self):
        if self._p == NULL:
            return "<FixMessage released>"
        return f"<FixMessage {self.msg_type!r} {self._count} fields {self._n} B>"

    def __str__(self):
        if self._p == NULL:
            return "<FixMessage released>"
        return self.tobytes().replace(b"\x01", b"|").decode("latin-1")


cdef list _group_entries(FixMessage m, int count_tag, int i, int hi, int delimiter,
                         object members, int depth):
    """The entries of the group whose NumInGroup is field ``i`` (fields below ``hi``)."""
    cdef bint table_delimiter = delimiter == 0
    if delimiter == 0 or members is None:
        spec = GROUPS.get(count_tag)
        if spec is None:
            raise KeyError(f"no group definition for tag {count_tag}; pass delimiter "
                           "and members")
        if delimiter == 0:
            delimiter = spec[0]
        if members is None:
            members = spec[1]
    elif not isinstance(members, (set, frozenset)):
        members = frozenset(members)
    cdef list entries = []
    _scan_group(m, count_tag, i, hi, delimiter, members, table_delimiter, depth, entries)
    return entries


cdef int _scan_group(FixMessage m, int count_tag, int i, int hi, int delimiter, object members,
                     bint table_delimiter, int depth, list out) except -1:
    """Check the group whose NumInGroup is field ``i`` and return the index of the first
    field after it; with ``out``, append a :class:`FixGroup` per entry.

    An entry runs from its delimiter to the next delimiter or the first tag that is not a
    member; a member that is a NumInGroup of ``GROUPS`` is scanned as a nested group (one
    level deeper). NumInGroup above the fields left is refused before anything is built.
    """
    cdef int64_t n
    cdef int j, lo, t, end, found = 0
    cdef list skips
    cdef FixGroup g
    if depth > _MAX_DEPTH:
        raise FixGroupError(f"group {count_tag} nested deeper than {_MAX_DEPTH} levels",
                            count_tag)
    n = _int_at(m, i)
    j = i + 1
    if n < 0 or n > hi - j:
        raise FixGroupError(f"NumInGroup {count_tag}={n} is more than the message can hold",
                            count_tag)
    if n == 0:
        return j
    if table_delimiter and j < hi and m._fields[j].tag != delimiter:
        alt = ALT_DELIMITERS.get(count_tag)
        if alt is not None and m._fields[j].tag in alt:
            delimiter = m._fields[j].tag
    if j >= hi or m._fields[j].tag != delimiter:
        raise FixGroupError(f"group {count_tag} must start with tag {delimiter}", count_tag)
    while j < hi and m._fields[j].tag == delimiter:
        lo = j
        j += 1
        found += 1
        skips = None
        while j < hi:
            t = m._fields[j].tag
            if t == delimiter or t not in members:
                break
            spec = GROUPS.get(t)
            if spec is None:
                j += 1
                continue
            end = _scan_group(m, t, j, hi, spec[0], spec[1], True, depth + 1, None)
            if end > j + 1:
                if skips is None:
                    skips = []
                skips.append((j + 1, end))
            j = end
        if found > n:
            break
        if out is not None:
            g = FixGroup.__new__(FixGroup)
            g._msg = m
            g._lo = lo
            g._hi = j
            g._depth = depth
            g._skip = tuple(skips) if skips is not None else None
            out.append(g)
    if found != n:
        raise FixGroupError(
            f"NumInGroup {count_tag}={n} but {found if found <= n else 'more'} entries follow",
            count_tag)
    return j


cdef class FixGroup:
    """One entry of a repeating group: the accessors of FixMessage, limited to the entry's
    own fields (the fields of its nested groups are reached through ``group()``)."""

    def __init__(self, *args, **kwargs):
        raise TypeError("groups come from FixMessage.group()")

    cdef int _at(self, int tag) except -2:
        cdef int lo, k
        if self._msg is None:
            raise ValueError("an unbound group")
        self._msg._alive()
        if self._skip is None:
            return self._msg._find(tag, self._lo, self._hi)
        lo = self._lo
        for a, b in self._skip:
            k = self._msg._find(tag, lo, a)
            if k >= 0:
                return k
            lo = b
        return self._msg._find(tag, lo, self._hi)

    def __len__(self):
        """Fields of the entry, those of its nested groups included."""
        return self._hi - self._lo

    @property
    def depth(self):
        """1 for an entry of a top-level group, 2 for one nested in it, ..."""
        return self._depth

    def has(self, int tag):
        return self._at(tag) >= 0

    def get_int(self, int tag, default=_MISSING):
        cdef int i = self._at(tag)
        return _missing(tag, default) if i < 0 else _int_at(self._msg, i)

    def get_float(self, int tag, default=_MISSING):
        cdef int i = self._at(tag)
        return _missing(tag, default) if i < 0 else _float_at(self._msg, i)

    def get_decimal(self, int tag, default=_MISSING):
        cdef int i = self._at(tag)
        if i < 0:
            return _missing(tag, default)
        _check_decimal(self._msg, i)
        return _text(self._msg, i)

    def get_str(self, int tag, default=_MISSING):
        cdef int i = self._at(tag)
        return _missing(tag, default) if i < 0 else _text(self._msg, i)

    def get_bytes(self, int tag, default=_MISSING):
        cdef int i = self._at(tag)
        return _missing(tag, default) if i < 0 else _raw(self._msg, i)

    def get_bool(self, int tag, default=_MISSING):
        cdef int i = self._at(tag)
        if i < 0:
            return _missing(tag, default)
        return _bool_at(self._msg, i)

    def get_view(self, int tag):
        """Value of ``tag`` as a read-only memoryview of the message buffer (no copy)."""
        cdef int i = self._at(tag)
        if i < 0:
            raise FixFieldMissing(f"tag {tag} is missing", tag)
        return _view_at(self._msg, i)

    def group(self, int count_tag, int delimiter=0, members=None):
        """Entries of the group ``count_tag`` nested in this entry (see FixMessage.group)."""
        cdef int i = self._at(count_tag)
        if i < 0:
            return []
        return _group_entries(self._msg, count_tag, i, self._hi, delimiter, members,
                              self._depth + 1)

    def fields(self):
        """The entry's fields as ``[(tag, value bytes), ...]``, nested groups included."""
        self._at(0)
        return [(self._msg._fields[i].tag, _raw(self._msg, i)) for i in range(self._lo, self._hi)]

    def __repr__(self):
        return f"<FixGroup depth {self._depth} {self._hi - self._lo} fields>"


cdef object _view_at(FixMessage m, int i):
    cdef Py_ssize_t base = m._p - <const unsigned char*>m._view.buf
    mv = memoryview(m._owner).cast("B")
    return mv[base + m._fields[i].off: base + m._fields[i].off + m._fields[i].len].toreadonly()


cdef object _bool_at(FixMessage m, int i):
    cdef unsigned char c
    if m._fields[i].len == 1:
        c = m._p[m._fields[i].off]
        if c == 89:
            return True
        if c == 78:
            return False
    raise FixValueError(f"tag {m._fields[i].tag} is not a Boolean (Y/N)", m._fields[i].tag)


cdef object _missing(int tag, default):
    if default is _MISSING:
        raise FixFieldMissing(f"tag {tag} is missing", tag)
    return default


cdef object _text(FixMessage m, int i):
    return PyUnicode_DecodeLatin1(<const char*>m._p + m._fields[i].off, m._fields[i].len, NULL)


cdef object _raw(FixMessage m, int i):
    return PyBytes_FromStringAndSize(<const char*>m._p + m._fields[i].off, m._fields[i].len)


cdef int64_t _int_at(FixMessage m, int i) except? -1:
    cdef const unsigned char *p = m._p + m._fields[i].off
    cdef int n = m._fields[i].len, k = 0
    cdef bint neg = False
    cdef int64_t v = 0
    if n > 0 and p[0] == 45:
        neg = True
        k = 1
    if k >= n or n - k > 18:
        raise FixValueError(f"tag {m._fields[i].tag} is not an int", m._fields[i].tag)
    while k < n:
        if not _is_digit(p[k]):
            raise FixValueError(f"tag {m._fields[i].tag} is not an int", m._fields[i].tag)
        v = v * 10 + (p[k] - 48)
        k += 1
    return -v if neg else v


cdef int _check_decimal(FixMessage m, int i) except -1:
    cdef const unsigned char *p = m._p + m._fields[i].off
    cdef int n = m._fields[i].len, k = 0, digits = 0, dots = 0
    if n > 0 and p[0] == 45:
        k = 1
    while k < n:
        if _is_digit(p[k]):
            digits += 1
        elif p[k] == 46 and dots == 0:
            dots = 1
        else:
            digits = 0
            break
        k += 1
    if digits == 0 or n > 60:
        raise FixValueError(f"tag {m._fields[i].tag} is not a FIX float", m._fields[i].tag)
    return 0


cdef double _float_at(FixMessage m, int i) except? -1.0:
    cdef char tmp[64]
    cdef int n = m._fields[i].len
    _check_decimal(m, i)
    memcpy(tmp, m._p + m._fields[i].off, n)
    tmp[n] = 0
    return strtod(tmp, NULL)


# -- encoding -------------------------------------------------------------------------------
cdef class _Out:
    """Bounds-checked writer over a raw pointer."""
    cdef unsigned char *p
    cdef Py_ssize_t pos
    cdef Py_ssize_t cap

    cdef inline int need(self, Py_ssize_t n) except -1:
        if self.pos + n > self.cap:
            raise FixBufferTooSmall(f"buffer of {self.cap} B is too small for the message")
        return 0

    cdef inline int raw(self, const char *s, Py_ssize_t n) except -1:
        self.need(n)
        memcpy(self.p + self.pos, s, n)
        self.pos += n
        return 0

    cdef inline int tag(self, int tag) except -1:
        self.need(12)
        self.pos += hft_fix_put_int(self.p + self.pos, tag)
        self.p[self.pos] = 61
        self.pos += 1
        return 0

    cdef inline int soh(self) except -1:
        self.need(1)
        self.p[self.pos] = 1
        self.pos += 1
        return 0

    cdef inline int integer(self, int64_t v) except -1:
        self.need(21)
        self.pos += hft_fix_put_int(self.p + self.pos, v)
        return 0

    cdef int value(self, int tag, object v) except -1:
        cdef const char *s
        cdef Py_ssize_t n
        cdef char *f
        cdef double d
        t = type(v)
        if t is bytes:
            s = <const char*>(<bytes>v)
            n = len(<bytes>v)
        elif t is str:
            s = PyUnicode_AsUTF8AndSize(v, &n)
        elif t is int:
            if n_int_ok(v):
                self.integer(PyLong_AsLongLong(v))
                return 0
            raise FixEncodeError(f"tag {tag}: int {v} out of range")
        elif t is bool:
            if v:
                s = b"Y"
            else:
                s = b"N"
            n = 1
        elif t is float:
            d = v
            if d != d or d == float("inf") or d == float("-inf"):
                raise FixEncodeError(f"tag {tag}: {v} is not a FIX float")
            f = PyOS_double_to_string(d, b'r', 0, 0, NULL)
            try:
                n = <Py_ssize_t>strlen(f)   # scan only the string's own bytes
                if memchr(f, 101, n) != NULL or memchr(f, 69, n) != NULL:
                    PyMem_Free(f)
                    f = PyOS_double_to_string(d, b'f', 12, 0, NULL)
                    txt = (<bytes>f).rstrip(b"0")
                    if txt.endswith(b"."):
                        txt = txt[:len(txt) - 1]
                    self.raw(<const char*>txt, len(txt))
                    return 0
                n = len(<bytes>f)
                if n > 2 and f[n - 2] == 46 and f[n - 1] == 48:   # "1.0" -> "1"
                    n -= 2
                self.raw(f, n)
                return 0
            finally:
                PyMem_Free(f)
        elif isinstance(v, (bytearray, memoryview)):
            b = bytes(v)
            s = <const char*>(<bytes>b)
            n = len(<bytes>b)
            if n == 0:
                raise FixEncodeError(f"tag {tag}: empty value")
            if memchr(s, 1, n) != NULL:
                raise FixEncodeError(f"tag {tag}: value contains SOH")
            self.raw(s, n)
            return 0
        elif isinstance(v, (int, str)):
            return self.value(tag, int(v) if isinstance(v, int) else str(v))
        else:
            txt = str(v).encode("ascii", "strict")
            return self.value(tag, txt)
        if n == 0:
            raise FixEncodeError(f"tag {tag}: empty value")
        if memchr(s, 1, n) != NULL:
            raise FixEncodeError(f"tag {tag}: value contains SOH")
        self.raw(s, n)
        return 0


cdef bytes _raw_data(int tag, object v):
    """The bytes of a data field's value (any byte allowed, SOH included; not empty)."""
    if type(v) is bytes:
        b = v
    elif type(v) is str:
        b = (<str>v).encode("utf-8")
    elif isinstance(v, (bytes, bytearray, memoryview)):
        b = bytes(v)
    else:
        raise FixEncodeError(f"tag {tag}: data needs bytes or str, not {type(v).__name__}")
    if len(b) == 0:
        raise FixEncodeError(f"tag {tag}: empty data")
    return b


cdef bint n_int_ok(object v):
    return -9223372036854775807 <= v <= 9223372036854775807


cdef class FixEncoder:
    """Writes FIX messages with the standard header (8, 9, 35, 49, 56, 34, 43, 52, 122)
    and trailer (10) of one session."""

    def __init__(self, str sender, str target, str begin_string="FIX.4.4"):
        for name, val in (("sender", sender), ("target", target), ("begin_string", begin_string)):
            if not val or "\x01" in val or "=" in val:
                raise FixEncodeError(f"{name} {val!r} is not a valid FIX value")
        self._begin = begin_string.encode("ascii")
        self._sender = sender.encode("ascii")
        self._target = target.encode("ascii")
        self._scratch = bytearray(4096)

    @property
    def sender(self):
        return self._sender.decode()

    @property
    def target(self):
        return self._target.decode()

    def encode_into(self, buffer, str msg_type, int64_t seq_num, fields=(), *,
                    body=None, int64_t sending_time_ns=0, bint poss_dup=False,
                    orig_sending_time=None, Py_ssize_t offset=0):
        """Write one message into ``buffer`` at ``offset``; returns its size in bytes.

        ``fields`` is a sequence of ``(tag, value)`` pairs (value: str, bytes, int, float,
        bool as Y/N, Decimal); ``body`` is optional pre-encoded ``tag=value<SOH>`` bytes
        appended after them. ``sending_time_ns`` defaults to now. A data field (RawData 96,
        XmlData 213, ...: see ``hft_fix_raw_data_tag``) takes bytes or str with any byte,
        SOH included; its length field is written before it unless the caller gives it
        (then the length must match).
        """
        cdef Py_buffer view
        PyObject_GetBuffer(buffer, &view, PyBUF_WRITABLE)
        try:
            if offset < 0 or offset > view.len:
                raise FixBufferTooSmall(f"offset {offset} outside the buffer")
            return self._write(<unsigned char*>view.buf + offset, view.len - offset, msg_type,
                               seq_num, fields, body, sending_time_ns, poss_dup,
                               orig_sending_time)
        finally:
            PyBuffer_Release(&view)

    def encode(self, str msg_type, int64_t seq_num, fields=(), *, body=None,
               int64_t sending_time_ns=0, bint poss_dup=False, orig_sending_time=None):
        """The encoded message as bytes."""
        cdef Py_ssize_t n
        while True:
            try:
                n = self.encode_into(self._scratch, msg_type, seq_num, fields, body=body,
                                     sending_time_ns=sending_time_ns, poss_dup=poss_dup,
                                     orig_sending_time=orig_sending_time)
                return bytes(memoryview(self._scratch)[:n])
            except FixBufferTooSmall:
                if len(self._scratch) >= (1 << 24):
                    raise
                self._scratch = bytearray(len(self._scratch) * 4)

    cdef Py_ssize_t _write(self, unsigned char *p, Py_ssize_t cap, str msg_type,
                           int64_t seq_num, fields, body, int64_t sending_time_ns,
                           bint poss_dup, orig_sending_time) except -1:
        cdef _Out out = _Out.__new__(_Out)
        cdef Py_ssize_t prefix, body_start, body_len, digits, guess = 3, shift, i
        cdef int tag, len_tag, raw_tag = 0
        cdef Py_ssize_t raw_len = 0
        cdef bytes data
        cdef const char *mt
        cdef Py_ssize_t mtn
        cdef unsigned int cs
        if seq_num <= 0:
            raise FixEncodeError(f"MsgSeqNum must be positive, not {seq_num}")
        mt = PyUnicode_AsUTF8AndSize(msg_type, &mtn)
        if mtn == 0 or memchr(mt, 1, mtn) != NULL:
            raise FixEncodeError(f"MsgType {msg_type!r} is not valid")
        out.p = p
        out.cap = cap
        out.pos = 0
        out.raw(b"8=", 2)
        out.raw(<const char*>self._begin, len(self._begin))
        out.raw(b"\x019=", 3)
        prefix = out.pos
        body_start = prefix + guess + 1
        out.pos = body_start
        out.raw(b"35=", 3)
        out.raw(mt, mtn)
        out.raw(b"\x0149=", 4)
        out.raw(<const char*>self._sender, len(self._sender))
        out.raw(b"\x0156=", 4)
        out.raw(<const char*>self._target, len(self._target))
        out.raw(b"\x0134=", 4)
        out.integer(seq_num)
        if poss_dup:
            out.raw(b"\x0143=Y", 5)
        out.raw(b"\x0152=", 4)
        if sending_time_ns == 0:
            sending_time_ns = _time.time_ns()
        out.need(21)
        out.pos += hft_fix_put_utc(out.p + out.pos, sending_time_ns)
        out.soh()
        if orig_sending_time is not None:
            out.raw(b"122=", 4)
            out.value(122, orig_sending_time)
            out.soh()
        for item in fields:
            tag = item[0]
            if tag <= 0:
                raise FixEncodeError(f"tag {tag} is not positive")
            if raw_tag != 0 and tag != raw_tag:
                raise FixEncodeError(f"length tag {hft_fix_raw_length_tag(raw_tag)} must be "
                                     f"followed by its data tag {raw_tag}")
            len_tag = hft_fix_raw_length_tag(tag)
            if len_tag != 0:
                data = _raw_data(tag, item[1])
                if raw_tag == 0:         # the length field is written for the caller
                    out.tag(len_tag)
                    out.integer(len(data))
                    out.soh()
                elif raw_len != len(data):
                    raise FixEncodeError(f"tag {len_tag}={raw_len} but the data of tag {tag} "
                                         f"has {len(data)} bytes")
                raw_tag = 0
                out.tag(tag)
                out.raw(<const char*>data, len(data))
                out.soh()
                continue
            out.tag(tag)
            out.value(tag, item[1])
            out.soh()
            raw_tag = hft_fix_raw_data_tag(tag)
            if raw_tag != 0:
                v = item[1]
                if type(v) is not int:
                    try:
                        v = int(v)
                    except (TypeError, ValueError):
                        raise FixEncodeError(f"length tag {tag} needs an int, not {v!r}") \
                            from None
                raw_len = v
        if raw_tag != 0:
            raise FixEncodeError(f"length tag {hft_fix_raw_length_tag(raw_tag)} must be "
                                 f"followed by its data tag {raw_tag}")
        if body is not None:
            b = bytes(body) if type(body) is not bytes else body
            if len(b) and (<bytes>b)[len(b) - 1] != 1:
                raise FixEncodeError("body must end with SOH")
            out.raw(<const char*>(<bytes>b), len(<bytes>b))
        body_len = out.pos - body_start
        digits = hft_fix_digits(body_len)
        if digits != guess:
            shift = digits - guess
            if shift > 0:
                out.need(shift)
            memmove(p + body_start + shift, p + body_start, body_len)
            out.pos += shift
            body_start += shift
        hft_fix_put_int(p + prefix, body_len)
        p[prefix + digits] = 1
        cs = hft_fix_checksum(p, out.pos)
        out.need(7)
        i = out.pos
        p[i] = 49
        p[i + 1] = 48
        p[i + 2] = 61
        p[i + 3] = 48 + cs // 100
        p[i + 4] = 48 + (cs // 10) % 10
        p[i + 5] = 48 + cs % 10
        p[i + 6] = 1
        out.pos += 7
        return out.pos


def utc_timestamp(int64_t ns=0):
    """FIX UTCTimestamp text (``YYYYMMDD-HH:MM:SS.sss``) for ``ns`` since the epoch (0: now)."""
    cdef unsigned char buf[32]
    if ns == 0:
        ns = _time.time_ns()
    hft_fix_put_utc(buf, ns)
    return PyUnicode_DecodeLatin1(<const char*>buf, 21, NULL)
