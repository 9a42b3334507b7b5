"""ShmBridge: MessageBus <-> shared-memory channels (in one process and across two)."""

from __future__ import annotations

import asyncio
import json
import os
import select
import subprocess
import sys
import uuid

import pytest
from reference_core import BUS_CORES, core_id

from hftalloc import MessageAllocator, MessageBus
from hftalloc.bridge import ShmBridge
from hftalloc.shm import Channel, ChannelReader, ChannelWriter
from hftalloc.shm.segment import unlink

pytestmark = pytest.mark.timeout(60)

CORES = BUS_CORES


@pytest.fixture(params=CORES, ids=core_id)
def Bus(request):
    return request.param


@pytest.fixture
def names():
    made = []

    def make(n=1, **geometry):
        geometry = {"ring_capacity": 64, "blocks_per_class": 64, "num_classes": 4, **geometry}
        out = []
        for _ in range(n):
            name = f"test-{uuid.uuid4().hex[:12]}"
            made.append(Channel(name, **geometry))
            out.append(name)
        return out

    yield make
    for channel in made:
        channel.close()
        unlink(channel.name)


def record(bus, pattern=">"):
    seen = []
    bus.subscribe(pattern, lambda m: seen.append((m.topic, m.tobytes())))
    return seen


def test_forwarded_topics_arrive_on_the_other_bus(Bus, names):
    (ab,) = names()
    a, b = Bus(blocks_per_class=64), Bus(blocks_per_class=64)
    out, inn = ShmBridge(a), ShmBridge(b)
    out.forward(ab, ["md.quote.*", "md.trade.>"])
    inn.receive(ab)
    seen = record(b)
    a.subscribe(">", lambda m: None)  # local traffic that is not forwarded
    for topic in ["md.quote.A", "md.book.A", "md.trade.A.x", "ord.new.A", "md.quote.B"]:
        a.publish(topic, topic.encode())
    assert inn.poll() == 3
    assert seen == [(t, t.encode()) for t in ["md.quote.A", "md.trade.A.x", "md.quote.B"]]
    assert out.sent == 3 and inn.received == 3
    assert b.stats().published == 3 and b.allocator.in_use == 0
    out.close()
    inn.close()


def test_a_topic_matching_several_patterns_is_sent_once(Bus, names):
    (ab,) = names()
    a, b = Bus(), Bus()
    out, inn = ShmBridge(a), ShmBridge(b)
    out.forward(ab, ["md.>", "md.quote.*", "md.quote.A"])
    inn.receive(ab)
    seen = record(b)
    a.publish("md.quote.A", b"1")
    inn.poll()
    assert seen == [("md.quote.A", b"1")] and out.sent == 1
    out.close()
    inn.close()


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_no_echo_between_two_buses_exchanging_the_same_topics(Bus, names, mode):
    ab, ba = names(2)
    a, b = Bus(mode=mode), Bus(mode=mode)
    bridge_a, bridge_b = ShmBridge(a), ShmBridge(b)
    bridge_a.forward(ab, "x.>")
    bridge_b.receive(ab)
    bridge_b.forward(ba, "x.>")
    bridge_a.receive(ba)
    seen_a, seen_b = record(a), record(b)
    b.subscribe("x.ping", lambda m: b.publish("x.pong", m.tobytes() + b"!"))

    async def settle():
        for _ in range(5):
            bridge_a.poll()
            bridge_b.poll()
            if mode == "async":
                await a.join()
                await b.join()

    async def scenario():
        a.publish("x.ping", b"hi")
        await settle()

    asyncio.run(scenario())
    assert seen_a == [("x.ping", b"hi"), ("x.pong", b"hi!")]
    assert seen_b == [("x.ping", b"hi"), ("x.pong", b"hi!")]
    assert bridge_a.sent == 1 and bridge_b.sent == 1  # the injected ping was not sent back
    assert bridge_a.received == 1 and bridge_b.received == 1
    for bridge in (bridge_a, bridge_b):
        bridge.close()


def test_inbound_drop_policy_is_counted(names):
    (ab,) = names()
    writer = ChannelWriter(ab)
    local = MessageBus(blocks_per_class=2, policy="drop")
    bridge = ShmBridge(local)
    bridge.receive(ab)
    kept = []
    local.subscribe(">", lambda m: kept.append(m.retain()))
    for i in range(5):
        writer.publish("t.a", bytes([i]))
    assert bridge.poll() == 5
    assert len(kept) == 2 and bridge.in_dropped == 3 and local.stats().dropped == 3
    for m in kept:
        m.release()
    writer.close()
    bridge.close()


def test_full_outbound_channel_reaches_the_bus_error_hook(names):
    (ab,) = names(ring_capacity=2)
    errors = []
    local = MessageBus(on_error=lambda exc, msg, sub: errors.append(type(exc).__name__))
    bridge = ShmBridge(local, policy="raise")
    bridge.forward(ab, ">")
    for _ in range(3):
        local.publish("t.a", b"x")
    assert errors == ["ChannelFull"] and bridge.sent == 2
    reader = ChannelReader(ab)
    assert reader.poll() == 2
    reader.close()
    bridge.close()


def test_bridge_rejects_wrong_endpoints(names):
    (ab,) = names()
    bridge = ShmBridge(MessageBus())
    reader = ChannelReader(ab)
    with pytest.raises(TypeError):
        bridge.forward(reader, ">")
    with pytest.raises(TypeError):
        bridge.receive(object())
    with pytest.raises(ValueError):
        bridge.forward(ab, [])
    reader.close()
    bridge.close()


