"""Channels with several producers, batches and attach-or-create, in one process.

Writers here are separate ``ChannelWriter`` objects of this process, each holding its
own producer slot. A producer's death is simulated the way the segment sees a real one:
its slot's pid is replaced by the pid of a process that has exited, and the writer
object is never used again (real ``kill -9`` cases: ``test_shm_multi_processes.py``).
"""

from __future__ import annotations

import struct
import subprocess
import sys
import uuid

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    invariant,
    multiple,
    precondition,
    rule,
)

from hftalloc.cli import main
from hftalloc.errors import (
    ChannelClosed,
    ChannelFull,
    GeometryMismatch,
    MessageReleased,
    RoleTaken,
    SegmentError,
    SegmentExists,
)
from hftalloc.shm import Channel, ChannelReader, ChannelWriter
from hftalloc.shm import layout as L
from hftalloc.shm.segment import unlink
from hftalloc.shm.status import recover, segment_status

pytestmark = pytest.mark.timeout(120)
ID = struct.Struct("<QQ")  # writer number, message number


@pytest.fixture
def name():
    value = f"mp-{uuid.uuid4().hex[:12]}"
    yield value
    try:
        unlink(value)
    except SegmentError:
        pass


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait(10)
    return proc.pid


_DEAD: list[int] = []


def dead_pid_cached() -> int:
    if not _DEAD:
        _DEAD.append(dead_pid())
    return _DEAD[0]


def kill_in_place(writer: ChannelWriter, pid: int) -> None:
    """What the segment sees when the writer's process dies: its slot names a dead pid."""
    writer._core._store_signed(L.OFF_PRODUCER + L.ROLE_PID, pid)


def collect(reader, pattern=">"):
    got = []
    reader.subscribe(pattern, lambda m: got.append((m.producer, m.seq, m.tobytes())))
    return got


# -- several producers ----------------------------------------------------------------------
def test_each_writer_takes_a_free_slot_until_all_are_taken(name):
    with Channel(name, producers=2, ring_capacity=8, blocks_per_class=8, num_classes=2):
        r = ChannelReader(name)
        w0, w1 = ChannelWriter(name), ChannelWriter(name)
        assert (w0.slot, w1.slot) == (0, 1) and w0.producers == 2
        with pytest.raises(RoleTaken) as info:
            ChannelWriter(name)
        assert f"hftalloc-{name}" in str(info.value) and "all 2 producer slot" in str(info.value)
        w0.close()
        w2 = ChannelWriter(name)  # the freed slot
        assert w2.slot == 0
        for e in (w1, w2, r):
            e.close()


def test_order_per_producer_and_the_reader_tells_producers_apart(name):
    with Channel(name, producers=3, ring_capacity=16, blocks_per_class=32, num_classes=1):
        r = ChannelReader(name)
        got = collect(r)
        writers = [ChannelWriter(name, policy="raise") for _ in range(3)]
        for i in range(10):
            for w in writers:
                w.publish("t.x", ID.pack(w.slot, i))
        assert r.poll(1000) == 30
        for slot in range(3):
            mine = [(seq, ID.unpack(p)) for producer, seq, p in got if producer == slot]
            assert [s for s, _ in mine] == list(range(1, 11))
            assert [p for _, p in mine] == [(slot, i) for i in range(10)]
        assert r.received == 30 and r.stats().published == 30 and r.gaps == 0
        for e in (*writers, r):
            e.close()


def test_the_reader_polls_the_producers_round_robin(name):
    with Channel(name, producers=2, ring_capacity=64, blocks_per_class=64, num_classes=1):
        r = ChannelReader(name)
        got = collect(r)
        a, b = ChannelWriter(name), ChannelWriter(name)
        for _ in range(40):
            a.publish("t", b"a")
        for _ in range(4):
            b.publish("t", b"b")
        assert r.poll(8) == 8        # a bounded poll still serves both producers
        assert sorted(p for p, _, _ in got) == [0, 0, 0, 0, 1, 1, 1, 1]
        assert r.poll(1000) == 36 and r.poll() == 0
        for e in (a, b, r):
            e.close()


