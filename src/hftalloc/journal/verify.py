"""verify: check every record, header, topic and index entry of a journal."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from hftalloc.errors import JournalError
from hftalloc.journal._journal import scan
from hftalloc.journal.dictionary import TopicDictionary
from hftalloc.journal.files import map_segment, read_header, require_directory, writer_alive
from hftalloc.journal.format import INT64_MIN, SEGMENT_HEADER, segment_name, segment_numbers
from hftalloc.journal.index import SparseIndex

__all__ = ["Problem", "VerifyReport", "verify"]


@dataclass(frozen=True, slots=True)
class Problem:
    """One damaged place: file, byte range ``[offset, end)``, kind and explanation."""

    path: str
    offset: int
    end: int
    kind: str          # torn, checksum, length, sequence, garbage, unfinished, header, ...
    text: str

    def __str__(self) -> str:
        return f"{self.path} @ {self.offset}: {self.kind}: {self.text}"


@dataclass(slots=True)
class VerifyReport:
    """Every problem found, and what was intact."""

    path: str
    records: int = 0
    segments: int = 0
    problems: list[Problem] = field(default_factory=list)
    writer_alive: bool = False

    @property
    def ok(self) -> bool:
        return not self.problems


def verify(path: str | os.PathLike[str]) -> VerifyReport:
    """Walk the whole journal and list every problem (never raises for damage in it)."""
    path = os.fspath(path)
    require_directory(path)
    report = VerifyReport(path, writer_alive=writer_alive(path))
    numbers = segment_numbers(path)
    if not numbers:
        report.problems.append(Problem(path, 0, 0, "empty", "no journal segments"))
        return report
    expect_seq = 0
    time_max = INT64_MIN
    for n in range(numbers[0], numbers[-1] + 1):
        seg_path = os.path.join(path, segment_name(n))
        if n not in numbers:
            report.problems.append(Problem(seg_path, 0, 0, "missing", "segment file missing"))
            expect_seq = 0
            continue
        report.segments += 1
        try:
            header = read_header(path, n)
            mapping = map_segment(path, n, header.segment_size, False)
        except JournalError as exc:
            report.problems.append(Problem(seg_path, 0, 0, "header", str(exc)))
            expect_seq = 0
            continue
        if expect_seq and header.first_seq != expect_seq:
            report.problems.append(Problem(seg_path, 0, SEGMENT_HEADER, "sequence",
                                           f"segment starts at seq {header.first_seq}, "
                                           f"expected {expect_seq}"))
        last = n == numbers[-1]
        found = scan(mapping, SEGMENT_HEADER, header.first_seq, max(time_max, INT64_MIN),
                     header.max_payload, last, True)
        report.records += found.records
        for off, end, kind, text in found.problems:
            if kind == "torn" and report.writer_alive:
                continue              # a record being written right now
            report.problems.append(Problem(seg_path, off, end, kind, text))
        expect_seq = found.next_seq
        time_max = found.time_max
        del mapping
    topics = TopicDictionary(path)
    try:
        topics.load()
    except JournalError as exc:
        report.problems.append(Problem(topics.path, 0, 0, "topics", str(exc)))
    if topics.problem:
        report.problems.append(Problem(topics.path, topics.problem_offset, -1, "topics",
                                       topics.problem))
    index = SparseIndex(path)
    try:
        index.load()
    except JournalError as exc:
        report.problems.append(Problem(index.path, 0, 0, "index", str(exc)))
    if index.problem:
        report.problems.append(Problem(index.path, -1, -1, "index", index.problem))
    return report
