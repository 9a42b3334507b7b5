"""Session stores: a file store resumes sequence numbers and serves resends after reopening."""

from __future__ import annotations

from hftalloc.fix.store import FileStore, MemoryStore


def test_file_store_resumes(tmp_path):
    path = tmp_path / "A-B.store"
    s = FileStore(path)
    s.save(1, None)
    s.save(2, b"msg-two")
    s.save(3, b"msg-three")
    s.set_next_in(5)
    s.close()
    again = FileStore(path)
    assert (again.next_out, again.next_in) == (4, 5)
    assert again.get(2) == b"msg-two" and again.get(1) is None
    assert again.get_range(1, 10) == {2: b"msg-two", 3: b"msg-three"}
    again.set_next_out(10)
    again.close()
    assert FileStore(path).next_out == 10


def test_torn_tail_is_cut_and_counted(tmp_path):
    path = tmp_path / "A-B.store"
    s = FileStore(path)
    s.save(1, b"one")
    s.save(2, b"two")
    s.close()
    data = path.read_bytes()
    path.write_bytes(data[:-2])              # a crash in the middle of the last record
    again = FileStore(path)
    assert again.dropped_tail_bytes == 20 - 2     # the torn record (17 B header + 3 B)
    assert again.next_out == 2 and again.get(1) == b"one" and again.get(2) is None
    again.save(2, b"two again")              # appends after the cut
    again.close()
    assert FileStore(path).get(2) == b"two again"


def test_corrupt_record_stops_replay(tmp_path):
    path = tmp_path / "A-B.store"
    s = FileStore(path)
    s.save(1, b"one")
    s.save(2, b"two")
    s.close()
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF                          # flip a byte of the second payload
    path.write_bytes(bytes(data))
    again = FileStore(path)
    assert again.next_out == 2 and again.dropped_tail_bytes == 20


def test_reset(tmp_path):
    path = tmp_path / "A-B.store"
    s = FileStore(path)
    s.save(1, b"one")
    s.set_next_in(9)
    s.reset()
    s.close()
    again = FileStore(path)
    assert (again.next_out, again.next_in) == (1, 1) and again.get(1) is None
    m = MemoryStore()
    m.save(1, b"x")
    m.reset()
    assert (m.next_out, m.get(1)) == (1, None)
