"""TCP/UDP gateways (loopback only) on asyncio and uvloop: framing, zero-copy reads,
malformed input, bus policies, and the writer."""

from __future__ import annotations

import asyncio
import socket
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hftalloc import MessageBus, loop_factory
from hftalloc.errors import FrameError, SizeTooLarge
from hftalloc.net import BusWriter, FeedListener, FixedSize, LengthPrefixed
from hftalloc.net.framing import HEADER
from hftalloc.net.tcp import TcpConnection

pytestmark = pytest.mark.timeout(60)

LOOPS = ["asyncio"] + (["uvloop"] if loop_factory(None) is not asyncio.new_event_loop else [])


def frame(topic: str, payload: bytes) -> bytes:
    return LengthPrefixed().encode(topic, payload)


def run(coro, loop_kind="asyncio"):
    with asyncio.Runner(loop_factory=loop_factory(loop_kind == "uvloop")) as runner:
        return runner.run(asyncio.wait_for(coro, 20))


def record(bus, pattern=">"):
    seen = []
    bus.subscribe(pattern, lambda m: seen.append((m.topic, m.tobytes())))
    return seen


async def until(predicate, timeout=10.0):
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        assert loop.time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.001)


class FakeTransport:
    def __init__(self):
        self.closed = self.paused = False

    def close(self):
        self.closed = True

    def abort(self):
        self.closed = True

    def is_closing(self):
        return self.closed

    def pause_reading(self):
        self.paused = True

    def resume_reading(self):
        self.paused = False


# -- the TCP parser, fed directly -----------------------------------------------------------------
messages = st.lists(st.tuples(st.sampled_from(["md.q.A", "md.t.B", "x"]),
                              st.binary(max_size=700)), min_size=1, max_size=12)


@settings(max_examples=40)
@given(msgs=messages, cuts=st.lists(st.integers(1, 300), max_size=80),
       scratch=st.sampled_from([300, 1024, 65536]))
def test_any_chunking_of_the_stream_yields_the_same_messages(msgs, cuts, scratch):
    stream = b"".join(frame(t, p) for t, p in msgs)

    async def feed():
        bus = MessageBus(blocks_per_class=64)
        seen = record(bus)
        listener = FeedListener(bus, scratch_size=scratch)
        proto = TcpConnection(listener)
        proto.connection_made(FakeTransport())
        pos, i = 0, 0
        while pos < len(stream):
            buf = proto.get_buffer(-1)
            n = min(len(buf), len(stream) - pos, cuts[i % len(cuts)] if cuts else len(buf))
            buf[:n] = stream[pos:pos + n]
            del buf
            proto.buffer_updated(n)
            pos += n
            i += 1
            await asyncio.sleep(0)
        await asyncio.sleep(0)
        proto.connection_lost(None)
        return seen, listener.stats, bus

    seen, stats, bus = run(feed())
    assert seen == msgs
    assert stats.frames == len(msgs) and stats.malformed == 0
    assert stats.bytes == sum(len(p) for _, p in msgs)
    assert bus.allocator.in_use == 0


def test_long_payloads_are_read_straight_into_the_block():
    async def feed():
        bus = MessageBus()
        seen = record(bus)
        listener = FeedListener(bus, scratch_size=512)
        proto = TcpConnection(listener)
        proto.connection_made(FakeTransport())
        stream = frame("big.one", bytes(range(256)) * 24)  # 6 KiB payload
        buf = proto.get_buffer(-1)
        buf[:300] = stream[:300]
        del buf
        proto.buffer_updated(300)
        direct = proto.get_buffer(-1)  # the rest goes into the claimed pool block
        assert len(direct) == len(stream) - 300
        direct[:] = stream[300:]
        del direct
        proto.buffer_updated(len(stream) - 300)
        await asyncio.sleep(0)
        return seen, listener.stats

    seen, stats = run(feed())
    assert seen == [("big.one", bytes(range(256)) * 24)] and stats.direct_reads == 1


