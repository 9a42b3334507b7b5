"""ZmqBridge over loopback only (tcp://127.0.0.1): topic filters, gaps, malformed frames."""

from __future__ import annotations

import asyncio
import json
import os
import select
import struct
import subprocess
import sys
import time

import pytest

zmq = pytest.importorskip("zmq")

from reference_core import BUS_CORES, core_id  # noqa: E402

from hftalloc import MessageBus, loop_factory  # noqa: E402
from hftalloc.net import ZmqBridge  # noqa: E402
from hftalloc.net.zmq_bridge import HEADER, zmq_prefix  # noqa: E402

pytestmark = pytest.mark.timeout(60)

LOOPBACK = "tcp://127.0.0.1:*"

CORES = BUS_CORES


@pytest.fixture(params=CORES, ids=core_id)
def Bus(request):
    return request.param


@pytest.fixture
def context():
    ctx = zmq.Context()
    yield ctx
    ctx.destroy(linger=0)  # closes sockets a failed test left open


def record(bus, pattern=">"):
    seen = []
    bus.subscribe(pattern, lambda m: seen.append((m.topic, m.tobytes())))
    return seen


def join(sender_bus, receiver, seen, topic="sys.hello"):
    """PUB/SUB slow joiner: publish until the subscriber hears us (bounded)."""
    deadline = time.monotonic() + 10
    while not any(t == topic for t, _ in seen):
        assert time.monotonic() < deadline, "the subscription never connected"
        sender_bus.publish(topic, b"")
        receiver.poll(0.01)
    seen.clear()


def pair(Bus, context, out_patterns, in_patterns, **kw):
    a, b = Bus(blocks_per_class=256), Bus(blocks_per_class=256)
    za, zb = ZmqBridge(a, context=context, **kw), ZmqBridge(b, context=context, **kw)
    endpoint = za.publish_to(LOOPBACK, [*out_patterns, "sys.hello"])
    assert endpoint.startswith("tcp://127.0.0.1:")
    zb.subscribe_from(endpoint, [*in_patterns, "sys.hello"])
    seen = record(b)
    join(a, zb, seen)
    return a, b, za, zb, seen


@pytest.mark.parametrize(("pattern", "prefix"), [
    ("md.quote.AAPL", b"md.quote.AAPL\0"), ("md.quote.*", b"md.quote."), ("md.>", b"md."),
    ("md.*.AAPL", b"md."), ("*.quote", b""), (">", b""),
])
def test_patterns_map_to_zmq_prefixes(pattern, prefix):
    assert zmq_prefix(pattern) == prefix


def test_topics_cross_and_filters_are_exact(Bus, context):
    a, _b, za, zb, seen = pair(Bus, context, ["md.>"], ["md.quote.*", "md.a"])
    sent, received = za.sent, zb.received
    for topic in ["md.quote.A", "md.quote.A.x", "md.a", "md.ab", "md.trade.A", "ord.new.A"]:
        a.publish(topic, topic.encode() * 3)
    assert zb.poll_until(lambda: len(seen) >= 2, timeout=10)
    zb.poll(0.05)
    assert seen == [("md.quote.A", b"md.quote.A" * 3), ("md.a", b"md.a" * 3)]
    # md.quote.A.x passes ZeroMQ's prefix filter (md.quote.) but not the exact match;
    # md.ab does not even pass ZeroMQ's (an exact topic subscribes to "md.a\0")
    assert zb.filtered == 1 and zb.received - received == 2 and zb.gaps == 0
    assert za.sent - sent == 5  # ord.new.A is not forwarded at all
    za.close()
    zb.close()


def test_payloads_of_every_size_arrive_intact(Bus, context):
    a, _b, za, zb, seen = pair(Bus, context, ["t.>"], ["t.>"])
    payloads = [bytes((i * 7 + n) & 255 for i in range(n)) for n in (0, 1, 63, 64, 1000, 8192)]
    for p in payloads:
        a.publish("t.x", p)
    assert zb.poll_until(lambda: len(seen) == len(payloads), timeout=10)
    assert [p for _, p in seen] == payloads
    za.close()
    zb.close()


