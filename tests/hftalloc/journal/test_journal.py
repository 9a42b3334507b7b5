"""JournalWriter / JournalReader: records, claims, rolling, seeking, filters, reopening."""

from __future__ import annotations

import os
import struct

import pytest

from hftalloc import (
    InvalidTopic,
    JournalClosed,
    JournalConfigError,
    JournalCorrupted,
    JournalError,
    JournalFormatError,
    JournalLocked,
    JournalNotFound,
    JournalStateError,
    RecordTooLarge,
    RecordTypeError,
)
from hftalloc.journal import JournalReader, JournalWriter, verify
from hftalloc.journal.format import SEGMENT_HEADER, segment_name

SMALL = 64 * 1024


def payload(i: int) -> bytes:
    return bytes((i * 7 + k) % 256 for k in range(i % 200))


def test_append_and_read_back(small_writer, jdir):
    topics = ["md.quote.AAPL", "md.trade.MSFT", "ord.new.AAPL"]
    for i in range(1000):
        assert small_writer.append(topics[i % 3], payload(i), 1000 + i) == i + 1
    r = JournalReader(jdir)
    recs = list(r)
    assert [x.seq for x in recs] == list(range(1, 1001))
    assert [x.topic for x in recs] == [topics[i % 3] for i in range(1000)]
    assert [x.timestamp for x in recs] == [1000 + i for i in range(1000)]
    assert [bytes(x) for x in recs] == [payload(i) for i in range(1000)]
    assert len(r.numbers) > 1                     # it rolled
    assert recs[5].payload.readonly
    info = r.info()
    assert (info.records, info.first_seq, info.last_seq) == (1000, 1, 1000)
    assert (info.first_time, info.last_time) == (1000, 1999)
    assert set(info.topics) == set(topics)
    assert verify(jdir).ok


def test_records_are_read_only_views(small_writer, jdir):
    small_writer.append("a.b", b"hello")
    rec = next(iter(JournalReader(jdir)))
    view = memoryview(rec)
    assert view.readonly and bytes(view) == b"hello"
    with pytest.raises(TypeError):
        view[0] = 1
    with pytest.raises((TypeError, BufferError)):
        struct.pack_into("<B", rec, 0, 1)


def test_records_outlive_reader_close(small_writer, jdir):
    small_writer.append("a.b", b"kept")
    r = JournalReader(jdir)
    rec = next(iter(r))
    r.close()
    del r
    assert bytes(rec) == b"kept"     # the record keeps its mapping alive


def test_claim_commit_abort(small_writer, jdir):
    c = small_writer.claim("a.b", 16)
    struct.pack_into("<qq", c, 0, 1, 2)
    assert c.commit() == 1
    with pytest.raises(JournalStateError):
        memoryview(c)
    with pytest.raises(JournalStateError):
        c.commit()
    c = small_writer.claim("a.b", 8)
    with pytest.raises(JournalStateError):
        small_writer.append("a.b", b"x")        # one claim at a time
    c.abort()
    with small_writer.claim("a.c", 3) as c, memoryview(c) as mv:
        mv[:] = b"xyz"
    with pytest.raises(ValueError), small_writer.claim("a.c", 3) as c:
        raise ValueError("aborts")
    c = small_writer.claim("a.c", 4)
    view = memoryview(c)
    with pytest.raises(JournalStateError, match="still alive"):
        c.commit()
    view.release()
    assert c.commit() == 3
    recs = [(r.seq, r.topic, bytes(r)) for r in JournalReader(jdir)]
    assert recs == [(1, "a.b", struct.pack("<qq", 1, 2)), (2, "a.c", b"xyz"),
                    (3, "a.c", b"\x00" * 4)]