def test_truncated_stream_counts_and_returns_the_block():
    async def feed():
        bus = MessageBus()
        listener = FeedListener(bus)
        proto = TcpConnection(listener)
        proto.connection_made(FakeTransport())
        data = frame("t.x", bytes(100))[:50]
        buf = proto.get_buffer(-1)
        buf[:50] = data
        del buf
        proto.buffer_updated(50)
        proto.connection_lost(None)
        return listener.stats, bus

    stats, bus = run(feed())
    assert stats.malformed == 1 and stats.frames == 0 and bus.stats().aborted == 1


# -- TCP over loopback ----------------------------------------------------------------------------
@pytest.mark.parametrize("loop_kind", LOOPS)
def test_tcp_frames_reach_the_bus_in_order(loop_kind):
    async def main():
        bus = MessageBus()
        seen = record(bus)
        async with FeedListener(bus, scratch_size=1024) as listener:
            host, port = await listener.start_tcp()
            assert host == "127.0.0.1"
            _, writer = await asyncio.open_connection(host, port)
            sent = [(f"md.{i % 3}", bytes([i % 256]) * (i * 37 % 5000)) for i in range(300)]
            for topic, payload in sent:
                writer.write(frame(topic, payload))
            await writer.drain()
            await until(lambda: len(seen) == len(sent))
            writer.close()
            await writer.wait_closed()
            return seen, sent, listener.stats

    seen, sent, stats = run(main(), loop_kind)
    assert seen == sent and stats.frames == 300 and stats.connections == 1
    assert stats.direct_reads > 0  # payloads above the 1 KiB scratch were read in place


@pytest.mark.parametrize("loop_kind", LOOPS)
def test_malformed_tcp_frames(loop_kind):
    async def main():
        bus = MessageBus()
        seen = record(bus)
        async with FeedListener(bus) as listener:
            host, port = await listener.start_tcp()
            # a bad topic is skipped; the connection survives
            reader, writer = await asyncio.open_connection(host, port)
            bad_topic = HEADER.pack(3, 4) + b"a..b" + b"xyz"
            writer.write(bad_topic + frame("t.ok", b"after bad topic"))
            await until(lambda: len(seen) == 1)
            assert listener.stats.malformed == 1 and not reader.at_eof()
            # an impossible length closes the connection cleanly
            writer.write(HEADER.pack(10**9, 3) + b"t.x")
            assert await asyncio.wait_for(reader.read(), 5) == b""
            assert listener.stats.closed_on_error == 1
            writer.close()
            # the listener still serves new connections
            _, writer2 = await asyncio.open_connection(host, port)
            writer2.write(frame("t.ok", b"new connection"))
            await until(lambda: len(seen) == 2)
            writer2.close()
            return seen, listener.stats

    seen, stats = run(main(), loop_kind)
    assert [p for _, p in seen] == [b"after bad topic", b"new connection"]
    assert stats.malformed == 2 and stats.connections == 2


def test_fixed_size_records_over_tcp():
    async def main():
        bus = MessageBus()
        seen = record(bus)
        async with FeedListener(bus, FixedSize(24, "md.fixed")) as listener:
            host, port = await listener.start_tcp()
            _, writer = await asyncio.open_connection(host, port)
            records = [struct.pack("<qqq", i, -i, i * i) for i in range(100)]
            stream = b"".join(records)
            for i in range(0, len(stream), 7):  # records split across writes
                writer.write(stream[i:i + 7])
            await writer.drain()
            await until(lambda: len(seen) == 100)
            writer.write(b"partial")
            writer.close()
            await until(lambda: listener.stats.malformed == 1)
            return seen, records

    seen, records = run(main())
    assert seen == [("md.fixed", r) for r in records]


