"""Shared-memory channels between real processes: exchange, gaps, kill -9 of either side.

Children are ``python -c WORKER`` subprocesses (pid known, killable with SIGKILL); every
wait is bounded, and the fixtures kill leftover children and unlink the segment even
when a test fails. Payloads carry their index and a fill byte derived from it, so a
torn or recycled block would be detected by ``intact()``.
"""

from __future__ import annotations

import json
import os
import select
import signal
import struct
import subprocess
import sys
import time
import uuid

import pytest

from hftalloc.errors import ChannelFull, PeerDead
from hftalloc.shm import Channel, ChannelReader, ChannelWriter
from hftalloc.shm import layout as L
from hftalloc.shm.segment import unlink

pytestmark = pytest.mark.timeout(60)


WORKER = r"""
import json, struct, sys, time
from hftalloc.shm import ChannelReader, ChannelWriter
from hftalloc.errors import PeerDead

args = json.loads(sys.argv[1])
name, mode = args["name"], args["mode"]
HEAD = struct.Struct("<Q")

def payload(i, size):
    return HEAD.pack(i) + bytes([i % 251]) * (size - 8)

def intact(p):
    i = HEAD.unpack_from(p)[0]
    return p[8:] == bytes([i % 251]) * (len(p) - 8), i

def say(**kw):
    print(json.dumps(kw), flush=True)

if mode.startswith("produce"):
    w = ChannelWriter(name, policy=args.get("policy", "block"), timeout=args.get("timeout", 5.0))
    sizes = args.get("sizes", [16, 100, 700])
    start, count = args.get("start", 0), args.get("count", 0)

    def send(i, size):
        while True:  # a dead consumer makes a blocked publish raise PeerDead: wait for the next
            try:
                if i % 2:
                    w.publish("t.data", payload(i, size))
                    return
                c = w.claim("t.data", size)
                if c is None:
                    return
                c.buffer[:] = payload(i, size)
                while True:
                    try:
                        c.commit()
                        return
                    except PeerDead:
                        time.sleep(0.001)
            except PeerDead:
                time.sleep(0.001)

    i = start
    while mode == "produce_forever" or i < start + count:
        send(i, sizes[i % len(sizes)])
        i += 1
        if i == start + args.get("ready_after", -1):
            say(ready=True, pid=__import__("os").getpid())
    st = w.stats()
    if mode == "produce_hold":
        held = [w.claim("t.data", 100), w.claim("t.data", 700)]
        say(published=st.published, dropped=st.dropped, held=len(held))
        time.sleep(60)
    say(published=st.published, dropped=st.dropped, next_seq=w.next_seq)
    if args.get("wait_go"):
        sys.stdin.readline()
        w.publish("t.data", payload(i, 16))
        say(last=True)
    w.close()

elif mode.startswith("consume"):
    r = ChannelReader(name)
    state = {"n": 0, "bad": 0, "seqs": [], "kept": []}
    retain = args.get("retain", False)

    def on_msg(m):
        ok, i = intact(m.payload)
        state["bad"] += not ok
        state["n"] += 1
        state["seqs"].append(m.seq)
        if retain:
            state["kept"].append(m.retain())

    r.subscribe("t.>", on_msg)
    count = args.get("count", 0)
    deadline = time.monotonic() + args.get("timeout", 20)
    while (mode == "consume_forever" or state["n"] < count) and time.monotonic() < deadline:
        if not r.poll():
            time.sleep(0.0001)
        if mode == "consume_forever" and state["n"] >= args.get("ready_after", 1) \
                and not state.get("said"):
            state["said"] = True
            say(ready=True)
    seqs = state["seqs"]
    say(received=state["n"], bad=state["bad"], gaps=r.gaps, taken_over=r.taken_over,
        first=seqs[0] if seqs else None, last=seqs[-1] if seqs else None,
        ordered=all(a < b for a, b in zip(seqs, seqs[1:])), redelivered=r.redelivered)
    if mode == "consume_hold":
        time.sleep(60)
    for m in state["kept"]:
        m.release()
    r.close()
"""

HEAD = struct.Struct("<Q")


def payload(i: int, size: int) -> bytes:
    return HEAD.pack(i) + bytes([i % 251]) * (size - 8)


def intact(p) -> bool:
    i = HEAD.unpack_from(p)[0]
    return p[8:] == bytes([i % 251]) * (len(p) - 8)