def test_wait_is_woken_by_any_producer(name):
    with Channel(name, producers=3, ring_capacity=8, blocks_per_class=8, num_classes=1):
        r = ChannelReader(name)
        ws = [ChannelWriter(name) for _ in range(3)]
        assert r.wait(0.001) is False
        ws[2].publish("t", b"x")
        assert r.wait(0.5) is True and r.poll() == 1
        for e in (*ws, r):
            e.close()


def test_dead_producer_is_recovered_while_the_others_go_on(name):
    with Channel(name, producers=2, ring_capacity=8, blocks_per_class=8, num_classes=1):
        r = ChannelReader(name)
        got = collect(r)
        alive, doomed = ChannelWriter(name), ChannelWriter(name)
        doomed.publish("t", b"committed")
        claims = [doomed.claim("t", 10), doomed.claim("t", 10)]  # never committed
        kill_in_place(doomed, dead_pid())
        info = {p.slot: p for p in r.producer_info()}
        assert info[1].alive is False and info[0].alive is True
        assert r.recover_producers() == {1: (2, 2)}  # two blocks back, two messages lost
        assert r.lost == 2 and r.stats().lost == 2
        alive.publish("t", b"still here")
        assert r.poll() == 2
        assert sorted(p for _, _, p in got) == [b"committed", b"still here"]
        new = ChannelWriter(name)  # the recovered slot is free again
        assert new.slot == 1 and new.taken_over == "vacant"
        new.publish("t", b"new")
        assert r.poll() == 1 and got[-1][:2] == (1, 2)  # the slot's sequence goes on
        status = segment_status(name)
        assert [p.lost for p in status.producers] == [0, 2] and status.lost == 2
        alive.close()
        new.close()
        assert r.recover_producers().keys() == {0, 1}  # closed slots: their spares back
        assert r.owner_counts() == [[16, 0, 0, 0]]
        r.close()
        del claims, doomed


def test_a_new_writer_adopts_a_dead_producers_slot_and_counts_its_losses(name):
    with Channel(name, producers=1, ring_capacity=8, blocks_per_class=8, num_classes=1):
        r = ChannelReader(name)
        doomed = ChannelWriter(name)
        claim = doomed.claim("t", 5)
        kill_in_place(doomed, dead_pid())
        w = ChannelWriter(name)
        assert w.slot == 0 and w.taken_over.startswith("dead pid")
        assert w.spares == 1 and r.lost == 1
        w.close()
        r.close()
        del claim, doomed


def test_status_and_cli_show_every_producer(name, capsys):
    with Channel(name, producers=3, ring_capacity=8, blocks_per_class=8, num_classes=1):
        r = ChannelReader(name)
        ws = [ChannelWriter(name, policy=p) for p in ("raise", "drop")]
        ws[1].publish("t", b"x")
        status = segment_status(name)
        assert [p.role.alive for p in status.producers] == [True, True, None]
        assert [p.policy for p in status.producers[:2]] == ["raise", "drop"]
        assert [p.published for p in status.producers] == [0, 1, 0]
        assert status.geometry["producers"] == 3 and status.queued == 1
        assert main(["status", name]) == 0
        out = capsys.readouterr().out
        assert "2/3 slots alive" in out and "slot 2: - (never)" in out
        assert "slot 1:" in out and "policy=drop published=1" in out
        result = recover(name)
        assert result["producers"] == ["alive: left alone", "alive: left alone", "vacant"]
        for e in (*ws, r):
            e.close()