def test_drop_policy_skips_frames_when_the_bus_is_full():
    async def main():
        bus = MessageBus(blocks_per_class=2, policy="drop")
        kept, order = [], []
        bus.subscribe(">", lambda m: (order.append(m.tobytes()), kept.append(m.retain())))
        async with FeedListener(bus) as listener:
            host, port = await listener.start_tcp()
            _, writer = await asyncio.open_connection(host, port)
            for i in range(5):
                writer.write(frame("t.x", bytes([i]) * 10))
            await until(lambda: listener.stats.dropped == 3)
            for m in kept:
                m.release()
            writer.write(frame("t.x", b"later"))
            await until(lambda: len(kept) == 3)
            kept[-1].release()
            writer.close()
            return order, listener.stats

    order, stats = run(main())
    assert order == [bytes([0]) * 10, bytes([1]) * 10, b"later"]
    assert stats.frames == 3 and stats.dropped == 3 and stats.malformed == 0


@pytest.mark.parametrize("loop_kind", LOOPS)
def test_block_policy_pauses_the_connection_until_a_block_is_free(loop_kind):
    async def main():
        bus = MessageBus(mode="async", policy="block", blocks_per_class=2)
        kept, order = [], []

        async def keep(m):
            order.append(m.tobytes())
            kept.append(m.retain())

        bus.subscribe(">", keep)
        async with FeedListener(bus, block_timeout=10) as listener:
            host, port = await listener.start_tcp()
            _, writer = await asyncio.open_connection(host, port)
            for i in range(6):
                writer.write(frame("t.x", bytes([i])))
            await until(lambda: listener.stats.blocked >= 1 and len(kept) == 2)
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 10
            while listener.stats.frames < 6:  # each release lets the paused feed go on
                assert loop.time() < deadline
                if kept:
                    kept.pop(0).release()
                await asyncio.sleep(0.001)
            await bus.join()
            for m in kept:
                m.release()
            writer.close()
            return order, listener.stats

    order, stats = run(main(), loop_kind)
    assert order == [bytes([i]) for i in range(6)]
    assert stats.frames == 6 and stats.dropped == 0 and stats.rejected == 0
    assert stats.blocked >= 1


# -- UDP ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("loop_kind", LOOPS)
def test_udp_datagrams_and_malformed_ones(loop_kind):
    async def main():
        bus = MessageBus()
        seen = record(bus)
        async with FeedListener(bus) as listener:
            addr = await listener.start_udp()
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            good = [frame("u.a", b"one"), frame("u.b", bytes(range(200))), frame("u.c", b"")]
            bad = [b"abc", HEADER.pack(5, 3) + b"u.a" + b"toolongpayload",
                   HEADER.pack(50, 3) + b"u.a" + b"short", HEADER.pack(1, 4) + b"a..b" + b"x",
                   HEADER.pack(10**9, 3) + b"u.a", HEADER.pack(1, 0) + b"x"]
            for datagram in [good[0], *bad, good[1], good[2]]:
                sock.sendto(datagram, addr)
            await until(lambda: len(seen) == 3 and listener.stats.malformed == len(bad))
            sock.close()
            return seen, listener.stats

    seen, stats = run(main(), loop_kind)
    assert seen == [("u.a", b"one"), ("u.b", bytes(range(200))), ("u.c", b"")]
    assert stats.frames == 3


def test_udp_fixed_size_and_drop_when_full():
    async def main():
        bus = MessageBus(blocks_per_class=1, policy="drop")
        kept = []
        bus.subscribe(">", lambda m: kept.append(m.retain()))
        async with FeedListener(bus, FixedSize(8, "u.fixed")) as listener:
            addr = await listener.start_udp()
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.sendto(b"12345678", addr)
            await until(lambda: len(kept) == 1)
            sock.sendto(b"abcdefgh", addr)  # the only block is retained: dropped
            await until(lambda: listener.stats.dropped == 1)
            kept[0].release()
            sock.sendto(b"short", addr)  # not 8 bytes: malformed, the block comes back
            sock.sendto(b"ABCDEFGH", addr)
            await until(lambda: len(kept) == 2)
            sock.close()
            return [m.tobytes() for m in kept[1:]], kept, listener.stats

    payloads, kept, stats = run(main())
    assert payloads == [b"ABCDEFGH"] and stats.frames == 2 and stats.malformed == 1
    kept[1].release()


