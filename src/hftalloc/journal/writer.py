"""JournalWriter: appends records to a journal directory (one writer per journal)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from hftalloc.errors import JournalConfigError, JournalCorrupted, JournalNotFound
from hftalloc.journal._journal import Claim, Mapping, WriterCore, peek, scan, zero_tail
from hftalloc.journal.dictionary import TopicWriter
from hftalloc.journal.files import (
    WriterLock,
    journal_error,
    map_segment,
    read_header,
    require_directory,
)
from hftalloc.journal.format import (
    INT64_MIN,
    MAX_RECORD_PAYLOAD,
    MAX_SEGMENT_SIZE,
    MIN_SEGMENT_SIZE,
    RECORD_HEADER,
    SEGMENT_HEADER,
    SegmentHeader,
    pad8,
    segment_name,
    segment_numbers,
)
from hftalloc.journal.index import IndexWriter
from hftalloc.topics import validate_topic

__all__ = ["FLUSH_POLICIES", "JournalWriter", "WriterStats"]

FLUSH_POLICIES = ("none", "interval", "every")
DEFAULT_SEGMENT_SIZE = 64 * 1024 * 1024
DEFAULT_MAX_PAYLOAD = 1024 * 1024


@dataclass(frozen=True, slots=True)
class WriterStats:
    """Counters of a writer since it was opened."""

    appended: int
    bytes: int
    aborted: int
    segments_created: int
    torn_records_cut: int
    torn_bytes_cut: int
    flushes: int
    flush_errors: int
    index_errors: int
    next_seq: int


def _check_int(name: str, value: Any, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise JournalConfigError(f"{name} must be an int in [{low}, {high}], got {value!r}")
    return value


class JournalWriter:
    """Append-only writer of a journal directory (created when missing).

    ``append(topic, payload, timestamp=None) -> seq`` copies a payload in;
    ``claim(topic, size) -> Claim`` hands out the record's bytes to write in place,
    published by ``claim.commit()``. ``timestamp`` defaults to CLOCK_MONOTONIC ns (the
    clock of the bus's ``publish_ns``).

    ``segment_size`` (bytes, multiple of 4096) and ``max_payload`` (default 1 MiB, or
    what fits a segment) apply when the journal is created; an existing journal keeps
    its own. ``flush``: ``"none"`` (the OS writes
    pages back when it likes), ``"interval"`` (msync at the first commit after each
    ``flush_interval`` seconds, and on ``flush()``/``close()``) or ``"every"`` (msync of
    each record before ``append``/``commit`` returns). See docs/hftalloc-journal.md for what each
    loses in a crash. ``prefault``: a helper thread faults each segment's pages in
    ahead of the writer (the first write to a page then costs no page fault).
    """

    def __init__(self, path: str | os.PathLike[str], *, segment_size: int = DEFAULT_SEGMENT_SIZE,
                 max_payload: int | None = None, flush: str = "none",
                 flush_interval: float = 0.1, index_every: int = 256,
                 index_bytes: int = 64 * 1024, prefault: bool = True,
                 create: bool = True) -> None:
        self.path = os.fspath(path)
        _check_int("segment_size", segment_size, MIN_SEGMENT_SIZE, MAX_SEGMENT_SIZE)
        if segment_size % 4096:
            raise JournalConfigError(f"segment_size must be a multiple of 4096, got {segment_size}")
        largest = min(MAX_RECORD_PAYLOAD, segment_size - SEGMENT_HEADER - RECORD_HEADER - 8)
        if max_payload is None:
            max_payload = min(DEFAULT_MAX_PAYLOAD, largest)
        _check_int("max_payload", max_payload, 0, largest)
        if flush not in FLUSH_POLICIES:
            raise JournalConfigError(f"flush must be one of {FLUSH_POLICIES}, got {flush!r}")
        if isinstance(flush_interval, bool) or not isinstance(flush_interval, int | float) \
                or not 0 < flush_interval < 86400:
            raise JournalConfigError(f"flush_interval must be seconds > 0, got {flush_interval!r}")
        _check_int("index_every", index_every, 1, 1 << 30)
        _check_int("index_bytes", index_bytes, 1, 1 << 40)
        self.flush_policy = flush
        self._prefault = bool(prefault)
        self._sync = flush != "none"
        self._segments_created = 0
        self.torn_records_cut = 0
        self.torn_bytes_cut = 0
        self._closed = False
        self._lock: WriterLock | None = None
        self._topics: TopicWriter | None = None
        self._index: IndexWriter | None = None
        if not os.path.exists(self.path):
            if not create:
                raise JournalNotFound(2, f"no journal at {self.path}", self.path)
            try:
                os.makedirs(self.path, exist_ok=True)
            except OSError as exc:
                raise journal_error(exc, f"cannot create the journal directory {self.path}") \
                    from exc
        require_directory(self.path)
        self._lock = WriterLock(self.path)
        try:
            self._open(segment_size, max_payload, flush, flush_interval, index_every,
                       index_bytes)
        except BaseException:
            self._release_files()
            raise

    # -- opening and recovery ------------------------------------------------------------
    def _open(self, segment_size: int, max_payload: int, flush: str, flush_interval: float,
              index_every: int, index_bytes: int) -> None:
        for name in os.listdir(self.path):
            if name.startswith(".segment-") and name.endswith(".tmp"):
                os.unlink(os.path.join(self.path, name))   # a roll cut short by a crash
        numbers = segment_numbers(self.path)
        self._topics = TopicWriter(self.path, self._sync)
        self._index = index = IndexWriter(self.path)
        if not numbers:
            self.segment_size, self.max_payload = segment_size, max_payload
            mapping = self._create_segment(1, 1, INT64_MIN)
            pos, next_seq, time_max = SEGMENT_HEADER, 1, INT64_MIN
            index.keep(0)
        else:
            mapping, pos, next_seq, time_max = self._recover(numbers, index)
        self.number = mapping.number
        if self._prefault:
            mapping.prefault(pos)
        self._core = WriterCore(mapping, pos, next_seq, time_max, self.max_payload,
                                self._topics.ids, self._new_topic, self._roll, index.add,
                                index_every, index_bytes, FLUSH_POLICIES.index(flush),
                                int(flush_interval * 1e9))
        # the hot calls go straight to the compiled core
        self.append: Callable[..., int] = self._core.append  # type: ignore[method-assign]
        self.claim: Callable[..., Claim] = self._core.claim  # type: ignore[method-assign]

    def _recover(self, numbers: list[int], index: IndexWriter) -> tuple[Mapping, int, int, int]:
        last = numbers[-1]
        header = read_header(self.path, last)
        self.segment_size, self.max_payload = header.segment_size, header.max_payload
        sizes = {n: header.segment_size for n in numbers}
        index.load(sizes)
        mapping = map_segment(self.path, last, header.segment_size, True)
        i = index.last_in_segment(last)
        start, seq, tmax = SEGMENT_HEADER, header.first_seq, header.time_max_before
        if i >= 0:
            e_seq, e_tmax, _, e_off = index.entry(i)
            if (peek(mapping, e_off, header.max_payload) or (0,))[0] == e_seq:
                start, seq, tmax = e_off, e_seq, e_tmax
        found = scan(mapping, start, seq, tmax, header.max_payload, True)
        if found.kind == "corrupt":
            off, _, _, text = found.problems[0]
            raise JournalCorrupted(f"{mapping.path}: {text} at offset {off}; run "
                                   "`python -m hftalloc journal verify` (the writer does not "
                                   "append after damage)", mapping.path, off)
        if found.kind == "torn":
            self.torn_records_cut = 1
            self.torn_bytes_cut = zero_tail(mapping, found.torn_offset,
                                            pad8(RECORD_HEADER + header.max_payload) + 8)
        # index entries after the recovered end point at nothing
        keep = len(index.seqs)
        while keep and (index.seqs[keep - 1] >= found.next_seq):
            keep -= 1
        index.keep(keep)
        pos, next_seq, time_max = found.end, found.next_seq, found.time_max
        if found.kind in ("marker", "full"):
            mapping = self._create_segment(last + 1, next_seq, time_max)
            pos = SEGMENT_HEADER
        return mapping, pos, next_seq, time_max

    def _create_segment(self, number: int, first_seq: int, time_max: int) -> Mapping:
        final = os.path.join(self.path, segment_name(number))
        tmp = os.path.join(self.path, f".segment-{number:012d}.tmp")
        header = SegmentHeader(self.segment_size, number, first_seq, self.max_payload, time_max,
                               time.time_ns(), time.monotonic_ns())
        try:
            fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise journal_error(exc, f"cannot create segment {number} in {self.path}") from exc
        try:
            try:
                # blocks reserved now: a full disk is an error here, never a SIGBUS later
                os.posix_fallocate(fd, 0, self.segment_size)
                os.pwrite(fd, header.pack(), 0)
                if self._sync:
                    os.fsync(fd)
                os.rename(tmp, final)
            except OSError as exc:
                try:
                    os.unlink(tmp)
                except OSError:
                    pass
                raise journal_error(exc, f"cannot create segment {number} "
                                         f"({self.segment_size} B) in {self.path}") from exc
        finally:
            os.close(fd)
        if self._sync:
            self._fsync_dir()
        self._segments_created += 1
        return map_segment(self.path, number, self.segment_size, True)

    def _fsync_dir(self) -> None:
        fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        except OSError:
            pass
        finally:
            os.close(fd)

    # -- callbacks of the core (cold paths) -------------------------------------------
    def _new_topic(self, topic: Any) -> int:
        if type(topic) is not str and isinstance(topic, str):
            topic = str(topic)
        validate_topic(topic)
        assert self._topics is not None
        known = self._topics.ids.get(topic)
        return known if known is not None else self._topics.add(topic)

    def _roll(self) -> Mapping:
        nxt = self._create_segment(self.number + 1, self._core.next_seq, self._core.time_max)
        self.number = nxt.number
        if self._prefault:
            nxt.prefault(SEGMENT_HEADER)
        return nxt

    # -- public API ----------------------------------------------------------------------
    def append(self, topic: str, payload: Any, timestamp: int | None = None) -> int:
        """Append one record (replaced by the compiled method at open)."""
        raise AssertionError("unreachable")  # pragma: no cover

    def claim(self, topic: str, size: int, timestamp: int | None = None) -> Claim:
        """Reserve a record to write in place (replaced by the compiled method at open)."""
        raise AssertionError("unreachable")  # pragma: no cover

    @property
    def next_seq(self) -> int:
        return self._core.next_seq

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def position(self) -> tuple[int, int]:
        """(segment number, offset) where the next record goes."""
        return self._core.position

    @property
    def core(self) -> WriterCore:
        """The compiled writer (what a :class:`~hftalloc.journal.Recorder` appends through)."""
        return self._core

    def flush(self) -> None:
        """Write every committed record (and the topic dictionary) to disk now."""
        if self._closed:
            return
        self._core.flush()
        if self._topics is not None:
            self._topics.fsync()
        if self._index is not None:
            self._index.fsync()

    def stats(self) -> WriterStats:
        core = self._core
        return WriterStats(core.appended, core.bytes_written, core.aborted,
                           self._segments_created, self.torn_records_cut, self.torn_bytes_cut,
                           core.flushes, core.flush_errors,
                           self._index.errors if self._index is not None else 0, core.next_seq)

    def close(self) -> None:
        """Flush per the policy, unmap and release the writer lock (idempotent). A pending
        claim without live views is aborted."""
        if self._closed:
            return
        core = self._core
        core.abort_pending()
        if self._sync:
            self.flush()
        core.detach()
        self._closed = True
        self._release_files()

    def _release_files(self) -> None:
        if self._topics is not None:
            self._topics.close()
        if self._index is not None:
            self._index.close()
        if self._lock is not None:
            self._lock.release()

    def __enter__(self) -> JournalWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"next seq {self._core.next_seq}"
        return f"<JournalWriter {self.path!r} {state}>"

