"""Session stores: a file store resumes sequence numbers and serves resends after reopening."""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hftalloc.fix.errors import FixStoreCorrupted
from hftalloc.fix.store import DURABILITY, FileStore, MemoryStore


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


# -- durability -------------------------------------------------------------------------------
@pytest.mark.parametrize("durability", DURABILITY)
def test_durability_policies(tmp_path, durability):
    path = tmp_path / "A-B.store"
    s = FileStore(path, durability=durability)
    s.save(1, b"one")
    s.set_next_in(4)
    # what another process would find if this one died now
    on_disk = path.stat().st_size
    if durability == "none":
        assert on_disk == 0                  # still buffered in the process
        s.flush()
    else:
        assert on_disk == 17 + 3 + 17        # handed to the OS record by record
    assert FileStore(path).get(1) == b"one"
    assert s.records_written == 2
    assert s.syncs == (2 if durability == "fsync" else 0)
    s.close()
    assert s.closed and FileStore(path, durability=durability).next_in == 4


def test_none_buffer_fills_then_writes(tmp_path):
    path = tmp_path / "A-B.store"
    s = FileStore(path, durability="none", buffer_size=100)
    for seq in range(1, 9):
        s.save(seq, b"x" * 20)                   # 37 B records: out by three
    assert path.stat().st_size == 6 * 37         # full buffers went out, two wait
    assert s.get(8) == b"x" * 20                 # a read sees its own buffered records
    s.close()
    assert FileStore(path).next_out == 9


def test_bad_durability_is_refused(tmp_path):
    with pytest.raises(ValueError):
        FileStore(tmp_path / "x.store", durability="sometimes")


def test_corrupt_record_before_good_ones_is_an_error(tmp_path):
    path = tmp_path / "A-B.store"
    s = FileStore(path)
    for seq in range(1, 6):
        s.save(seq, b"payload-%d" % seq)
    s.close()
    data = bytearray(path.read_bytes())
    data[17 + 3] ^= 0x55                          # inside the first record's payload
    path.write_bytes(bytes(data))
    with pytest.raises(FixStoreCorrupted):
        FileStore(path)
    assert path.read_bytes() == bytes(data)       # left as it was for inspection


# a model of the store: replaying the records fully inside the file
ops = st.lists(st.one_of(
    st.tuples(st.just("save"), st.binary(max_size=40)),
    st.tuples(st.just("in"), st.integers(1, 10**6)),
    st.tuples(st.just("out"), st.integers(1, 10**6)),
    st.tuples(st.just("reset"), st.none()),
), max_size=25)


class Model:
    def __init__(self) -> None:
        self.next_out, self.next_in = 1, 1
        self.messages: dict[int, bytes] = {}

    def apply(self, op, arg) -> None:
        if op == "save":
            if arg:
                self.messages[self.next_out] = arg
            self.next_out += 1
        elif op == "in":
            self.next_in = arg
        elif op == "out":
            self.next_out = arg
        else:
            self.next_out, self.next_in, self.messages = 1, 1, {}


@settings(max_examples=60, deadline=None)
@given(ops, st.floats(0, 1), st.binary(max_size=30))
def test_torn_tail_model(tmp_path_factory, operations, cut_at, junk):
    """Cut the file anywhere (a crash mid-write) or append junk: reopening replays exactly
    the records fully before the cut and drops the rest with a count."""
    path = tmp_path_factory.mktemp("torn") / "A-B.store"
    s = FileStore(path)
    ends = [0]          # file size after each operation, and the model state then
    states = [Model()]
    model = Model()
    for op, arg in operations:
        if op == "save":
            s.save(s.next_out, arg or None)
        elif op == "in":
            if arg == s.next_in:
                continue
            s.set_next_in(arg)
        elif op == "out":
            s.set_next_out(arg)
        else:
            s.reset()
            ends, states = [], []
        model.apply(op, arg)
        ends.append(path.stat().st_size)
        snapshot = Model()
        snapshot.next_out, snapshot.next_in = model.next_out, model.next_in
        snapshot.messages = dict(model.messages)
        states.append(snapshot)
    s.close()
    data = path.read_bytes()
    cut = int(len(data) * cut_at)
    path.write_bytes(data[:cut] + (junk if cut == len(data) else b""))
    k = max(i for i, end in enumerate(ends) if end <= cut) if ends[0] <= cut else None
    again = FileStore(path)
    want = states[k] if k is not None else Model()
    assert (again.next_out, again.next_in) == (want.next_out, want.next_in)
    assert again.get_range(1, 10**7) == {s_: m for s_, m in want.messages.items()}
    torn = len(path.read_bytes()) != len(data[:cut] + (junk if cut == len(data) else b""))
    assert again.dropped_tail_records == (1 if torn else 0)
    assert path.stat().st_size == (ends[k] if k is not None else 0)
    again.close()


CHILD_WRITER = r"""
import sys
from hftalloc.fix.store import FileStore
s = FileStore(sys.argv[1], durability=sys.argv[2])
seq = s.next_out
while True:
    s.save(seq, b"order-%d" % seq * 20)
    if seq % 50 == 0:
        print(seq, flush=True)          # acknowledged: save() returned
    seq += 1
"""


@pytest.mark.parametrize("durability", ["flush", "fsync"])
def test_sigkill_mid_stream_loses_nothing_acknowledged(tmp_path, durability):
    path = tmp_path / "A-B.store"
    child = subprocess.Popen([sys.executable, "-c", CHILD_WRITER, str(path), durability],
                             stdout=subprocess.PIPE, text=True)
    acked = 0
    try:
        for line in child.stdout:
            acked = int(line)
            if acked >= 500:
                break
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(10)
        child.stdout.close()
    assert child.returncode == -signal.SIGKILL and acked >= 500
    again = FileStore(path)
    assert again.next_out > acked                       # the policy's promise
    assert again.dropped_tail_records in (0, 1)          # at most the record being written
    for seq in (1, acked // 2, acked):
        assert again.get(seq) == b"order-%d" % seq * 20
    got = again.get_range(1, again.next_out)
    assert sorted(got) == list(range(1, again.next_out))   # no hole, nothing misparsed
    again.close()