# -- the writer -----------------------------------------------------------------------------------
@pytest.mark.parametrize("loop_kind", LOOPS)
def test_bus_writer_to_feed_listener_over_tcp_and_udp(loop_kind):
    async def main():
        a, b = MessageBus(), MessageBus()
        seen = record(b)
        async with FeedListener(b) as listener:
            tcp = await listener.start_tcp()
            udp = await listener.start_udp()
            over_tcp = BusWriter(a, ["md.>"])
            await over_tcp.connect_tcp(*tcp)
            over_udp = BusWriter(a, "ord.*")
            await over_udp.open_udp(*udp)
            a.publish("md.q.A", b"quote")
            a.publish("ord.new", b"order")
            a.publish("other.x", b"not forwarded")
            await until(lambda: len(seen) == 2)
            over_tcp.close()
            over_udp.close()
            return sorted(seen), over_tcp.stats, over_udp.stats

    seen, tcp_stats, udp_stats = run(main(), loop_kind)
    assert seen == [("md.q.A", b"quote"), ("ord.new", b"order")]
    assert tcp_stats.frames == 1 and udp_stats.frames == 1


def test_encoders_validate():
    with pytest.raises(FrameError):
        FixedSize(4, "t.x").encode("t.x", b"12345")
    with pytest.raises(ValueError):
        FixedSize(0, "t.x")
    assert LengthPrefixed().encode("t", b"ab") == HEADER.pack(2, 1) + b"tab"


# -- resource limits: what one peer may hold ---------------------------------------------------
async def stalled_client(host, port, length=8000, topic=b"t.x"):
    """Announce a ``length``-byte frame, send one payload byte, then stall."""
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(HEADER.pack(length, len(topic)) + topic + b"\x01")
    await writer.drain()
    return reader, writer


@pytest.mark.parametrize("loop_kind", LOOPS)
def test_stalled_partial_frames_neither_pin_the_pool_nor_live_forever(loop_kind):
    async def main():
        bus = MessageBus(blocks_per_class=4, policy="drop")
        seen = record(bus)
        async with FeedListener(bus, frame_timeout=0.3) as listener:
            host, port = await listener.start_tcp()
            stalled = [await stalled_client(host, port) for _ in range(4)]
            await until(lambda: listener.stats.partial_blocks == 1
                        and listener.stats.buffered_partial == 3)
            # one 8 KiB block is held by a partial frame: the other three stay for real frames
            assert bus.allocator.in_use == 1
            _, writer = await asyncio.open_connection(host, port)
            sent = [bytes([i]) * 8000 for i in range(10)]
            for payload in sent:
                writer.write(frame("t.ok", payload))
            await until(lambda: len(seen) == 10)
            # every stalled connection is closed and its block given back
            await until(lambda: listener.stats.timeouts == 4)
            for reader, w in stalled:
                assert await asyncio.wait_for(reader.read(), 5) == b""
                w.close()
            await until(lambda: listener.stats.partial_blocks == 0)
            writer.close()
            return seen, sent, listener.stats, bus

    seen, sent, stats, bus = run(main(), loop_kind)
    assert [p for _, p in seen] == sent
    assert stats.dropped == 0 and stats.malformed == 0 and stats.frames == 10
    assert bus.allocator.in_use == 0 and bus.stats().aborted >= 1