def test_dropped_frames_are_counted_as_gaps(context):
    a, b = MessageBus(blocks_per_class=64), MessageBus(blocks_per_class=64)
    za = ZmqBridge(a, context=context, hwm=4)
    zb = ZmqBridge(b, context=context, hwm=4)
    endpoint = za.publish_to(LOOPBACK, ["t.>", "sys.hello"])
    zb.subscribe_from(endpoint, ["t.>", "sys.hello"])
    seen = record(b)
    join(a, zb, seen)
    a.publish("t.x", b"first")
    assert zb.poll_until(lambda: len(seen) == 1, timeout=10)
    for i in range(5000):  # nobody reads meanwhile: PUB and SUB queues overflow
        a.publish("t.x", i.to_bytes(4, "little") + bytes(200))
    time.sleep(0.2)
    while zb.poll(0.05):
        pass
    a.publish("t.x", b"last")
    assert zb.poll_until(lambda: seen[-1][1] == b"last", timeout=10)
    assert zb.gaps > 0  # ZeroMQ dropped some; we counted every one of them
    assert len(seen) + zb.gaps == 5002  # first + 5000 + last: each one received or counted
    za.close()
    zb.close()


def test_each_pub_socket_numbers_its_own_frames(context):
    """A topic forwarded to two PUB sockets: each socket's subscribers see every frame
    numbered 1, 2, 3... (no false gaps) and the two streams have distinct publishers."""
    a = MessageBus()
    za = ZmqBridge(a, context=context)
    first = za.publish_to(LOOPBACK, ["md.>", "sys.hello"])
    second = za.publish_to(LOOPBACK, ["md.quote.*", "sys.hello"])
    receivers = []
    for endpoint in (first, second):
        bus = MessageBus()
        bridge = ZmqBridge(bus, context=context)
        bridge.subscribe_from(endpoint, ["md.>", "sys.hello"])
        seen = record(bus)
        join(a, bridge, seen)
        receivers.append((bridge, seen))
    for i in range(10):
        a.publish("md.quote.A", bytes([i]))

    def quotes(seen):  # the second join's hellos reached the first receiver too
        return [p for t, p in seen if t == "md.quote.A"]

    for bridge, seen in receivers:
        assert bridge.poll_until(lambda seen=seen: len(quotes(seen)) == 10, timeout=10)
        assert quotes(seen) == [bytes([i]) for i in range(10)]
        assert bridge.gaps == 0 and bridge.anomalies == 0
    publishers = {publisher for bridge, _ in receivers for publisher, _ in bridge._streams}
    assert publishers == {za.publisher_id, (za.publisher_id + 1) & 0xFFFF_FFFF_FFFF_FFFF}
    for bridge, _ in receivers:
        bridge.close()
    za.close()


