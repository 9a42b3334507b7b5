"""Several producer processes, kill -9 of one, open_or_create races, fork and spawn.

Producers are ``python -c`` subprocesses (killable with SIGKILL); every wait is
bounded and the fixtures unlink the segment even when a test fails.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import struct
import subprocess
import sys
import time
import uuid

import pytest

from hftalloc.errors import EndpointForked, GeometryMismatch, SegmentError
from hftalloc.shm import Channel, ChannelReader, ChannelWriter
from hftalloc.shm.segment import unlink

pytestmark = pytest.mark.timeout(90)
REC = struct.Struct("<QQ")  # producer number, message number

PRODUCER = r"""
import json, os, struct, sys
from hftalloc.shm import ChannelWriter
args = json.loads(sys.argv[1])
REC = struct.Struct("<QQ")
w = ChannelWriter(args["name"], policy="block", timeout=10.0)
print(json.dumps({"slot": w.slot, "pid": os.getpid()}), flush=True)
i = 0
while args["count"] < 0 or i < args["count"]:
    if i % 3 == 2:
        with w.claim("t.c", 64) as c:
            REC.pack_into(c.buffer, 0, args["id"], i)
            c.buffer[16:] = bytes([i % 251]) * 48
    elif i % 3 == 1:
        w.publish_many("t.m", [REC.pack(args["id"], i) + bytes([i % 251]) * 48])
    else:
        w.publish("t.p", REC.pack(args["id"], i) + bytes([i % 251]) * 48)
    i += 1
    if i == args.get("hold_after", -1):
        held = w.claim("t.c", 64)            # claimed, never committed: lost at death
        print(json.dumps({"holding": i}), flush=True)
w.close()
print(json.dumps({"done": i}), flush=True)
"""

OPEN_OR_CREATE = r"""
import json, sys, time
from hftalloc.shm import Channel, ChannelWriter
name, start = sys.argv[1], float(sys.argv[2])
while time.time() < start:
    pass
ch = Channel.open_or_create(name, producers=4, ring_capacity=16, blocks_per_class=16,
                            num_classes=1, timeout=10)
