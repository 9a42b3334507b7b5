"""The sparse index of a journal (``index.hji``): where to start looking for a seq or a time.

One 32-byte entry (seq, time max before it, segment, offset, crc32c) every
``index_every`` records or ``index_bytes`` bytes and at the start of each segment.
``time max before`` is the largest timestamp of all earlier records, so the entries are
ordered by it even when timestamps are not: every record before an entry whose value
is below ``t`` has a timestamp below ``t``. Lookups are binary searches. The index is
advisory: an entry that fails its checks, or points at anything but the record it
names, is ignored (the reader then starts from an earlier point).
"""

from __future__ import annotations

import bisect
import os

from hftalloc.journal._journal import crc32c
from hftalloc.journal.files import journal_error
from hftalloc.journal.format import (
    FILE_HEADER,
    INDEX_ENTRY,
    INDEX_FILE,
    INDEX_MAGIC,
    SEGMENT_HEADER,
    file_header,
    parse_file_header,
)

__all__ = ["IndexEntry", "SparseIndex"]

IndexEntry = tuple[int, int, int, int]     # seq, time max before, segment, offset


def pack_entry(seq: int, time_max: int, segment: int, offset: int) -> bytes:
    body = INDEX_ENTRY.pack(seq, time_max, segment, offset, 0)[:24]
    return body + crc32c(body).to_bytes(4, "little") + b"\x00" * 4


class SparseIndex:
    """Index entries in seq order, with binary search by seq and by time."""

    def __init__(self, directory: str) -> None:
        self.path = os.path.join(directory, INDEX_FILE)
        self.seqs: list[int] = []
        self.times: list[int] = []
        self.places: list[tuple[int, int]] = []
        self.offset = 0
        self.problem: str | None = None

    def load(self, segment_sizes: dict[int, int] | None = None) -> None:
        """Read the entries added since the last call (stop at the first bad one)."""
        try:
            with open(self.path, "rb") as f:
                if self.offset == 0:
                    head = f.read(FILE_HEADER)
                    if len(head) < FILE_HEADER:
                        return
                    parse_file_header(head, INDEX_MAGIC, self.path, "index")
                    self.offset = FILE_HEADER
                f.seek(self.offset)
                data = f.read()
        except FileNotFoundError:
            return
        except OSError as exc:
            raise journal_error(exc, f"cannot read {self.path}") from exc
        pos = 0
        while pos + INDEX_ENTRY.size <= len(data):
            seq, tmax, seg, off, crc = INDEX_ENTRY.unpack_from(data, pos)
            if crc != crc32c(data[pos:pos + 24]):
                self.problem = (f"{self.path}: entry at offset {self.offset + pos} fails its "
                                "checksum")
                break
            if self.seqs and (seq <= self.seqs[-1] or tmax < self.times[-1]
                              or (seg, off) <= self.places[-1]):
                self.problem = f"{self.path}: entry at offset {self.offset + pos} out of order"
                break
            size = segment_sizes.get(seg) if segment_sizes is not None else None
            if off < SEGMENT_HEADER or off % 8 or (segment_sizes is not None and
                                                   (size is None or off >= size)):
                self.problem = f"{self.path}: entry at offset {self.offset + pos} out of range"
                break
            self.seqs.append(seq)
            self.times.append(tmax)
            self.places.append((seg, off))
            pos += INDEX_ENTRY.size
        self.offset += pos

    def entry(self, i: int) -> IndexEntry:
        seg, off = self.places[i]
        return self.seqs[i], self.times[i], seg, off

    def at_or_before_seq(self, seq: int) -> int:
        """Position of the last entry with seq <= ``seq`` (-1: none)."""
        return bisect.bisect_right(self.seqs, seq) - 1

    def before_time(self, t: int) -> int:
        """Position of the last entry all of whose earlier records are older than ``t``."""
        return bisect.bisect_left(self.times, t) - 1

    def last_in_segment(self, segment: int) -> int:
        """Position of the last entry in ``segment`` (-1: none)."""
        i = bisect.bisect_right(self.places, (segment, 1 << 62)) - 1
        return i if i >= 0 and self.places[i][0] == segment else -1

    def drop_from(self, i: int) -> None:
        del self.seqs[i:], self.times[i:], self.places[i:]


class IndexWriter(SparseIndex):
    """The writer's side: keeps the entries that point at committed records, appends."""

    def __init__(self, directory: str) -> None:
        super().__init__(directory)
        self.errors = 0
        try:
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise journal_error(exc, f"cannot open {self.path}") from exc
        try:
            if os.fstat(self.fd).st_size < FILE_HEADER:
                os.ftruncate(self.fd, 0)
                os.pwrite(self.fd, file_header(INDEX_MAGIC), 0)
        except OSError as exc:
            os.close(self.fd)
            raise journal_error(exc, f"cannot prepare {self.path}") from exc

    def keep(self, count: int) -> None:
        """Keep the first ``count`` entries (the rest point past the recovered end)."""
        self.drop_from(count)
        self.offset = FILE_HEADER + count * INDEX_ENTRY.size
        try:
            os.ftruncate(self.fd, self.offset)
        except OSError:
            self.errors += 1

    def add(self, seq: int, time_max: int, segment: int, offset: int) -> None:
        """Store an entry; a failure (disk full) is counted in ``errors``, not raised: the
        index only speeds up seeks."""
        data = pack_entry(seq, time_max, segment, offset)
        try:
            if os.pwrite(self.fd, data, self.offset) != len(data):
                raise OSError(28, "short write")
        except OSError:
            self.errors += 1
            return
        self.offset += len(data)
        self.seqs.append(seq)
        self.times.append(time_max)
        self.places.append((segment, offset))

    def fsync(self) -> None:
        if self.fd >= 0:
            try:
                os.fsync(self.fd)
            except OSError:
                self.errors += 1

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