def test_seek_by_seq_and_time(small_writer, jdir):
    for i in range(2000):
        small_writer.append("t.x", payload(i), 10 * i)
    r = JournalReader(jdir)
    for seq in (1, 2, 17, 999, 1500, 2000):
        assert next(iter(r.seek(seq))).seq == seq
    assert list(r.seek(2001)) == []
    for t in (0, 5, 10, 12345, 19990):
        assert next(iter(r.seek_time(t))).timestamp == -(-t // 10) * 10
    assert list(r.seek_time(10**9)) == []


def test_seek_time_unordered_timestamps(small_writer, jdir):
    stamps = [(i * 7919) % 1000 for i in range(1500)]
    for t in stamps:
        small_writer.append("t.x", b"", t)
    r = JournalReader(jdir)
    for t in (0, 1, 500, 998, 999):
        first = next(i for i, s in enumerate(stamps) if s >= t)
        assert next(iter(r.seek_time(t))).seq == first + 1


def test_topic_filter_and_time_window(small_writer, jdir):
    for i in range(300):
        small_writer.append(["md.quote.A", "md.trade.A", "ord.new.A"][i % 3], b"", i)
    r = JournalReader(jdir, topics="md.*.A")
    assert {x.topic for x in r} == {"md.quote.A", "md.trade.A"}
    assert [x.seq for x in r.records("ord.>")] == list(range(3, 301, 3))
    got = [x.timestamp for x in r.records(["md.quote.*"], start_time=30, end_time=60)]
    assert got == list(range(30, 60, 3))
    with pytest.raises(InvalidTopic):
        JournalReader(jdir, topics="md..x")


def test_reopen_continues(jdir):
    with JournalWriter(jdir, segment_size=SMALL, max_payload=1024) as w:
        for i in range(700):
            w.append("a.b", payload(i))
    with JournalWriter(jdir) as w:
        assert w.next_seq == 701
        w.append("a.new", b"after")
    recs = list(JournalReader(jdir))
    assert len(recs) == 701 and recs[-1].topic == "a.new" and bytes(recs[-1]) == b"after"
    assert verify(jdir).ok


def test_segment_full_exactly(jdir):
    # records sized so that a segment ends exactly at its last byte
    rec = (SMALL - SEGMENT_HEADER) // 4 - 32
    with JournalWriter(jdir, segment_size=SMALL, max_payload=rec) as w:
        for _ in range(9):
            w.append("a.b", b"x" * rec)
    assert [r.seq for r in JournalReader(jdir)] == list(range(1, 10))
    with JournalWriter(jdir) as w:
        w.append("a.b", b"y")
    assert len(list(JournalReader(jdir))) == 10


def test_bad_arguments(small_writer, jdir):
    with pytest.raises(RecordTooLarge):
        small_writer.append("a.b", b"x" * 4097)
    with pytest.raises(RecordTooLarge):
        small_writer.claim("a.b", 4097)
    for bad in ("text", 12, None, [1, 2], memoryview(b"abcd")[::2]):
        with pytest.raises(RecordTypeError):
            small_writer.append("a.b", bad)
    with pytest.raises(RecordTypeError):
        small_writer.append("a.b", b"", "now")
    with pytest.raises(RecordTypeError):
        small_writer.append("a.b", b"", 1 << 64)
    with pytest.raises(RecordTypeError):
        small_writer.claim("a.b", 1.5)
    for topic in ("", "a..b", "a.*", 5, None):
        with pytest.raises(InvalidTopic):
            small_writer.append(topic, b"")
    small_writer.append("ok.topic", bytearray(b"ba"))
    small_writer.append("ok.topic", memoryview(b"mv"))
    assert [bytes(r) for r in JournalReader(jdir)] == [b"ba", b"mv"]   # nothing else landed
    for kwargs in ({"segment_size": 1000}, {"segment_size": SMALL + 1},
                   {"segment_size": SMALL, "max_payload": SMALL}, {"flush": "sometimes"},
                   {"flush_interval": 0},
                   {"index_every": 0}, {"max_payload": -1}):
        with pytest.raises(JournalConfigError):
            JournalWriter(jdir + "-other", **kwargs)


def test_one_writer_and_closed(jdir):
    w = JournalWriter(jdir, segment_size=SMALL)
    with pytest.raises(JournalLocked):
        JournalWriter(jdir)
    w.close()
    with pytest.raises(JournalClosed):
        w.append("a.b", b"")
    with pytest.raises(JournalClosed):
        w.claim("a.b", 1)
    w.close()
    JournalWriter(jdir).close()


def test_not_a_journal(tmp_path):
    with pytest.raises(JournalNotFound):
        JournalReader(tmp_path / "missing")
    with pytest.raises(JournalNotFound):
        JournalWriter(tmp_path / "missing", create=False)
    (tmp_path / "file").write_bytes(b"x" * 100)
    with pytest.raises(JournalFormatError, match="not a journal directory"):
        JournalReader(tmp_path / "file")
    with pytest.raises(JournalFormatError):
        JournalWriter(tmp_path / "file")
    (tmp_path / "empty").mkdir()
    with pytest.raises(JournalFormatError, match="no journal segments"):
        JournalReader(tmp_path / "empty")
    fake = tmp_path / "fake"
    fake.mkdir()
    (fake / segment_name(1)).write_bytes(b"\x00" * SMALL)
    with pytest.raises(JournalFormatError, match="not an hftalloc journal segment"):
        JournalReader(fake)
    with pytest.raises(JournalFormatError):
        JournalWriter(fake)


def test_other_version_refused(jdir):
    JournalWriter(jdir, segment_size=SMALL).close()
    path = os.path.join(jdir, segment_name(1))
    with open(path, "r+b") as f:
        f.seek(8)
        f.write(struct.pack("<H", 99))
    with pytest.raises(JournalFormatError, match="version 99"):
        JournalReader(jdir)
    with pytest.raises(JournalFormatError, match="version 99"):
        JournalWriter(jdir)


def test_truncated_segment_refused(jdir):
    with JournalWriter(jdir, segment_size=SMALL) as w:
        w.append("a.b", b"x")
    path = os.path.join(jdir, segment_name(1))
    os.truncate(path, SMALL // 2)         # never mapped past the end of the file (SIGBUS)
    with pytest.raises(JournalCorrupted, match="header says"):
        JournalReader(jdir)


def test_errors_derive_from_bus_error():
    from hftalloc import BusError, JournalFull

    for cls in (JournalError, JournalCorrupted, JournalFull, RecordTooLarge, JournalLocked):
        assert issubclass(cls, BusError)
    exc = JournalCorrupted("x", "/some/file", 128)
    assert (exc.path, exc.offset) == ("/some/file", 128)