class Child:
    """A worker subprocess with bounded line reads."""

    def __init__(self, **args):
        env = dict(os.environ)
        self.proc = subprocess.Popen([sys.executable, "-c", WORKER, json.dumps(args)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
        self.pid = self.proc.pid

    def line(self, timeout: float = 20.0) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"child {self.pid} said nothing within {timeout} s")
            ready, _, _ = select.select([self.proc.stdout], [], [], remaining)
            if ready:
                raw = self.proc.stdout.readline()
                if not raw:
                    raise EOFError(f"child {self.pid} exited with {self.proc.wait(5)}")
                return json.loads(raw)

    def send(self, text: str) -> None:
        self.proc.stdin.write(text.encode() + b"\n")
        self.proc.stdin.flush()

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.pid, signal.SIGKILL)
        self.proc.wait(10)

    def finish(self, timeout: float = 20.0) -> int:
        return self.proc.wait(timeout)


@pytest.fixture
def name():
    value = f"test-{uuid.uuid4().hex[:12]}"
    yield value
    unlink(value)


@pytest.fixture
def children():
    spawned: list[Child] = []

    def spawn(**args) -> Child:
        child = Child(**args)
        spawned.append(child)
        return child

    yield spawn
    for child in spawned:
        child.kill()
        for stream in (child.proc.stdout, child.proc.stdin):
            stream.close()


def consume(reader: ChannelReader, count: int, timeout: float = 20.0) -> list:
    got = []

    def on_msg(m):
        got.append((m.seq, HEAD.unpack_from(m.payload)[0], intact(m.payload)))

    sub = reader.subscribe("t.>", on_msg)
    reader.poll_until(lambda: len(got) >= count, timeout)
    sub.unsubscribe()
    return got


def all_free(endpoint) -> bool:
    return all(row[1:] == [0, 0, 0] for row in endpoint.owner_counts())


# -- exchange ---------------------------------------------------------------------------------
def test_child_producer_to_parent_consumer(name, children):
    n = 20_000
    with Channel(name, ring_capacity=256, blocks_per_class=128, num_classes=5):
        reader = ChannelReader(name)
        child = children(name=name, mode="produce", count=n)
        got = consume(reader, n)
        report = child.line()
        assert child.finish() == 0
        assert report["published"] == n
        assert len(got) == n and all(ok for _, _, ok in got)
        assert [s for s, _, _ in got] == list(range(1, n + 1))
        assert [i for _, i, _ in got] == list(range(n))
        assert reader.gaps == 0 and reader.latency.count == n
        assert all_free(reader)
        reader.close()


def test_parent_producer_to_child_consumer_with_back_pressure(name, children):
    n = 5_000
    with Channel(name, ring_capacity=16, blocks_per_class=8, num_classes=5):
        writer = ChannelWriter(name, policy="block", timeout=20)
        child = children(name=name, mode="consume", count=n)
        for i in range(n):
            writer.publish("t.data", payload(i, (16, 100, 700)[i % 3]))
        report = child.line()
        assert child.finish() == 0
        assert report == {"received": n, "bad": 0, "gaps": 0, "taken_over": "vacant",
                          "first": 1, "last": n, "ordered": True, "redelivered": 0}
        assert writer.stats().waits > 0  # a ring of 16 cannot hold 5000 messages
        writer.close()


def test_gaps_are_detected_across_processes(name, children):
    with Channel(name, ring_capacity=32, blocks_per_class=64, num_classes=5):
        reader = ChannelReader(name)
        child = children(name=name, mode="produce", policy="drop", count=500, wait_go=True)
        report = child.line()
        assert report["published"] == 32 and report["dropped"] == 468
        got = consume(reader, 32)
        assert reader.gaps == 0  # the drops come after the last message received so far
        child.send("go")
        assert child.line() == {"last": True}
        got += consume(reader, 1)
        assert child.finish() == 0
        assert len(got) == 33 and all(ok for _, _, ok in got)
        assert got[-1][0] == 501 and reader.gaps == 468 == reader.stats().dropped
        reader.close()


# -- crashes ----------------------------------------------------------------------------------
def test_killed_consumer_is_detected_and_its_blocks_reclaimed(name, children):
    with Channel(name, ring_capacity=64, blocks_per_class=64, num_classes=5):
        writer = ChannelWriter(name, policy="block", timeout=10)
        child = children(name=name, mode="consume_hold", count=20, retain=True)
        for i in range(20):
            writer.publish("t.data", payload(i, 100))
        assert child.line()["received"] == 20
        assert writer.owner_counts()[1][L.CONSUMER] == 20  # retained by the child
        for i in range(20, 40):
            writer.publish("t.data", payload(i, 100))  # queued for nobody
        child.kill()
        assert writer.peer_alive() is False
        with pytest.raises(PeerDead):  # the class runs dry: the wait notices the dead peer
            for i in range(40, 200):
                writer.publish("t.data", payload(i, 100))
        assert writer.recover_consumer() == (20, 0)
        assert writer.peer() == (0, None)
        rows = writer.owner_counts()
        # seq 21..64 are still queued (the 128 B class ran dry at 20 retained + 44 queued)
        assert rows[1][L.CONSUMER] == 0 and rows[1][L.QUEUED] == 44
        # a new consumer gets everything still queued, intact and in order
        second = children(name=name, mode="consume", count=44)
        report = second.line()
        assert second.finish() == 0
        assert report["received"] == 44 and report["bad"] == 0 and report["ordered"]
        assert report["first"] == 21 and report["last"] == 64
        assert report["taken_over"] == "vacant" and report["gaps"] == 0
        assert all_free(writer)
        writer.close()


