"""Crash recovery: kill -9 at random moments, torn tails, flipped bytes."""

from __future__ import annotations

import os
import random
import shutil
import signal
import struct
import time

import pytest

from hftalloc import JournalCorrupted
from hftalloc.journal import JournalReader, JournalWriter, verify
from hftalloc.journal.format import segment_name, segment_numbers

SEGMENT = 64 * 1024
LONG = os.environ.get("HFTALLOC_LONG_TESTS") == "1"


_PATTERN = bytes(range(251)) * 8


def content(seq: int) -> tuple[str, bytes]:
    """What the writer puts in record ``seq`` (so a reader can check every byte)."""
    size = (seq * 2654435761) % 1500
    start = seq % 251
    return f"t.{seq % 5}", _PATTERN[start:start + size]


def _child(path: str, report: int) -> None:
    """Append at full speed; report what the journal holds at the start, then each
    committed seq, through the pipe ``report`` (atomic 8-byte writes)."""
    try:
        w = JournalWriter(path, segment_size=SEGMENT, max_payload=2000, index_every=32)
        seq = w.next_seq
        os.write(report, struct.pack("<Q", seq - 1))
        while True:
            topic, data = content(seq)
            if seq % 3:
                got = w.append(topic, data, seq)
            else:
                c = w.claim(topic, len(data), seq)
                with memoryview(c) as mv:
                    mv[:] = data
                got = c.commit()
            assert got == seq
            os.write(report, struct.pack("<Q", seq))
            seq += 1
    except BaseException:
        os._exit(3)


def check_prefix(path: str, reported: int, checked: int = 0) -> int:
    """The journal holds records 1..n, n in {reported, reported + 1}, each intact (every
    record's checksum and seq are checked by the reader; the bytes are compared from
    ``checked`` on, the earlier ones were compared after an earlier kill)."""
    n = 0
    for rec in JournalReader(path):
        n += 1
        assert rec.seq == n
        if n > checked:
            topic, data = content(n)
            assert (rec.topic, rec.timestamp, bytes(rec)) == (topic, n, data)
    assert reported <= n <= reported + 1, (reported, n)
    return n


def _has_segment(path: str) -> bool:
    return os.path.isdir(path) and bool(segment_numbers(path))


def test_kill_minus_nine_keeps_an_exact_prefix(tmp_path):
    path = str(tmp_path / "j")
    rng = random.Random(1234)
    kills = 500 if LONG else 50
    records = 0                              # records in the journal, checked so far
    torn_seen = 0
    for _ in range(kills):
        # a pipe, not shared memory: on some kernels a page of a shared mapping written by
        # a process killed with SIGKILL was seen to read back as zeros afterwards
        rfd, wfd = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(rfd)
            _child(path, wfd)
        os.close(wfd)
        reports = bytearray()
        deadline = time.monotonic() + rng.uniform(0.001, 0.03 if LONG else 0.012)
        os.set_blocking(rfd, False)
        while time.monotonic() < deadline:   # drained while it runs: it never blocks long
            try:
                reports += os.read(rfd, 1 << 16)
            except BlockingIOError:
                pass
        os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
        assert os.WIFSIGNALED(status), f"the child ended by itself (status {status})"
        os.set_blocking(rfd, True)
        while chunk := os.read(rfd, 1 << 16):
            reports += chunk
        os.close(rfd)
        # the last whole report; none: killed before it opened the journal (nothing new)
        end = len(reports) // 8 * 8
        reported = struct.unpack_from("<Q", reports, end - 8)[0] if end else records
        if reported == 0 and not _has_segment(path):
            continue                         # killed before its first segment existed
        records = check_prefix(path, reported, records)
        torn_seen += JournalReader(path).torn_tail is not None
    assert records > kills                   # it did write between kills
    print(f"{kills} kills, {records} records, {torn_seen} torn tails")
    with JournalWriter(path) as w:           # recovery cuts any torn tail
        assert w.next_seq == records + 1
    assert verify(path).ok
    check_prefix(path, records)


def _torn_journal(path: str, records: int) -> tuple[str, int]:
    with JournalWriter(path, segment_size=SEGMENT, max_payload=2000) as w:
        for seq in range(1, records + 1):
            w.append(*content(seq), seq)
        seg, off = w.position
    seg_path = os.path.join(path, segment_name(seg))
    with open(seg_path, "r+b") as f:        # a record cut short: header and some payload
        f.seek(off + 4)
        f.write(struct.pack("<IQqII", 0, records + 1, 0, 1, 0) + b"\x55" * 100)
    return seg_path, off