w = ChannelWriter(name)
w.publish("t", b"hello from %d" % w.slot)
print(json.dumps({"created": ch.created, "slot": w.slot}), flush=True)
w.close()
sys.stdin.readline()        # the creator keeps the name until the test is done
ch.close()
"""


@pytest.fixture
def name():
    value = f"mpp-{uuid.uuid4().hex[:12]}"
    yield value
    try:
        unlink(value)
    except SegmentError:
        pass


def spawn(code: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", code, *args], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, env=dict(os.environ))


def line(proc: subprocess.Popen) -> dict:
    raw = proc.stdout.readline()
    assert raw, f"child {proc.pid} exited with {proc.wait(10)}"
    return json.loads(raw)


def check(m, seen: dict) -> None:
    pid, i = REC.unpack_from(m.payload)
    assert m.payload[16:] == bytes([i % 251]) * 48, "torn message"
    assert i == len(seen.setdefault(pid, [])), (pid, i, len(seen[pid]))  # order, no dups
    seen[pid].append(m.producer)


def test_producer_killed_mid_publish_the_others_and_the_reader_go_on(name):
    with Channel(name, producers=3, ring_capacity=64, blocks_per_class=64, num_classes=1):
        r = ChannelReader(name)
        seen: dict[int, list[int]] = {}
        r.subscribe("t.>", lambda m: check(m, seen))
        count = 3000
        procs = [spawn(PRODUCER, json.dumps({"name": name, "id": 0, "count": -1,
                                             "hold_after": 50}))]
        procs += [spawn(PRODUCER, json.dumps({"name": name, "id": k, "count": count}))
                  for k in (1, 2)]
        try:
            slots = [line(p)["slot"] for p in procs]
            assert sorted(slots) == [0, 1, 2]
            victim = slots[0]
            assert line(procs[0]) == {"holding": 50}
            r.poll_until(lambda: len(seen.get(0, ())) > 200, 20)
            os.kill(procs[0].pid, signal.SIGKILL)  # mid-stream, holding one claim
            procs[0].wait(10)
            r.poll_until(lambda: all(len(seen.get(k, ())) == count for k in (1, 2)), 30)
            for p in procs[1:]:
                assert line(p) == {"done": count} and p.wait(10) == 0
            while r.poll(1000):
                pass
            info = {p.slot: p for p in r.producer_info()}
            assert info[victim].alive is False and info[victim].pid == procs[0].pid
            blocks, lost = r.recover_producers()[victim]  # (closed slots are tidied too)
            assert lost >= 1 and blocks >= lost
            assert r.lost == lost
            assert r.owner_counts() == [[192, 0, 0, 0]]  # every block back
            assert [set(seen[k]) for k in (0, 1, 2)] == [{s} for s in slots]  # msg.producer
            # a new producer process takes the recovered slot
            again = spawn(PRODUCER, json.dumps({"name": name, "id": 9, "count": 10}))
            assert line(again)["slot"] == 0
            r.poll_until(lambda: len(seen.get(9, ())) == 10, 20)
            assert again.wait(20) == 0
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                p.wait(10)
        r.close()


def test_open_or_create_race_creates_once_and_everyone_attaches(name):
    start = time.time() + 1.0
    procs = [spawn(OPEN_OR_CREATE, name, str(start)) for _ in range(4)]
    try:
        results = [line(p) for p in procs]
        assert sorted(r["created"] for r in results) == [False, False, False, True]
        assert all(0 <= r["slot"] < 4 for r in results)
        r = ChannelReader(name)
        got = []
        r.subscribe(">", lambda m: got.append(m.tobytes()))
        r.poll()
        assert len(got) == 4
        with pytest.raises(GeometryMismatch, match="ring_capacity"):
            Channel.open_or_create(name, producers=4, ring_capacity=32, blocks_per_class=16,
                                   num_classes=1)
        r.close()
    finally:
        for p in procs:
            p.stdin.write("\n")
            p.stdin.flush()
        for p in procs:
            assert p.wait(20) == 0


# -- multiprocessing start methods ----------------------------------------------------------
def _forked_child(writer: ChannelWriter, name: str, queue) -> None:
    try:
        writer.publish("t", b"from the parent's writer")
    except EndpointForked as exc:
        queue.put(("refused", str(exc), writer.forked_from))
    else:
        queue.put(("published", "", 0))
    own = ChannelWriter(name)
    own.publish("t", b"child")
    queue.put(("own", "", own.slot))
    own.close()


# run by exec() in the spawned child (a test module is not importable there)
SPAWNED_CHILD = """
from hftalloc.shm import Channel, ChannelWriter
ch = Channel.open_or_create(name, producers=2, ring_capacity=8, blocks_per_class=8,
                            num_classes=1)
w = ChannelWriter(name)
w.publish("t", b"spawned")
queue.put(("own", str(ch.created), w.slot))
w.close()
ch.close()
"""


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_start_methods(name, method):
    if method not in multiprocessing.get_all_start_methods():
        pytest.skip(f"no {method} start method here")
    ctx = multiprocessing.get_context(method)
    ch = Channel.open_or_create(name, producers=2, ring_capacity=8, blocks_per_class=8,
                                num_classes=1)
    r = ChannelReader(name)
    got = []
    r.subscribe(">", lambda m: got.append((m.producer, m.tobytes())))
    w = ChannelWriter(name)
    queue = ctx.Queue()
    if method == "fork":
        child = ctx.Process(target=_forked_child, args=(w, name, queue))
    else:
        child = ctx.Process(target=exec, args=(SPAWNED_CHILD, {"name": name, "queue": queue}))
    child.start()
    try:
        events = [queue.get(timeout=30) for _ in range(2 if method == "fork" else 1)]
        child.join(30)
        assert child.exitcode == 0
    finally:
        if child.is_alive():
            child.kill()
    if method == "fork":
        kind, text, parent = events[0]
        assert kind == "refused" and parent == os.getpid() and str(os.getpid()) in text
        assert events[1] == ("own", "", 1)
        expected = [(1, b"child")]
    else:
        assert events[0] == ("own", "False", 1)
        expected = [(1, b"spawned")]
    # the parent's writer still holds its slot and works
    w.publish("t", b"parent")
    r.poll_until(lambda: len(got) == 2, 10)
    assert sorted(got) == sorted([*expected, (0, b"parent")])
    w.close()
    r.close()
    ch.close()