# -- batches -----------------------------------------------------------------------------------
def test_publish_many_and_batch_delivery_with_message_lifetimes(name):
    with Channel(name, producers=2, ring_capacity=64, blocks_per_class=64, num_classes=2):
        r = ChannelReader(name)
        a, b = ChannelWriter(name), ChannelWriter(name)
        assert a.publish_many("t.a", [bytes([i]) * 8 for i in range(10)]) == 10
        assert b.publish_many("t.b", (memoryview(bytes([i]) * 100) for i in range(5))) == 5
        batches, kept, escaped = [], [], []

        def handler(msgs):
            batches.append([(m.producer, m.seq, m.topic, m.tobytes()) for m in msgs])
            kept.append(msgs[0].retain())
            escaped.append(msgs[1])           # kept without retain(): invalidated

        assert r.poll_batch(handler) == 15
        assert sorted(len(x) for x in batches) == [5, 10]
        for batch in batches:
            producer = batch[0][0]
            assert [seq for _, seq, _, _ in batch] == list(range(1, len(batch) + 1))
            assert all(p == producer for p, _, _, _ in batch)
        assert r.delivered == 15 and r.received == 15 and r.errors == 0
        assert r.retained == 2 and all(m.live for m in kept)
        for m in escaped:
            with pytest.raises(MessageReleased):
                m.payload  # noqa: B018
        for m in kept:
            m.release()
        assert r.retained == 0
        assert r.poll_batch(handler) == 0 and len(batches) == 2
        for e in (a, b, r):
            e.close()


def test_poll_copies_reads_runs_by_topic_and_gives_the_blocks_back(name):
    with Channel(name, producers=2, ring_capacity=64, blocks_per_class=64, num_classes=2):
        r = ChannelReader(name)
        a, b = ChannelWriter(name), ChannelWriter(name)
        free = r.owner_counts()
        a.publish_many("t.a", [bytes([i]) * 8 for i in range(3)])
        a.publish("t.b", b"q" * 60)
        a.publish("t.a", b"z")
        b.publish_many("t.c", [b"c" * 100, b"d" * 2])
        out: list = []
        assert r.poll_copies(out, limit=5) == 5           # the limit counts every lane
        assert r.poll_copies(out) == 2 and r.poll_copies(out) == 0
        runs = [(topic, items, largest) for topic, items, largest in out]
        by_lane_a = [run for run in runs if run[0] != "t.c"]
        assert by_lane_a == [("t.a", [bytes([i]) * 8 for i in range(3)], 8),
                             ("t.b", [b"q" * 60], 60), ("t.a", [b"z"], 1)]
        lane_b = [item for topic, items, _ in runs if topic == "t.c" for item in items]
        assert lane_b == [b"c" * 100, b"d" * 2]
        assert max(largest for topic, _, largest in runs if topic == "t.c") == 100
        assert all(type(item) is bytes for _, items, _ in runs for item in items)
        assert r.delivered == r.received == 7 and r.retained == 0
        assert r.owner_counts() == free != []                # every block is free again
        with pytest.raises(TypeError):
            r.poll_copies(None)                            # type: ignore[arg-type]
        for e in (a, b, r):
            e.close()
        with pytest.raises(ChannelClosed):
            r.poll_copies([])


def test_a_failing_batch_handler_counts_every_message(name):
    with Channel(name, ring_capacity=16, blocks_per_class=16, num_classes=1):
        errors = []
        r = ChannelReader(name, on_error=lambda exc, msgs, sub: errors.append(len(msgs)))
        w = ChannelWriter(name)
        w.publish_many("t", [b"x"] * 6)

        def handler(msgs):
            raise ValueError("boom")

        assert r.poll_batch(handler, limit=4) == 4 and r.poll_batch(handler) == 2
        assert errors == [4, 2] and r.errors == 6 and r.delivered == 0
        assert r.owner_counts() == [[16, 0, 0, 0]]
        w.close()
        r.close()


