"""The transports deliver batches: TCP reads, UDP readiness callbacks, ZeroMQ polls,
shared-memory bridge polls and journal replay reach batch subscribers in batches."""

from __future__ import annotations

import asyncio
import socket
import time
import uuid

import pytest

from hftalloc import MessageBus, loop_factory
from hftalloc.bridge import ShmBridge
from hftalloc.journal import JournalWriter, replay
from hftalloc.net import FeedListener, FixedSize, LengthPrefixed
from hftalloc.net.tcp import TcpConnection
from hftalloc.shm import Channel, ChannelWriter
from hftalloc.shm.segment import unlink

pytestmark = pytest.mark.timeout(60)


def frame(topic: str, payload: bytes) -> bytes:
    return LengthPrefixed().encode(topic, payload)


def run(coro):
    with asyncio.Runner(loop_factory=loop_factory(False)) as runner:
        return runner.run(asyncio.wait_for(coro, 20))


class Batches:
    """Batch subscriber on ``pattern`` plus a per-message one, both recording."""

    def __init__(self, bus, pattern=">"):
        self.batches: list[list[tuple[str, bytes]]] = []
        self.singles: list[tuple[str, bytes]] = []
        bus.subscribe(pattern, self.on_batch, batch=True)
        bus.subscribe(pattern, lambda m: self.singles.append((m.topic, m.tobytes())))

    def on_batch(self, batch):
        self.batches.append([(m.topic, m.tobytes()) for m in batch])

    @property
    def flat(self):
        return [item for b in self.batches for item in b]


class FakeTransport:
    def close(self):
        pass

    abort = close

    def is_closing(self):
        return False


def feed_tcp(listener, chunks):
    """Feed a TcpConnection directly, one chunk per read."""
    async def main():
        proto = TcpConnection(listener)
        proto.connection_made(FakeTransport())
        for chunk in chunks:
            buf = proto.get_buffer(-1)
            buf[:len(chunk)] = chunk
            del buf
            proto.buffer_updated(len(chunk))
            await asyncio.sleep(0)
        proto.connection_lost(None)

    run(main())


def test_the_frames_of_one_tcp_read_are_one_batch_per_topic_run():
    bus = MessageBus()
    rec = Batches(bus)
    listener = FeedListener(bus)
    first = [("md.a", b"1"), ("md.a", b"22"), ("md.a", b"333"), ("md.b", b"x"), ("md.a", b"4")]
    second = [("md.a", bytes([i]) * 10) for i in range(6)]
    feed_tcp(listener, [b"".join(frame(t, p) for t, p in first),
                        b"".join(frame(t, p) for t, p in second)])
    assert rec.singles == rec.flat == first + second
    assert [len(b) for b in rec.batches] == [3, 1, 1, 6]
    stats = listener.stats
    assert stats.frames == 11 and stats.bytes == sum(len(p) for _, p in first + second)
    assert bus.allocator.in_use == 0


def test_a_tcp_read_larger_than_the_pool_commits_in_pieces_and_counts_drops():
    bus = MessageBus(blocks_per_class=3, policy="drop")
    held = []
    batches = []
    bus.subscribe(">", lambda b: batches.append(len(b)), batch=True)
    listener = FeedListener(bus)
    feed_tcp(listener, [b"".join(frame("t", bytes([i])) for i in range(7))])
    assert batches == [3, 3, 1] and listener.stats.frames == 7 and listener.stats.dropped == 0
    # retained messages fill the pool: the frames that find no block are dropped, counted
    bus.subscribe(">", lambda b: held.extend(m.retain() for m in b), batch=True)
    feed_tcp(listener, [b"".join(frame("t", bytes([i])) for i in range(7))])
    assert listener.stats.frames == 10 and listener.stats.dropped == 4
    assert bus.stats().dropped == 4
    for m in held:
        m.release()
    assert bus.allocator.in_use == 0


def test_the_datagrams_of_one_readiness_callback_are_one_batch():
    async def main():
        bus = MessageBus()
        rec = Batches(bus)
        async with FeedListener(bus, udp_batch=64) as listener:
            addr = await listener.start_udp()
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            for i in range(8):  # all queued before the loop runs the reader once
                sock.sendto(frame("u.a", bytes([i]) * 4), addr)
            sock.sendto(frame("u.b", b"other"), addr)
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 10
            while len(rec.singles) < 9:
                assert loop.time() < deadline
                await asyncio.sleep(0.001)
            sock.close()
            return rec, listener.stats

    rec, stats = run(main())
    want = [("u.a", bytes([i]) * 4) for i in range(8)] + [("u.b", b"other")]
    assert rec.singles == rec.flat == want
    assert [len(b) for b in rec.batches] == [8, 1] and stats.frames == 9