def test_malformed_frames_are_counted_and_the_bridge_keeps_working(context):
    bus = MessageBus()
    bridge = ZmqBridge(bus, context=context)
    raw = context.socket(zmq.PUB)
    port = raw.bind_to_random_port("tcp://127.0.0.1")
    bridge.subscribe_from(f"tcp://127.0.0.1:{port}", ">")
    seen = record(bus)
    good = b"t.ok\0" + HEADER.pack(1, 1) + b"payload"
    deadline = time.monotonic() + 10
    while not seen:  # slow joiner
        assert time.monotonic() < deadline
        raw.send(good)
        bridge.poll(0.01)
    while bridge.poll(0.05):  # warm-up frames still in flight
        pass
    bad = [b"no separator at all", b"\0" + bytes(20), b"t.ok\0short", b"a..b\0" + bytes(16),
           b"a.*\0" + bytes(16), b"\xff\xfe\0" + bytes(16), b"x" * 300 + b"\0" + bytes(16)]
    before = len(seen)
    for frame in bad:
        raw.send(frame)
    raw.send(b"t.ok\0" + HEADER.pack(1, 10**6) + b"after")
    assert bridge.poll_until(lambda: seen[-1][1] == b"after", timeout=10)
    assert bridge.malformed == len(bad) and len(seen) == before + 1
    raw.close(linger=0)
    bridge.close()


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_no_echo_between_two_bridged_buses(context, mode):
    a, b = MessageBus(mode=mode), MessageBus(mode=mode)
    za, zb = ZmqBridge(a, context=context), ZmqBridge(b, context=context)
    ea = za.publish_to(LOOPBACK, "x.>")
    eb = zb.publish_to(LOOPBACK, "x.>")
    za.subscribe_from(eb, "x.>")
    zb.subscribe_from(ea, "x.>")
    seen_a, seen_b = record(a), record(b)
    b.subscribe("x.ping", lambda m: b.publish("x.pong", m.tobytes()))

    async def scenario():
        deadline = time.monotonic() + 10
        while not seen_a:  # both directions connected (the pong comes back)
            assert time.monotonic() < deadline
            seen_b.clear()
            a.publish("x.ping", b"?")
            for _ in range(20):
                za.poll(0.005)
                zb.poll(0.005)
                if mode == "async":
                    await a.join()
                    await b.join()
        await asyncio.sleep(0.1)
        za.poll(0.01)
        zb.poll(0.01)
        if mode == "async":
            await a.join()
            await b.join()

    asyncio.run(scenario())
    # every ping reached b once, every pong reached a once; nothing came back around
    pings = [t for t, _ in seen_b if t == "x.ping"]
    assert len(pings) == len([t for t, _ in seen_b if t == "x.pong"])
    assert len([t for t, _ in seen_a if t == "x.ping"]) == za.sent
    assert za.received == zb.sent and zb.received == len(pings)
    za.close()
    zb.close()


def test_run_on_uvloop(context):
    pytest.importorskip("uvloop")
    a, b = MessageBus(), MessageBus(mode="async")
    za, zb = ZmqBridge(a, context=context), ZmqBridge(b, context=context)
    endpoint = za.publish_to(LOOPBACK, ">")
    zb.subscribe_from(endpoint, "t.*")
    seen = []

    async def on_msg(m):
        seen.append(m.tobytes())

    b.subscribe("t.*", on_msg)

    async def main():
        assert type(asyncio.get_running_loop()).__module__.startswith("uvloop")
        pump = asyncio.create_task(zb.run(lambda: len(seen) >= 10))
        deadline = time.monotonic() + 10
        while not seen:
            assert time.monotonic() < deadline
            a.publish("t.w", b"warm")
            await asyncio.sleep(0.01)
        seen.clear()
        for i in range(10):
            a.publish("t.x", bytes([i]))
        await asyncio.wait_for(pump, 10)
        await b.join()

    with asyncio.Runner(loop_factory=loop_factory(True)) as runner:
        runner.run(main())
    assert seen[:10] == [bytes([i]) for i in range(10)]
    za.close()
    zb.close()


CHILD = r"""
import json, sys, time
from hftalloc import MessageBus
from hftalloc.net import ZmqBridge

endpoint_in, count = sys.argv[1], int(sys.argv[2])
bus = MessageBus()
bridge = ZmqBridge(bus)
out = bridge.publish_to("tcp://127.0.0.1:*", "pong.>")
bridge.subscribe_from(endpoint_in, "ping.>")
print(json.dumps({"endpoint": out}), flush=True)
done = []

def on_ping(m):
    bus.publish("pong." + m.topic[5:], m.tobytes()[::-1])
    if m.topic != "ping.warm":
        done.append(1)

bus.subscribe("ping.*", on_ping)
bridge.poll_until(lambda: len(done) >= count, timeout=30)
time.sleep(0.2)
print(json.dumps(bridge.stats()), flush=True)
bridge.close()
"""