def test_torn_tail_detected_counted_cut(tmp_path):
    path = str(tmp_path / "j")
    seg_path, off = _torn_journal(path, 300)
    r = JournalReader(path)
    assert r.torn_tail is not None and (r.torn_tail.path, r.torn_tail.offset) == (seg_path, off)
    assert [x.seq for x in r] == list(range(1, 301))
    report = verify(path)
    assert [(p.path, p.offset, p.kind) for p in report.problems] == [(seg_path, off, "torn")]
    with JournalWriter(path) as w:
        assert w.stats().torn_records_cut == 1
        assert w.append("t.x", b"after") == 301
    assert verify(path).ok
    assert [x.seq for x in JournalReader(path)][-2:] == [300, 301]


def test_torn_tail_by_checksum(tmp_path):
    """Length written but payload not (pages written back out of order by a machine
    crash): the last record fails its checksum and nothing follows it: a torn tail."""
    path = str(tmp_path / "j")
    with JournalWriter(path, segment_size=SEGMENT, max_payload=2000) as w:
        for seq in range(1, 51):
            w.append(*content(seq), seq)
    last = list(JournalReader(path))[-1]
    seg_path = os.path.join(path, segment_name(last.segment))
    with open(seg_path, "r+b") as f:
        f.seek(last.offset + 40)
        f.write(b"\x00" * 8)
    assert [p.kind for p in verify(path).problems] == ["torn"]
    assert [x.seq for x in JournalReader(path)] == list(range(1, 50))
    with JournalWriter(path) as w:
        assert w.next_seq == 50


@pytest.mark.parametrize("seed", range(8))
def test_flipped_bytes_are_reported(tmp_path, seed):
    rng = random.Random(seed)
    path = str(tmp_path / "j")
    with JournalWriter(path, segment_size=SEGMENT, max_payload=2000, index_every=8) as w:
        for seq in range(1, 401):
            w.append(*content(seq), seq)
    records = [(os.path.join(path, segment_name(r.segment)), r.offset, r.offset + 32 + len(r))
               for r in JournalReader(path)]
    damaged: set[int] = set()                # indexes into records
    header_hit: set[str] = set()
    files = sorted(os.path.join(path, n) for n in os.listdir(path) if n.endswith(".hjs"))
    for _ in range(rng.randint(1, 6)):
        target = rng.choice(files)
        size = os.path.getsize(target)
        where = rng.randrange(0, size) if rng.random() < 0.2 else rng.randrange(0, size // 4)
        with open(target, "r+b") as f:
            f.seek(where)
            old = f.read(1)[0]
            f.seek(where)
            f.write(bytes([old ^ (1 << rng.randrange(8))]))
        if where < 128:
            header_hit.add(target)
        damaged |= {i for i, (p, a, b) in enumerate(records) if p == target and a <= where < b}
    report = verify(path)                    # never raises for damage in the journal
    for i in damaged:
        p_path, start, _ = records[i]
        assert p_path in header_hit or any(
            p.path == p_path and (p.offset == start or p.offset <= start < p.end)
            for p in report.problems), (records[i], report.problems)
    if damaged or header_hit:
        assert not report.ok
    first = min(damaged | {i for i, r in enumerate(records) if r[0] in header_hit},
                default=len(records))
    got = []
    try:
        for rec in JournalReader(path):
            got.append(rec.seq)
    except JournalCorrupted as exc:
        assert exc.path and exc.offset >= 0
    except Exception as exc:                 # a damaged header is refused with its reason
        from hftalloc import JournalError

        assert isinstance(exc, JournalError)
    assert got[:first] == list(range(1, first + 1)) or (first == 0 and got == [])
    assert len(got) >= first or header_hit


def test_copy_is_independent(tmp_path):
    """A journal directory can be copied (e.g. for archiving) and read elsewhere."""
    path = str(tmp_path / "j")
    with JournalWriter(path, segment_size=SEGMENT) as w:
        for seq in range(1, 100):
            w.append(*content(seq), seq)
    shutil.copytree(path, str(tmp_path / "copy"))
    assert [r.seq for r in JournalReader(str(tmp_path / "copy"))] == list(range(1, 100))
