"""JournalReader: iterate, seek, filter and tail the records of a journal."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from hftalloc.errors import JournalCorrupted, JournalError, JournalFormatError
from hftalloc.journal._journal import Cursor, Mapping, Record, peek, scan
from hftalloc.journal.dictionary import TopicDictionary
from hftalloc.journal.files import map_segment, read_header, require_directory, writer_alive
from hftalloc.journal.format import INT64_MIN, SEGMENT_HEADER, SegmentHeader, segment_numbers
from hftalloc.journal.index import SparseIndex
from hftalloc.topics import matches, split_pattern

__all__ = ["JournalInfo", "JournalReader", "TornTail"]

INT64_MAX = (1 << 63) - 1


@dataclass(frozen=True, slots=True)
class TornTail:
    """A record the writer did not finish (it died): where, and how it was found."""

    segment: int
    path: str
    offset: int


@dataclass(frozen=True, slots=True)
class JournalInfo:
    """Summary of a journal (``python -m hftalloc journal info``)."""

    path: str
    records: int
    first_seq: int
    last_seq: int
    first_time: int | None
    last_time: int | None
    time_max: int | None
    topics: tuple[str, ...]
    segments: int
    segment_size: int
    max_payload: int
    size_bytes: int
    writer_alive: bool
    torn_tail: TornTail | None
    problem: str | None


class JournalReader:
    """Read-only access to a journal directory, safe next to a live writer.

    Iterating yields :class:`Record` objects: read-only zero-copy views into the mapped
    segment (``topic``, ``seq``, ``timestamp``, ``payload``). ``topics`` (a pattern or a
    list of patterns, ``hftalloc.topics`` syntax) filters every iteration of this reader.
    """

    def __init__(self, path: str | os.PathLike[str],
                 topics: str | Sequence[str] | None = None) -> None:
        self.path = os.fspath(path)
        require_directory(self.path)
        self._patterns = _patterns(topics)
        self.headers: dict[int, SegmentHeader] = {}
        self._maps: dict[int, Mapping] = {}
        self._topics = TopicDictionary(self.path)
        self._index = SparseIndex(self.path)
        self.torn_tail: TornTail | None = None
        self.problem: str | None = None
        self._last_scan = None
        self.bad_headers: dict[int, JournalError] = {}
        self._refresh_segments()
        if not self.numbers:
            if self.bad_headers:
                raise self.bad_headers[min(self.bad_headers)]
            raise JournalFormatError(f"{self.path}: no journal segments (not a journal)")
        self._topics.load()
        self._index.load({n: h.segment_size for n, h in self.headers.items()})
        self._stop: dict[int, int] = {}
        self._find_end()

    # -- segments ----------------------------------------------------------------------
    def _refresh_segments(self) -> None:
        numbers = segment_numbers(self.path)
        for n in numbers:
            if n not in self.headers and n not in self.bad_headers:
                try:
                    self.headers[n] = read_header(self.path, n)
                except JournalError as exc:     # raised when a cursor reaches it
                    self.bad_headers[n] = exc
        if numbers and numbers != list(range(numbers[0], numbers[-1] + 1)):
            missing = sorted(set(range(numbers[0], numbers[-1] + 1)) - set(numbers))
            raise JournalCorrupted(f"{self.path}: segment {missing[0]} is missing",
                                   self.path, 0)
        self.numbers = [n for n in numbers if n in self.headers]
        if self.bad_headers and self.numbers:
            # only the segments before the first damaged header are readable in order
            first_bad = min(self.bad_headers)
            self.numbers = [n for n in self.numbers if n < first_bad]

    def _mapping(self, number: int) -> Mapping:
        m = self._maps.get(number)
        if m is None:
            h = self.headers[number]
            m = map_segment(self.path, number, h.segment_size, False)
            if len(self._maps) >= 8:           # keep a few; records keep their own alive
                self._maps.pop(next(iter(self._maps)))
            self._maps[number] = m
        return m

    def _find_end(self) -> None:
        """Where the last segment's records end; a torn tail (no live writer) is noted
        and reading stops before it."""
        last = self.numbers[-1]
        h = self.headers[last]
        m = self._mapping(last)
        start, seq, tmax = SEGMENT_HEADER, h.first_seq, h.time_max_before
        i = self._index.last_in_segment(last)
        if i >= 0:
            e_seq, e_tmax, _, e_off = self._index.entry(i)
            if (peek(m, e_off, h.max_payload) or (0,))[0] == e_seq:
                start, seq, tmax = e_off, e_seq, e_tmax
        found = scan(m, start, seq, tmax, h.max_payload, True)
        self._last_scan = found
        self.writer_alive = writer_alive(self.path)
        if found.kind == "torn" and not self.writer_alive:
            self.torn_tail = TornTail(last, m.path, found.torn_offset)
            self._stop[last] = found.torn_offset
        elif found.kind == "corrupt":
            off, _, _, text = found.problems[0]
            self.problem = f"{m.path}: {text} at offset {off}"

    def _next_segment(self, cursor: Cursor) -> tuple[Mapping, int] | None:
        number = cursor.mapping.number + 1
        if number not in self.headers:
            self._refresh_segments()
            if number in self.bad_headers:
                raise self.bad_headers[number]
            if number not in self.headers:
                return None
        h = self.headers[number]
        if h.first_seq != cursor.expect_seq:
            path = os.path.join(self.path, f"segment {number}")
            raise JournalCorrupted(f"{path}: starts at seq {h.first_seq}, expected "
                                   f"{cursor.expect_seq}", path, 0)
        return self._mapping(number), self._stop.get(number, h.segment_size)

    def _unknown_topic(self, tid: int, mapping: Mapping, offset: int) -> None:
        self._topics.name(tid, mapping.path, offset)    # reloads, or raises

    def _grow_mask(self, cursor: Cursor) -> None:
        mask, patterns = cursor.mask, cursor.patterns
        if mask is None or patterns is None:
            return
        names = self._topics.names
        if len(names) <= len(mask):
            self._topics.load()
        for name in names[len(mask):]:
            mask.append(name is not None and any(matches(p, name) for p in patterns))

    # -- cursors ---------------------------------------------------------------------------
    def _cursor(self, topics: str | Sequence[str] | None, start: int | None,
                end: int | None) -> Cursor:
        patterns = self._patterns if topics is None else _patterns(topics)
        mask = None if patterns is None else bytearray()
        first = self.numbers[0]
        h = self.headers[first]
        cursor = Cursor(self._topics.names, mask, patterns, self._next_segment,
                        self._unknown_topic, self._grow_mask,
                        max(hd.max_payload for hd in self.headers.values()))
        cursor.position_at(self._mapping(first), SEGMENT_HEADER, h.first_seq,
                           self._stop.get(first, h.segment_size))
        if start is not None or end is not None:
            cursor.set_window(INT64_MIN if start is None else start,
                              INT64_MAX if end is None else end)
        return cursor

    def __iter__(self) -> Iterator[Record]:
        return self._cursor(None, None, None)

    def records(self, topics: str | Sequence[str] | None = None, *, start_time: int | None = None,
                end_time: int | None = None) -> Cursor:
        """An iterator over the records (``topics`` overrides the reader's filter;
        ``start_time <= timestamp < end_time``; a start time seeks through the index)."""
        if start_time is not None:
            cursor = self.seek_time(start_time, topics=topics)
            if end_time is not None:
                cursor.set_window(start_time, end_time)
            return cursor
        return self._cursor(topics, None, end_time)

    def _place(self, cursor: Cursor, number: int, offset: int, expect_seq: int) -> None:
        h = self.headers[number]
        cursor.position_at(self._mapping(number), offset, expect_seq,
                           self._stop.get(number, h.segment_size))

    def _index_entry(self, i: int) -> tuple[int, int, int, int] | None:
        """Index entry ``i`` when it points at the record it names (else None)."""
        if i < 0:
            return None
        seq, tmax, seg, off = self._index.entry(i)
        if seg not in self.headers:
            return None
        if (peek(self._mapping(seg), off, self.headers[seg].max_payload) or (0,))[0] != seq:
            return None
        return seq, tmax, seg, off

    def seek(self, seq: int, topics: str | Sequence[str] | None = None) -> Cursor:
        """An iterator starting at the record with sequence number ``seq`` (or the first
        after it): binary search of the segments, then of the sparse index, then a
        forward walk of at most ``index_every`` records."""
        if isinstance(seq, bool) or not isinstance(seq, int):
            raise TypeError(f"seq must be an int, not {type(seq).__name__}")
        self._refresh_segments()
        self._index.load({n: h.segment_size for n, h in self.headers.items()})
        cursor = self._cursor(topics, None, None)
        firsts = [self.headers[n].first_seq for n in self.numbers]
        import bisect

        k = max(0, bisect.bisect_right(firsts, seq) - 1)
        number, offset, expect = self.numbers[k], SEGMENT_HEADER, firsts[k]
        i = self._index.at_or_before_seq(seq)
        while i >= 0:
            entry = self._index_entry(i)
            if entry is not None:
                if entry[0] > expect:
                    number, offset, expect = entry[2], entry[3], entry[0]
                break
            i -= 1
        self._place(cursor, number, offset, expect)
        cursor.skip_to(seq=seq)
        return cursor

    def seek_time(self, timestamp: int, topics: str | Sequence[str] | None = None) -> Cursor:
        """An iterator starting at the first record with ``timestamp >=`` the given ns
        (binary search as for :meth:`seek`; exact with unordered timestamps too)."""
        if isinstance(timestamp, bool) or not isinstance(timestamp, int):
            raise TypeError(f"timestamp must be an int, not {type(timestamp).__name__}")
        self._refresh_segments()
        self._index.load({n: h.segment_size for n, h in self.headers.items()})
        cursor = self._cursor(topics, None, None)
        befores = [self.headers[n].time_max_before for n in self.numbers]
        import bisect

        k = max(0, bisect.bisect_left(befores, timestamp) - 1)
        number, offset = self.numbers[k], SEGMENT_HEADER
        expect = self.headers[number].first_seq
        i = self._index.before_time(timestamp)
        while i >= 0:
            entry = self._index_entry(i)
            if entry is not None:
                if entry[0] > expect:
                    number, offset, expect = entry[2], entry[3], entry[0]
                break
            i -= 1
        self._place(cursor, number, offset, expect)
        cursor.skip_to(timestamp=timestamp)
        return cursor

    def tail(self, *, start_seq: int | None = None, timeout: float | None = None,
             max_wait: float = 0.001, topics: str | Sequence[str] | None = None
             ) -> Iterator[Record]:
        """Follow a live writer: yield records as they are committed.

        When no record is there the reader sleeps, 50 us first, doubling up to
        ``max_wait`` seconds (so a new record is seen at most ``max_wait`` after its
        commit, and an idle tail costs a few wake-ups per ms, never a busy loop). Ends
        when nothing new arrived for ``timeout`` seconds (None: never).
        """
        cursor = self._cursor(topics, None, None) if start_seq is None else \
            self.seek(start_seq, topics)
        self._stop.clear()      # a live writer continues past what was its end
        where = cursor.position
        assert where is not None
        cursor.position_at(cursor.mapping, where[1], cursor.expect_seq,
                           cursor.mapping.size_bytes)
        idle_since = time.monotonic()
        wait = 50e-6
        while True:
            got = False
            for rec in cursor:
                got = True
                yield rec
            now = time.monotonic()
            if got:
                idle_since = now
                wait = 50e-6
            elif timeout is not None and now - idle_since >= timeout:
                return
            time.sleep(wait)
            wait = min(max_wait, wait * 2)

    # -- summary ------------------------------------------------------------------------
    def info(self) -> JournalInfo:
        found = self._last_scan
        assert found is not None
        first_h = self.headers[self.numbers[0]]
        last_seq = found.next_seq - 1 if found.next_seq else first_h.first_seq - 1
        records = max(0, last_seq - first_h.first_seq + 1)
        first_time = None
        if records:
            got = peek(self._mapping(self.numbers[0]), SEGMENT_HEADER, first_h.max_payload)
            first_time = got[1] if got is not None else None
        last_time = None
        if records:
            for rec in self.seek(last_seq):
                last_time = rec.timestamp
        size = sum(e.stat().st_size for e in os.scandir(self.path) if e.is_file())
        return JournalInfo(self.path, records, first_h.first_seq, last_seq, first_time,
                           last_time, found.time_max if records else None,
                           tuple(n for n in self._topics.names if n is not None),
                           len(self.numbers), first_h.segment_size, first_h.max_payload,
                           size, self.writer_alive, self.torn_tail, self.problem)

    @property
    def topics(self) -> list[str]:
        """Every topic of the journal's dictionary, in id order."""
        self._topics.load()
        return [n for n in self._topics.names if n is not None]

    def close(self) -> None:
        """Drop the reader's mappings (records still held keep theirs alive)."""
        self._maps.clear()

    def __enter__(self) -> JournalReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _patterns(topics: str | Sequence[str] | None) -> tuple[str, ...] | None:
    if topics is None:
        return None
    items = (topics,) if isinstance(topics, str) else tuple(topics)
    for p in items:
        split_pattern(p)
    return items