def test_udp_fixed_size_records_in_batches():
    async def main():
        bus = MessageBus()
        rec = Batches(bus)
        async with FeedListener(bus, FixedSize(4, "u.fixed")) as listener:
            addr = await listener.start_udp()
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            for i in range(5):
                sock.sendto(bytes([i]) * 4, addr)
            while len(rec.singles) < 5:
                await asyncio.sleep(0.001)
            sock.close()
            return rec

    rec = run(main())
    assert rec.flat == [("u.fixed", bytes([i]) * 4) for i in range(5)]
    assert len(rec.batches) < 5  # at least two datagrams travelled together


def test_zmq_poll_delivers_what_it_drains_in_batches():
    zmq = pytest.importorskip("zmq")
    from hftalloc.net import ZmqBridge

    context = zmq.Context()
    sender_bus, bus = MessageBus(), MessageBus()
    rec = Batches(bus, "md.d.>")
    warm: list[bytes] = []
    bus.subscribe("md.warm", lambda m: warm.append(m.tobytes()))
    out, inn = ZmqBridge(sender_bus, context=context), ZmqBridge(bus, context=context)
    endpoint = out.publish_to("inproc://batches", ["md.>"])
    inn.subscribe_from(endpoint, ["md.>"])
    deadline = time.monotonic() + 10
    while not warm:  # slow joiner: wait until the subscription is through
        assert time.monotonic() < deadline
        sender_bus.publish("md.warm", b"w")
        inn.poll(0.01)
    data = [bytes([i]) * 3 for i in range(10)]
    sender_bus.publish_many("md.d.a", data)
    sender_bus.publish("md.d.b", b"b")
    assert inn.poll_until(lambda: len(rec.singles) == 11, timeout=10)
    assert rec.flat == rec.singles == [("md.d.a", d) for d in data] + [("md.d.b", b"b")]
    assert len(rec.batches) < 11 and inn.stats()["received"] >= 11
    out.close()
    inn.close()
    context.term()


@pytest.fixture
def channel_name():
    name = f"test-{uuid.uuid4().hex[:12]}"
    channel = Channel(name, ring_capacity=64, blocks_per_class=16, num_classes=2)
    yield name
    channel.close()
    unlink(name)


def test_shm_bridge_poll_delivers_runs_of_a_topic_as_batches(channel_name):
    bus = MessageBus(blocks_per_class=8)
    rec = Batches(bus)
    bridge = ShmBridge(bus)
    bridge.receive(channel_name)
    with ChannelWriter(channel_name) as writer:
        for i in range(12):
            writer.publish("md.a", bytes([i]))
        writer.publish("md.b", b"b")
        assert bridge.poll() == 13
    want = [("md.a", bytes([i])) for i in range(12)] + [("md.b", b"b")]
    assert rec.flat == rec.singles == want
    assert [len(b) for b in rec.batches] == [8, 4, 1]  # the local pool holds 8 at a time
    assert bridge.received == 13 and bus.allocator.in_use == 0
    assert bridge.readers[0].retained == 0
    bridge.close()


def test_shm_bridge_batches_keep_the_no_echo_rule(channel_name):
    bus = MessageBus()
    rec = Batches(bus)
    bridge = ShmBridge(bus)
    bridge.forward(channel_name, ["md.>"])
    bridge.receive(channel_name)  # a loop back into the same channel
    bus.publish_many("md.a", [b"1", b"2"])  # forwarded once each
    assert bridge.poll() == 2 and bridge.poll() == 0  # injected, never sent out again
    assert bridge.sent == 2 and bridge.received == 2
    assert rec.flat == [("md.a", b"1"), ("md.a", b"2")] * 2
    assert [len(b) for b in rec.batches] == [2, 2]
    bridge.close()


def test_replay_publishes_runs_of_a_topic_as_batches_with_their_stamps(tmp_path):
    path = str(tmp_path / "j")
    with JournalWriter(path, segment_size=64 * 1024) as w:
        for i in range(20):
            w.append("md.a" if i < 12 or i >= 14 else "md.b", bytes([i]), 1000 + i)
    bus = MessageBus()
    batches = []
    bus.subscribe(">", lambda b: batches.append([(m.topic, m.publish_ns) for m in b]),
                  batch=True)
    stats = replay(path, bus, batch=5)
    assert stats.published == 20 and stats.original_timestamps
    assert [len(b) for b in batches] == [5, 5, 2, 2, 5, 1]
    assert [ts for b in batches for _, ts in b] == [1000 + i for i in range(20)]
    assert {t for t, _ in batches[3]} == {"md.b"}
    batches.clear()
    assert replay(path, bus, batch=None).published == 20 and len(batches) == 20
    batches.clear()
    assert replay(path, bus, batch=4, limit=6).published == 6
    assert [len(b) for b in batches] == [4, 2]
    batches.clear()
    assert replay(path, bus, speed=1e6, batch=64).published == 20
    assert sum(len(b) for b in batches) == 20
    with pytest.raises(ValueError):
        replay(path, bus, batch=0)