def test_publish_many_applies_the_policy_to_what_does_not_fit(name):
    with Channel(name, ring_capacity=4, blocks_per_class=8, num_classes=1):
        r = ChannelReader(name)
        got = collect(r)
        raising = ChannelWriter(name, policy="raise")
        with pytest.raises(ChannelFull, match=r"\(4 of 6 published\)"):
            raising.publish_many("t", [b"%d" % i for i in range(6)])
        assert r.poll() == 4 and [p for _, _, p in got] == [b"0", b"1", b"2", b"3"]
        raising.close()
        dropping = ChannelWriter(name, policy="drop")
        assert dropping.publish_many("t", [b"x"] * 6) == 4
        assert dropping.stats().dropped == 2
        assert r.poll() == 4 and r.gaps == 0
        with pytest.raises(TypeError):
            dropping.publish_many("t", [b"ok", 42])
        assert r.poll() == 1  # what came before the bad item was published
        assert r.gaps == 2    # the dropped ones consumed sequence numbers
        dropping.close()
        r.close()


# -- attach or create ----------------------------------------------------------------------
def test_open_or_create_creates_once_and_attaches_after(name):
    first = Channel.open_or_create(name, producers=2, ring_capacity=8, blocks_per_class=4)
    second = Channel.open_or_create(name, producers=2, ring_capacity=8, blocks_per_class=4)
    assert first.created and not second.created and second.layout == first.layout
    with pytest.raises(SegmentExists):
        Channel(name, producers=2)
    with pytest.raises(GeometryMismatch) as info:
        Channel.open_or_create(name, producers=3, ring_capacity=8, blocks_per_class=4)
    exc = info.value
    assert (exc.field, exc.expected, exc.actual) == ("producers", 3, 2)
    assert "producers=2" in str(exc) and "producers=3" in str(exc)
    with pytest.raises(GeometryMismatch, match="blocks_per_class"):
        Channel.open_or_create(name, producers=2, ring_capacity=8)
    second.close()                     # an attached handle does not unlink
    w = ChannelWriter(name)
    w.close()
    first.close()
    with pytest.raises(SegmentError):
        ChannelWriter(name, attach_timeout=0.01)