def test_partial_share_zero_keeps_partial_frames_out_of_the_pool():
    async def main():
        bus = MessageBus()
        seen = record(bus)
        async with FeedListener(bus, partial_share=0) as listener:
            host, port = await listener.start_tcp()
            _, writer = await asyncio.open_connection(host, port)
            data = frame("t.big", bytes(range(256)) * 30)
            writer.write(data[:100])
            await until(lambda: listener.stats.buffered_partial == 1)
            assert bus.allocator.in_use == 0 and listener.stats.partial_blocks == 0
            writer.write(data[100:])
            await until(lambda: len(seen) == 1)
            writer.close()
            return seen, listener.stats

    seen, stats = run(main())
    assert seen == [("t.big", bytes(range(256)) * 30)] and stats.direct_reads == 0


@pytest.mark.parametrize("loop_kind", LOOPS)
def test_connections_beyond_the_limit_are_refused_and_counted(loop_kind):
    async def main():
        bus = MessageBus()
        seen = record(bus)
        async with FeedListener(bus, max_connections=3) as listener:
            host, port = await listener.start_tcp()
            clients = [await asyncio.open_connection(host, port) for _ in range(5)]
            await until(lambda: listener.stats.connections + listener.stats.refused == 5)
            assert listener.stats.refused == 2 and listener.stats.open_connections == 3
            for _, w in clients:
                w.close()
            await until(lambda: listener.stats.open_connections == 0)
            _, writer = await asyncio.open_connection(host, port)  # room again
            writer.write(frame("t.x", b"after"))
            await until(lambda: len(seen) == 1)
            writer.close()
            return listener.stats

    stats = run(main(), loop_kind)
    assert stats.connections == 4 and stats.refused == 2 and stats.malformed == 0


def test_connection_buffers_are_allocated_on_the_first_byte_and_shrink_back():
    async def main():
        bus = MessageBus()
        seen = record(bus)
        async with FeedListener(bus, scratch_size=512, partial_share=0) as listener:
            host, port = await listener.start_tcp()
            idle = [await asyncio.open_connection(host, port) for _ in range(20)]
            await until(lambda: listener.stats.open_connections == 20)
            assert all(p.scratch is None for p in listener._protocols)
            _, writer = idle[0]
            writer.write(frame("t.big", bytes(5000)))  # buffered whole: the buffer grows
            await until(lambda: len(seen) == 1)
            writer.write(frame("t.small", b"x"))
            await until(lambda: len(seen) == 2)
            sizes = sorted(len(p.scratch) for p in listener._protocols if p.scratch is not None)
            for _, w in idle:
                w.close()
            return sizes

    assert run(main()) == [512]


def test_idle_timeout_closes_silent_connections():
    async def main():
        bus = MessageBus()
        async with FeedListener(bus, idle_timeout=0.2) as listener:
            host, port = await listener.start_tcp()
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(frame("t.x", b"one"))
            assert await asyncio.wait_for(reader.read(), 5) == b""
            writer.close()
            return listener.stats

    stats = run(main())
    assert stats.idle_closed == 1 and stats.frames == 1 and stats.timeouts == 0


def test_frames_after_the_bus_closed_are_counted_and_the_connection_closed():
    async def main():
        bus = MessageBus()
        async with FeedListener(bus) as listener:
            host, port = await listener.start_tcp()
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(frame("t.x", b"before"))
            await until(lambda: listener.stats.frames == 1)
            bus.close()
            writer.write(frame("t.x", b"after"))
            assert await asyncio.wait_for(reader.read(), 5) == b""
            writer.close()
            return listener.stats

    stats = run(main())
    assert stats.bus_closed == 1 and stats.closed_on_error == 1 and stats.errors == 0


def test_framings_that_cannot_fit_the_bus_are_refused_up_front():
    bus = MessageBus()  # largest class: 8 KiB
    with pytest.raises(SizeTooLarge):
        FeedListener(bus, FixedSize(9000, "t.x"))
    with pytest.raises(SizeTooLarge):
        FeedListener(bus, LengthPrefixed(max_payload=9000))
    for bad in ({"max_connections": 0}, {"frame_timeout": -1}, {"partial_share": 2},
                {"scratch_size": 0}, {"max_topics": 0}, {"udp_batch": True}):
        with pytest.raises(ValueError):
            FeedListener(bus, **bad)