def test_two_processes_over_loopback_tcp(context):
    bus = MessageBus()
    bridge = ZmqBridge(bus, context=context)
    endpoint = bridge.publish_to(LOOPBACK, "ping.>")
    env = dict(os.environ)
    count = 200
    child = subprocess.Popen([sys.executable, "-c", CHILD, endpoint, str(count)],
                             stdout=subprocess.PIPE, env=env)
    try:
        ready, _, _ = select.select([child.stdout], [], [], 20)
        assert ready
        bridge.subscribe_from(json.loads(child.stdout.readline())["endpoint"], "pong.*")
        pongs = record(bus, "pong.*")
        deadline = time.monotonic() + 20
        while not pongs:  # both subscriptions connected
            assert time.monotonic() < deadline
            bus.publish("ping.warm", b"w")
            bridge.poll(0.02)
        sent = [struct.pack("<I", n) for n in range(count)]
        for n, p in enumerate(sent):
            bus.publish(f"ping.{n}", p)
        assert bridge.poll_until(lambda: len(pongs) >= count + 1, timeout=20)
        got = {t: p for t, p in pongs if t != "pong.warm"}
        assert got == {f"pong.{n}": p[::-1] for n, p in enumerate(sent)}
        ready, _, _ = select.select([child.stdout], [], [], 20)
        assert ready
        stats = json.loads(child.stdout.readline())
        assert stats["gaps"] == 0 and stats["malformed"] == 0
        assert child.wait(20) == 0
    finally:
        if child.poll() is None:
            child.kill()
        child.wait(10)
        child.stdout.close()
        bridge.close()


# -- untrusted publishers ------------------------------------------------------------------------
def zframe(topic: bytes, publisher: int, seq: int, payload: bytes = b"") -> bytes:
    return topic + b"\0" + HEADER.pack(publisher, seq) + payload


def raw_publisher(context, bridge, patterns=">"):
    """A bare PUB socket the bridge subscribes to, joined (slow joiner handled)."""
    raw = context.socket(zmq.PUB)
    port = raw.bind_to_random_port("tcp://127.0.0.1")
    bridge.subscribe_from(f"tcp://127.0.0.1:{port}", patterns)
    seen = record(bridge.bus)
    deadline = time.monotonic() + 10
    while not seen:
        assert time.monotonic() < deadline, "the subscription never connected"
        raw.send(zframe(b"sys.join", 1, 1))
        bridge.poll(0.01)
    seen.clear()
    return raw, seen


def test_oversized_frames_do_not_stop_run(context):
    bus = MessageBus()  # largest class 8 KiB
    bridge = ZmqBridge(bus, context=context)
    raw, seen = raw_publisher(context, bridge)

    async def main():
        raw.send(zframe(b"t.x", 2, 1, bytes(9000)))  # above the bus's largest class
        raw.send(zframe(b"t", 3, 1, bytes(8300)))
        raw.send(zframe(b"t.done", 4, 1, b"done"))
        await asyncio.wait_for(bridge.run(lambda: any(p == b"done" for _, p in seen)), 10)

    asyncio.run(main())
    assert bridge.too_large == 2 and bridge.errors == 0 and seen == [("t.done", b"done")]
    raw.close(linger=0)
    bridge.close()


def test_a_peer_sending_above_max_message_bytes_is_cut_off_and_counted(context):
    bus = MessageBus()
    bridge = ZmqBridge(bus, context=context)
    assert bridge.max_message_bytes == 4 * bridge.max_frame
    raw, seen = raw_publisher(context, bridge)
    other, _ = raw_publisher(context, bridge)
    raw.send(zframe(b"t.x", 5, 1, bytes(bridge.max_message_bytes)))  # libzmq refuses it
    assert bridge.poll_until(lambda: bridge.disconnects == 1, timeout=10)
    other.send(zframe(b"t.other", 6, 1, b"still here"))
    assert bridge.poll_until(lambda: ("t.other", b"still here") in seen, timeout=10)
    assert bridge.stats()["disconnects"] == 1
    raw.close(linger=0)
    other.close(linger=0)
    bridge.close()


def test_payload_above_the_bus_class_is_counted_as_too_large(context):
    bus = MessageBus()
    bridge = ZmqBridge(bus, context=context)
    seen = record(bus)
    bridge._on_frame(zframe(b"t", 1, 1, bytes(8300)), (("t",),))
    bridge._on_frame(zframe(b"t", 1, 2, b"ok"), (("t",),))
    assert bridge.too_large == 1 and seen == [("t", b"ok")] and bridge.gaps == 0
    bridge.close()