# -- model ------------------------------------------------------------------------------------
class MultiProducerModel(RuleBasedStateMachine):
    """Producers publishing, claiming, dying and being replaced against one reader; per
    producer order, nothing duplicated, every loss counted, every block back at the end."""

    writers = Bundle("writers")
    SLOTS = 3

    def __init__(self) -> None:
        super().__init__()
        self.name = f"mpm-{uuid.uuid4().hex[:10]}"
        self.channel = Channel(self.name, producers=self.SLOTS, ring_capacity=8,
                               blocks_per_class=6, num_classes=2)
        self.reader = ChannelReader(self.name)
        self.reader.subscribe(">", self._on_msg)
        self.live: dict[int, ChannelWriter] = {}   # writer number -> writer
        self.claims: dict[int, list] = {}          # writer number -> open claims
        self.sent: dict[int, int] = {}             # writer number -> messages committed
        self.seen: dict[int, list[int]] = {}       # writer number -> message numbers seen
        self.last_seq: dict[int, int] = {}         # slot -> last sequence number seen
        self.graveyard: list = []                  # dead writers and their claims
        self.lost = 0
        self.pending_lost = 0                      # claims of dead writers not yet recovered
        self.counter = 0

    def _on_msg(self, m) -> None:
        wid, i = ID.unpack_from(m.payload)
        assert m.seq > self.last_seq.get(m.producer, 0), "sequence went back or repeated"
        self.last_seq[m.producer] = m.seq
        self.seen.setdefault(wid, []).append(i)

    @rule(target=writers)
    def attach(self):
        if len(self.live) + self._dead_slots_held() >= self.SLOTS and not self._dead_slots():
            try:
                ChannelWriter(self.name, policy="raise")
            except RoleTaken:
                return multiple()
            raise AssertionError("a writer got a slot although all were taken")
        w = ChannelWriter(self.name, policy="raise")
        if w.taken_over.startswith("dead pid"):
            self._forget_dead_slot(w.slot)
        self.counter += 1
        self.live[self.counter] = w
        self.claims[self.counter] = []
        self.sent[self.counter] = 0
        return self.counter

    def _dead_slots(self) -> set[int]:
        return {slot for _, slot, _ in self.graveyard if slot is not None}

    def _dead_slots_held(self) -> int:
        return len(self._dead_slots())

    def _forget_dead_slot(self, slot: int) -> None:
        """The dead writer of ``slot`` was recovered (its losses are now counted)."""
        for k, (obj, s, n) in enumerate(self.graveyard):
            if s == slot:
                self.lost += n
                self.pending_lost -= n
                self.graveyard[k] = (obj, None, 0)

    def _message(self, wid: int) -> bytes:
        return ID.pack(wid, self.sent[wid])

    @rule(wid=writers, size=st.sampled_from([16, 100]))
    def publish(self, wid, size):
        w = self.live.get(wid)
        if w is None:
            return
        try:
            w.publish("t.p", self._message(wid).ljust(size, b"."))
        except ChannelFull:
            return
        self.sent[wid] += 1

    @rule(wid=writers, n=st.integers(1, 5))
    def publish_many(self, wid, n):
        w = self.live.get(wid)
        if w is None:
            return
        payloads = [ID.pack(wid, self.sent[wid] + k) for k in range(n)]
        try:
            done = w.publish_many("t.m", payloads)
        except ChannelFull as exc:
            done = int(str(exc).rsplit("(", 1)[1].split(" of ")[0])
        self.sent[wid] += done

    @rule(wid=writers)
    def claim(self, wid):
        w = self.live.get(wid)
        if w is None:
            return
        try:
            c = w.claim("t.c", 16)
        except ChannelFull:
            return
        self.claims[wid].append(c)

    @rule(wid=writers, abort=st.booleans())
    def finish_claim(self, wid, abort):
        if wid not in self.live or not self.claims[wid]:
            return
        c = self.claims[wid][0]
        if abort:
            c.abort()
            self.claims[wid].pop(0)
            return
        c.buffer[:16] = self._message(wid)
        try:
            c.commit()
        except ChannelFull:
            return
        self.claims[wid].pop(0)
        self.sent[wid] += 1

    @rule(limit=st.integers(1, 12))
    def poll(self, limit):
        self.reader.poll(limit)

    @rule()
    def poll_batch(self):
        self.reader.poll_batch(lambda msgs: [self._on_msg(m) for m in msgs], 7)

    @rule(wid=consumes(writers))
    def die(self, wid):
        w = self.live.pop(wid, None)
        if w is None:
            return
        kill_in_place(w, dead_pid_cached())
        claims = self.claims.pop(wid)
        self.graveyard.append(((w, claims), w.slot, len(claims)))
        self.pending_lost += len(claims)

    @precondition(lambda self: self._dead_slots())
    @rule()
    def recover(self):
        done = self.reader.recover_producers()
        for slot in list(self._dead_slots()):
            assert slot in done
            self._forget_dead_slot(slot)

    @invariant()
    def order_kept_and_nothing_invented(self):
        for wid, numbers in self.seen.items():
            assert numbers == list(range(len(numbers))), (wid, numbers)
            assert len(numbers) <= self.sent[wid]

    @invariant()
    def losses_counted(self):
        assert self.reader.lost == self.lost

    def teardown(self):
        try:
            for wid in self.live:
                for c in self.claims[wid]:
                    c.abort()
                self.claims[wid] = []
            while self.reader.poll(1000):
                pass
            for wid, n in self.sent.items():
                assert len(self.seen.get(wid, [])) == n, (wid, n)
            for w in self.live.values():
                w.close()
            self.reader.recover_producers()
            assert self.reader.lost == self.lost + self.pending_lost
            counts = self.reader.owner_counts()
            assert counts == [[6 * self.SLOTS, 0, 0, 0]] * 2, counts
            self.reader.close()
        finally:
            self.channel.close()


MultiProducerModel.TestCase.settings = settings(
    max_examples=40, stateful_step_count=40, deadline=None,
    suppress_health_check=list(HealthCheck))
test_multi_producer_model = MultiProducerModel.TestCase