CHILD = r"""
import asyncio, json, sys
from hftalloc import MessageBus, run
from hftalloc.bridge import ShmBridge

inbound, outbound, count = sys.argv[1], sys.argv[2], int(sys.argv[3])

async def main():
    bus = MessageBus(mode="async", policy="block")
    bridge = ShmBridge(bus, timeout=10)
    bridge.receive(inbound)
    bridge.forward(outbound, "pong.>")
    done = []

    async def on_ping(msg):
        n = int(msg.topic.split(".")[1])
        await bus.apublish(f"pong.{n}", msg.tobytes()[::-1])
        done.append(n)

    bus.subscribe("ping.*", on_ping)
    await bridge.run(lambda: len(done) >= count)
    await bus.join()
    print(json.dumps({"pings": len(done), **bridge.stats(), "channels": None}), flush=True)
    bridge.close()
    await bus.aclose()

run(main())
"""


def test_two_processes_ping_pong_through_their_buses(names):
    # rings that hold every message in flight: with smaller ones both sides can block on
    # each other's full channel (the documented cyclic-blocking limit, ended by timeouts)
    count = 300
    to_child, to_parent = names(2, ring_capacity=512, blocks_per_class=512)
    env = dict(os.environ)
    child = subprocess.Popen([sys.executable, "-c", CHILD, to_child, to_parent, str(count)],
                             stdout=subprocess.PIPE, env=env)
    try:
        bus = MessageBus()
        bridge = ShmBridge(bus, timeout=10)
        bridge.forward(to_child, "ping.*")
        pongs = record(bus, "pong.*")
        bridge.receive(to_parent)
        for n in range(count):
            bus.publish(f"ping.{n}", f"payload-{n}".encode())
            bridge.poll()
        assert bridge.poll_until(lambda: len(pongs) == count, timeout=30)
        assert sorted(pongs) == sorted((f"pong.{n}", f"payload-{n}".encode()[::-1])
                                       for n in range(count))
        ready, _, _ = select.select([child.stdout], [], [], 20)
        assert ready
        report = json.loads(child.stdout.readline())
        assert report["pings"] == count and report["received"] == count
        assert report["sent"] == count and report["in_dropped"] == 0
        assert child.wait(20) == 0
        bridge.close()
    finally:
        if child.poll() is None:
            child.kill()
        child.wait(10)
        child.stdout.close()


@pytest.mark.parametrize("policy", ["raise", "drop"])
def test_inbound_runs_refused_by_a_full_local_bus_are_counted_exactly(names, policy):
    (ab,) = names()
    writer = ChannelWriter(ab)
    local = MessageBus(blocks_per_class=2, policy=policy)
    bridge = ShmBridge(local)
    bridge.receive(ab)
    kept, batches = [], []
    local.subscribe(">", lambda m: kept.append(m.retain()))
    local.subscribe(">", lambda b: batches.append([bytes(m.payload) for m in b]), batch=True)
    for i in range(5):
        writer.publish("t.a", bytes([i]))
    assert bridge.poll() == 5
    refused = bridge.in_rejected if policy == "raise" else bridge.in_dropped
    assert (bridge.received, refused, len(kept)) == (2, 3, 2)
    assert batches == [[b"\x00", b"\x01"]]
    for m in kept:
        m.release()
    writer.close()
    bridge.close()


def test_inbound_topics_keep_their_order_across_runs(names):
    (ab,) = names()
    writer = ChannelWriter(ab)
    local = MessageBus(blocks_per_class=64)
    bridge = ShmBridge(local)
    bridge.receive(ab)
    seen = record(local)
    batches = []
    local.subscribe(">", lambda b: batches.append((b.topic, len(b))), batch=True)
    sent = [("t.a", b"1"), ("t.a", b"2"), ("t.b", b"3"), ("t.a", b"4"), ("t.b", b"5")]
    for topic, data in sent:
        writer.publish(topic, data)
    assert bridge.poll() == 5
    assert seen == sent and batches == [("t.a", 2), ("t.b", 1), ("t.a", 1), ("t.b", 1)]
    assert bridge.received == 5
    writer.close()
    bridge.close()


def test_whatever_the_local_bus_refuses_is_counted_and_poll_never_raises(Bus, names):
    (ab,) = names()
    writer = ChannelWriter(ab)
    local = Bus(MessageAllocator(1, num_classes=2), policy="raise")  # classes 64 and 128 B
    bridge = ShmBridge(local)
    bridge.receive(ab)
    kept = []
    local.subscribe(">", lambda m: kept.append(m.retain()))
    writer.publish("t.a", b"first")  # takes the only 64 B block
    writer.publish("t.a", b"full")  # raise policy: BusFull inside the bridge
    writer.publish("t.a", bytes(300))  # above the local bus's largest class
    assert bridge.poll() == 3
    assert bridge.received == 1 and bridge.in_rejected == 1 and bridge.in_too_large == 1
    kept.pop().release()
    local.close()
    writer.publish("t.a", b"after close")
    assert bridge.poll() == 1 and bridge.in_closed == 1
    assert bridge.stats()["in_closed"] == 1
    writer.close()
    bridge.close()


class Inbound(bytearray):
    """A stand-in for a channel message (a buffer with a topic)."""

    def __init__(self, topic, data):
        super().__init__(data)
        self.topic = topic


def test_invalid_inbound_topics_are_counted(Bus):
    bus = Bus()
    bridge = ShmBridge(bus)
    seen = record(bus)
    for topic in ["a..b", "md.*", "md.>", "", 7, "ok.topic"]:
        bridge._on_channel_message(Inbound(topic, b"x"))
    assert seen == [("ok.topic", b"x")] and bridge.in_invalid == 5
    bridge.close()