def test_spoofed_sequence_numbers_are_anomalies_not_gaps(context):
    bridge = ZmqBridge(MessageBus(), context=context, max_gap=1000)
    f = ((">",),)
    bridge._on_frame(zframe(b"t.x", 7, 1), f)
    bridge._on_frame(zframe(b"t.x", 7, 2**64 - 1), f)  # spoofed: implausibly far ahead
    assert bridge.gaps == 0 and bridge.anomalies == 1
    bridge._on_frame(zframe(b"t.x", 7, 3), f)  # the real publisher again: backwards
    assert bridge.gaps == 0 and bridge.anomalies == 2
    bridge._on_frame(zframe(b"t.x", 7, 6), f)  # then real loss is counted again
    bridge._on_frame(zframe(b"t.x", 7, 6), f)  # a repeat is an anomaly too
    bridge._on_frame(zframe(b"t.x", 7, 1007), f)  # a jump of exactly max_gap is plausible
    assert bridge.gaps == 2 + 1000 and bridge.anomalies == 3
    bridge._on_frame(zframe(b"t.x", 7, 0), f)  # publishers number from 1
    assert bridge.malformed == 1
    bridge.close()


def test_sequence_state_is_bounded_and_ages(context):
    bridge = ZmqBridge(MessageBus(), context=context, max_streams=100, stream_ttl=0.05)
    f = ((">",),)
    for publisher in range(1000):  # fake sender ids
        bridge._on_frame(zframe(b"t.x", publisher, 5), f)
    assert bridge.streams == 100 and bridge.evicted == 900
    bridge._on_frame(zframe(b"t.x", 999, 6), f)  # most recently seen: still tracked
    assert bridge.gaps == 0 and bridge.anomalies == 0
    time.sleep(0.1)
    bridge.poll(0)  # ageing runs at each poll
    assert bridge.streams == 0 and bridge.expired == 100
    assert bridge.stats()["expired"] == 100
    bridge.close()


def test_multipart_messages_are_dropped_whole(context):
    bus = MessageBus()
    bridge = ZmqBridge(bus, context=context)
    raw, seen = raw_publisher(context, bridge)
    good = zframe(b"t.ok", 9, 1, b"good")
    raw.send_multipart([zframe(b"t.a", 9, 1, b"part one"), good])  # no part is delivered
    raw.send_multipart([b"x", b"y", b"z"])
    raw.send(zframe(b"t.ok", 9, 2, b"after"))
    assert bridge.poll_until(lambda: len(seen) == 1, timeout=10)
    assert seen == [("t.ok", b"after")] and bridge.multipart == 2 and bridge.malformed == 0
    raw.close(linger=0)
    bridge.close()


def test_inbound_raise_policy_is_counted_not_raised(context):
    bus = MessageBus(blocks_per_class=1, policy="raise")
    bridge = ZmqBridge(bus, context=context)
    kept = []
    bus.subscribe(">", lambda m: kept.append(m.retain()))
    f = ((">",),)
    for seq in (1, 2, 3):
        bridge._on_frame(zframe(b"t.x", 1, seq, b"p"), f)
    assert len(kept) == 1 and bridge.in_rejected == 2 and bridge.received == 1
    kept[0].release()
    bridge.close()


def test_filtered_topics_do_not_use_up_the_topic_table(context):
    bus = MessageBus()
    bridge = ZmqBridge(bus, context=context, max_topics=2)
    seen = record(bus)
    f = (("md", ">"),)
    for i in range(100):  # topics the patterns do not admit never take a place
        bridge._on_frame(zframe(b"junk.%d" % i, 1, 1), f)
    for topic in (b"md.a", b"md.b", b"md.c", b"md.a"):
        bridge._on_frame(zframe(topic, 1, 1, b"x"), f)
    assert [t for t, _ in seen] == ["md.a", "md.b", "md.a"]
    assert bridge.filtered == 100 and bridge.topic_limit == 1
    bridge.close()