def test_new_topics_beyond_max_topics_are_refused_and_counted():
    async def main():
        bus = MessageBus()
        seen = record(bus)
        async with FeedListener(bus, max_topics=2) as listener:
            host, port = await listener.start_tcp()
            _, writer = await asyncio.open_connection(host, port)
            for topic in ["t.a", "t.b", "t.c", "t.a", "t.d", "t.b"]:
                writer.write(frame(topic, topic.encode()))
            await until(lambda: len(seen) + listener.stats.topic_limit == 6)
            writer.close()
            return seen, listener.stats, set(bus.stats().topics)

    seen, stats, bus_topics = run(main())
    assert [t for t, _ in seen] == ["t.a", "t.b", "t.a", "t.b"] and stats.topic_limit == 2
    assert bus_topics == {"t.a", "t.b"}  # the refused topics never reached the bus


# -- UDP: every datagram leaves the socket -----------------------------------------------------
def udp_pending(listener) -> bool:
    sock = listener._udp[0][0]
    try:
        sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
    except BlockingIOError:
        return False
    return True


@pytest.mark.parametrize("loop_kind", LOOPS)
def test_udp_datagrams_after_the_bus_closed_are_drained_and_counted(loop_kind):
    async def main():
        bus = MessageBus()
        async with FeedListener(bus) as listener:
            addr = await listener.start_udp()
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            bus.close()
            for i in range(5):
                sock.sendto(frame("u.x", bytes([i])), addr)
            await until(lambda: listener.stats.bus_closed == 5)
            pending = udp_pending(listener)
            sock.close()
            return pending, listener.stats

    pending, stats = run(main(), loop_kind)
    assert not pending and stats.frames == 0 and stats.errors == 0


class FailingBus:
    """A bus whose claim() raises ``exc`` (to reach the listener's last-resort paths)."""

    def __init__(self, exc):
        self.inner = MessageBus()
        self.allocator = self.inner.allocator
        self.exc = exc

    def claim(self, topic, size):
        raise self.exc


@pytest.mark.parametrize(("exc", "counter"), [
    (SizeTooLarge("too large"), "too_large"), (RuntimeError("boom"), "errors")])
def test_udp_datagrams_the_bus_refuses_in_any_way_are_drained_and_counted(exc, counter):
    async def main():
        async with FeedListener(FailingBus(exc), FixedSize(8, "u.fixed")) as listener:
            addr = await listener.start_udp()
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            for _ in range(3):
                sock.sendto(b"12345678", addr)
            await until(lambda: getattr(listener.stats, counter) == 3)
            pending = udp_pending(listener)
            sock.close()
            return pending, listener.stats

    pending, stats = run(main())
    assert not pending and stats.frames == 0 and stats.undelivered == 3


@pytest.mark.parametrize("loop_kind", LOOPS)
def test_a_steady_stream_always_mid_frame_is_not_timed_out(loop_kind):
    async def main():
        bus = MessageBus()
        seen = record(bus)
        # partial_share=0: no direct reads, which would end each read at a frame boundary
        async with FeedListener(bus, frame_timeout=0.2, partial_share=0) as listener:
            host, port = await listener.start_tcp()
            _, writer = await asyncio.open_connection(host, port)
            stream = b"".join(frame("t.s", bytes([i % 256]) * 300) for i in range(120))
            step = len(stream) // 80  # 1.5 frames per write: every read ends mid-frame
            for i in range(0, len(stream), step):  # about 0.8 s in all, > 4 frame timeouts
                writer.write(stream[i:i + step])
                await writer.drain()
                await asyncio.sleep(0.01)
            await until(lambda: len(seen) == 120)
            writer.close()
            return listener.stats

    stats = run(main(), loop_kind)
    assert stats.timeouts == 0 and stats.frames == 120 and stats.malformed == 0