def test_new_consumer_takes_over_a_dead_one_while_the_producer_streams(name, children):
    with Channel(name, ring_capacity=128, blocks_per_class=256, num_classes=5) as ch:
        producer = children(name=name, mode="produce_forever", policy="block", timeout=30,
                            ready_after=1)
        assert producer.line()["ready"]
        first = children(name=name, mode="consume_forever", ready_after=2000, timeout=30)
        assert first.line()["ready"]
        first.kill()  # somewhere in the middle of the stream
        second = children(name=name, mode="consume", count=20_000, timeout=30)
        report = second.line(30)
        assert report["taken_over"] == f"dead pid {first.pid}"
        assert report["received"] >= 20_000 and report["bad"] == 0 and report["ordered"]
        assert report["first"] > 2000  # it resumed where the dead consumer stopped
        assert report["gaps"] == 0 and report["redelivered"] <= 1
        assert second.finish() == 0  # it has closed its reader: the role is free
        producer.kill()
        reader = ChannelReader(name)  # third consumer: recovers the second (closed) one
        assert reader.recover_producer() is not None
        while reader.poll(4096):
            pass
        assert all_free(reader), reader.owner_counts()
        reader.close()
        assert ch.layout.ring_capacity == 128


def test_killed_producer_leaves_no_torn_message_and_its_blocks_are_reclaimed(name, children):
    with Channel(name, ring_capacity=64, blocks_per_class=64, num_classes=5):
        reader = ChannelReader(name)
        child = children(name=name, mode="produce_hold", count=30, policy="block")
        assert child.line() == {"published": 30, "dropped": 0, "held": 2}
        child.kill()
        assert reader.peer_alive() is False
        got = consume(reader, 30)
        assert len(got) == 30 and all(ok for _, _, ok in got)
        rows = reader.owner_counts()
        assert rows[1][L.PRODUCER] == 1 and rows[4][L.PRODUCER] == 1  # the two open claims
        assert reader.recover_producer() == 2
        assert all_free(reader)
        # a new producer continues the sequence
        second = children(name=name, mode="produce", count=10, start=30)
        got = consume(reader, 10)
        assert second.line()["published"] == 40 and second.finish() == 0
        assert [s for s, _, _ in got] == list(range(31, 41)) and reader.gaps == 0
        reader.close()


def test_producer_killed_while_streaming_never_tears_a_message(name, children):
    with Channel(name, ring_capacity=64, blocks_per_class=32, num_classes=5):
        reader = ChannelReader(name)
        child = children(name=name, mode="produce_forever", policy="block", timeout=30,
                         ready_after=1)
        assert child.line()["ready"]
        got = consume(reader, 3000)
        child.kill()  # mid-publish, most likely
        got += consume(reader, 10**9, timeout=0.3)  # drain what was committed
        assert all(ok for _, _, ok in got)
        seqs = [s for s, _, _ in got]
        assert seqs == list(range(1, len(seqs) + 1)) and reader.gaps == 0
        reader.recover_producer()
        assert all_free(reader), reader.owner_counts()
        # the writer role is free again
        writer = ChannelWriter(name, policy="raise")
        seq = writer.publish("t.data", payload(len(seqs), 16))
        assert consume(reader, 1)[0][0] == seq == writer.next_seq - 1
        # a message the producer was publishing when it died shows up as one gap at most
        assert reader.gaps == seq - len(seqs) - 1 <= 1
        writer.close()
        reader.close()


def test_wait_is_woken_by_a_producer_in_another_process(name, children):
    with Channel(name, ring_capacity=16, blocks_per_class=16, num_classes=5):
        reader = ChannelReader(name)
        child = children(name=name, mode="produce", count=1)
        assert reader.wait(20, spin_us=0)  # sleeps on the futex until the child publishes
        assert len(consume(reader, 1)) == 1
        assert child.line()["published"] == 1 and child.finish() == 0
        reader.close()


def test_block_policy_without_consumer_times_out_not_peer_dead(name):
    with Channel(name, ring_capacity=2, blocks_per_class=4, num_classes=1):
        writer = ChannelWriter(name, policy="block", timeout=0.05)
        writer.publish("t.data", b"1")
        writer.publish("t.data", b"2")
        with pytest.raises(ChannelFull) as info:
            writer.publish("t.data", b"3")
        assert not isinstance(info.value, PeerDead)
        writer.close()
