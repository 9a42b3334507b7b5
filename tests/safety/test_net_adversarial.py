"""Adversarial network input: fuzzed frames against reference models, slowloris and floods.

Every untrusted input of hftalloc.net and hftalloc.bridge gets valid frames mutated by
hypothesis (truncation, bit flips, huge and zero lengths, invalid UTF-8 topics,
inserted garbage, multipart messages) fed in every possible way (split at every byte
boundary, many tiny writes, random chunks). A reference model of each framing says
exactly which frames must be delivered and which counter each refused frame lands
in; the tests compare, and check that the pool is whole afterwards. Socket tests use
127.0.0.1 only and bounded loops. ``NET_SOAK_SECONDS=30`` runs the soak test.
"""

from __future__ import annotations

import asyncio
import os
import random
import socket
import struct
import time
from collections import Counter

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from reference_core import BUS_CORES, core_id

from hftalloc import MessageBus, loop_factory
from hftalloc.bridge import ShmBridge
from hftalloc.errors import InvalidTopic
from hftalloc.net import FeedListener, FixedSize, LengthPrefixed
from hftalloc.net.framing import HEADER
from hftalloc.net.tcp import TcpConnection
from hftalloc.topics import validate_topic

pytestmark = pytest.mark.timeout(120)

LOOPS = ["asyncio"] + (["uvloop"] if loop_factory(None) is not asyncio.new_event_loop else [])
MAX_PAYLOAD = 8192  # the default bus's largest class
FUZZ = settings(max_examples=150, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
SOCKET_FUZZ = settings(max_examples=25, deadline=None,
                       suppress_health_check=[HealthCheck.too_slow])


def run(coro, loop_kind="asyncio"):
    with asyncio.Runner(loop_factory=loop_factory(loop_kind == "uvloop")) as runner:
        return runner.run(asyncio.wait_for(coro, 30))


async def until(predicate, timeout=10.0):
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        assert loop.time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.002)


def record(bus):
    seen = []
    bus.subscribe(">", lambda m: seen.append((m.topic, m.tobytes())))
    return seen


def frame(topic: str, payload: bytes) -> bytes:
    return LengthPrefixed().encode(topic, payload)


def topic_of(raw: bytes) -> str | None:
    """The topic the wire bytes name, or None if they are not a valid topic."""
    try:
        return validate_topic(raw.decode())
    except (UnicodeDecodeError, InvalidTopic):
        return None


# -- reference models ----------------------------------------------------------------------------
def model_stream(data: bytes, max_payload: int = MAX_PAYLOAD):
    """What a TCP connection carrying ``data`` (then closed by the peer) must deliver."""
    out, counts, pos = [], Counter(), 0
    while pos < len(data):
        rest = len(data) - pos
        if rest < HEADER.size:
            counts["malformed"] += 1  # truncated header
            break
        length, topic_len = HEADER.unpack_from(data, pos)
        if length > max_payload or not 0 < topic_len <= 255:
            counts["malformed"] += 1
            counts["closed_on_error"] += 1
            break
        if rest < HEADER.size + topic_len:
            counts["malformed"] += 1
            break
        body = pos + HEADER.size + topic_len
        topic = topic_of(data[pos + HEADER.size:body])
        if topic is None:
            counts["malformed"] += 1  # skipped; a skip cut short is not counted again
            pos = body + length
            continue
        if len(data) - body < length:
            counts["malformed"] += 1  # truncated payload
            break
        out.append((topic, data[body:body + length]))
        pos = body + length
    return out, counts


def model_datagram(d: bytes, max_payload: int = MAX_PAYLOAD):
    """(topic, payload) a datagram must deliver, or None (malformed)."""
    if len(d) < HEADER.size:
        return None
    length, topic_len = HEADER.unpack_from(d)
    if length > max_payload or not 0 < topic_len <= 255 or len(d) < HEADER.size + topic_len:
        return None
    topic = topic_of(d[HEADER.size:HEADER.size + topic_len])
    if topic is None or len(d) != HEADER.size + topic_len + length:
        return None
    return topic, d[HEADER.size + topic_len:]


# -- strategies ------------------------------------------------------------------------------------
topics = st.one_of(st.sampled_from(["md.q.A", "md.t.B", "x", "ord.new.AAPL"]),
                   st.text(st.characters(codec="utf-8", exclude_characters=".*>"), min_size=1,
                           max_size=8).map(lambda s: "t." + s))
payloads = st.binary(max_size=1500)
valid_frames = st.lists(st.tuples(topics, payloads), max_size=5)
mutations = st.one_of(
    st.tuples(st.just("truncate"), st.integers(0, 2000)),
    st.tuples(st.just("flip"), st.integers(0, 16000)),
    st.tuples(st.just("huge_length"), st.sampled_from([MAX_PAYLOAD + 1, 2**31, 2**32 - 1])),
    st.tuples(st.just("zero_length"), st.just(0)),
    st.tuples(st.just("zero_topic"), st.just(0)),
    st.tuples(st.just("bad_utf8"), st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80"])),
    st.tuples(st.just("wildcard"), st.sampled_from([b"a.*", b"a.>", b"a..b", b"."])),
    st.tuples(st.just("garbage"), st.binary(min_size=1, max_size=40)),
    st.tuples(st.just("grow_length"), st.integers(1, 3000)),  # swallows what follows
    st.tuples(st.just("bad_topic_cut"), st.integers(1, 3000)),  # skipped frame cut short
)


def mutate(topic: str, payload: bytes, mutation) -> bytes:
    data = bytearray(frame(topic, payload))
    kind, arg = mutation
    if kind == "truncate":
        return bytes(data[:arg % len(data)])
    if kind == "flip":
        data[(arg // 8) % len(data)] ^= 1 << (arg % 8)
    elif kind == "huge_length":
        struct.pack_into("<I", data, 0, arg)
    elif kind == "zero_length":
        struct.pack_into("<I", data, 0, 0)
    elif kind == "zero_topic":
        struct.pack_into("<H", data, 4, 0)
    elif kind in ("bad_utf8", "wildcard"):
        return HEADER.pack(len(payload), len(arg)) + arg + payload
    elif kind == "garbage":
        return bytes(arg) + bytes(data)
    elif kind == "grow_length":
        struct.pack_into("<I", data, 0, min(len(payload) + arg, MAX_PAYLOAD))
    elif kind == "bad_topic_cut":
        return HEADER.pack(len(payload) + arg, 4) + b"a..b" + payload
    return bytes(data)


class FakeTransport:
    def __init__(self):
        self.closed = self.paused = False

    def close(self):
        self.closed = True

    abort = close

    def is_closing(self):
        return self.closed

    def pause_reading(self):
        self.paused = True

    def resume_reading(self):
        self.paused = False


def feed_stream(stream: bytes, chunks: list[int], *, framing=None, scratch: int = 300,
                partial_share: float = 0.25, bus_cls=MessageBus):
    """Feed ``stream`` to one TcpConnection in chunks; returns (seen, stats, bus)."""
    async def main():
        bus = bus_cls(blocks_per_class=64)
        seen = record(bus)
        listener = FeedListener(bus, framing, scratch_size=scratch, partial_share=partial_share)
        proto = TcpConnection(listener)
        transport = FakeTransport()
        proto.connection_made(transport)
        pos = i = 0
        while pos < len(stream) and not transport.closed:
            buf = proto.get_buffer(-1)
            assert len(buf) > 0
            step = chunks[i % len(chunks)] if chunks else len(buf)
            n = min(len(buf), len(stream) - pos, step)
            buf[:n] = stream[pos:pos + n]
            del buf
            proto.buffer_updated(n)
            pos += n
            i += 1
        await asyncio.sleep(0)
        proto.connection_lost(None)
        await asyncio.sleep(0)
        return seen, listener.stats, bus

    return run(main())


def check_stream(stream, seen, stats, bus, *, prefix=()):
    expected, counts = model_stream(stream)
    assert seen == expected
    assert list(prefix) == seen[:len(prefix)]  # the valid frames before a bad one arrive
    assert stats.frames == len(expected)
    assert stats.malformed == counts["malformed"]
    assert stats.closed_on_error == counts["closed_on_error"]
    assert stats.errors == stats.dropped == stats.rejected == 0
    assert stats.partial_blocks == 0 and bus.allocator.in_use == 0


# -- TCP length-prefixed framing -------------------------------------------------------------------
@FUZZ
@given(before=valid_frames, bad=st.tuples(topics, payloads), mutation=mutations,
       after=valid_frames,
       chunks=st.one_of(st.just([1]), st.lists(st.integers(1, 700), min_size=1, max_size=40)),
       scratch=st.sampled_from([262, 300, 4096]), share=st.sampled_from([0, 0.25, 1.0]))
def test_tcp_mutated_frame_among_valid_ones_matches_the_model(before, bad, mutation, after,
                                                              chunks, scratch, share):
    stream = b"".join(frame(t, p) for t, p in before) + mutate(*bad, mutation) + \
        b"".join(frame(t, p) for t, p in after)
    seen, stats, bus = feed_stream(stream, chunks, scratch=scratch, partial_share=share)
    check_stream(stream, seen, stats, bus, prefix=before)


@FUZZ
@given(data=st.binary(max_size=3000), chunks=st.lists(st.integers(1, 500), min_size=1,
                                                       max_size=20))
def test_tcp_random_bytes_match_the_model(data, chunks):
    seen, stats, bus = feed_stream(data, chunks)
    check_stream(data, seen, stats, bus)


@pytest.mark.parametrize("core", BUS_CORES, ids=core_id)
def test_tcp_split_at_every_byte_boundary(core):
    msgs = [("md.q.A", bytes(range(200))), ("t.x", b""), ("t.y", b"z" * 700)]
    stream = frame(*msgs[0]) + HEADER.pack(3, 4) + b"a..b" + b"bad" + frame(*msgs[1]) + \
        frame(*msgs[2])

    async def main():
        results = []
        for cut in range(1, len(stream)):
            bus = core(blocks_per_class=8)
            seen = record(bus)
            listener = FeedListener(bus, scratch_size=262)
            proto = TcpConnection(listener)
            proto.connection_made(FakeTransport())
            pos = 0
            for end in (cut, len(stream)):
                while pos < end:
                    buf = proto.get_buffer(-1)
                    n = min(len(buf), end - pos)
                    buf[:n] = stream[pos:pos + n]
                    del buf
                    proto.buffer_updated(n)
                    pos += n
            await asyncio.sleep(0)
            proto.connection_lost(None)
            results.append((cut, seen, listener.stats.malformed, bus.allocator.in_use))
        return results

    results = run(main())
    assert len(results) == len(stream) - 1
    for cut, seen, malformed, in_use in results:
        assert (cut, seen, malformed, in_use) == (cut, msgs, 1, 0)


@FUZZ
@given(data=st.binary(max_size=2000), size=st.sampled_from([1, 7, 24, 300, 5000]),
       chunks=st.one_of(st.just([1]), st.lists(st.integers(1, 900), min_size=1, max_size=20)),
       share=st.sampled_from([0, 0.25]))
def test_tcp_fixed_size_records_any_stream(data, size, chunks, share):
    seen, stats, bus = feed_stream(data, chunks, framing=FixedSize(size, "md.raw"),
                                   partial_share=share)
    whole = len(data) // size
    assert seen == [("md.raw", data[i * size:(i + 1) * size]) for i in range(whole)]
    assert stats.malformed == (1 if len(data) % size else 0)
    assert bus.allocator.in_use == 0 and stats.partial_blocks == 0


@SOCKET_FUZZ
@given(before=valid_frames, bad=st.tuples(topics, payloads), mutation=mutations,
       after=valid_frames, write=st.sampled_from([1, 7, 1000, 1 << 20]))
def test_tcp_over_loopback_matches_the_model(before, bad, mutation, after, write):
    stream = b"".join(frame(t, p) for t, p in before) + mutate(*bad, mutation) + \
        b"".join(frame(t, p) for t, p in after)
    async def main():
        bus = MessageBus(blocks_per_class=64)
        seen = record(bus)
        async with FeedListener(bus) as listener:
            host, port = await listener.start_tcp("127.0.0.1")
            reader, writer = await asyncio.open_connection(host, port)
            try:
                pos, tiny = 0, min(len(stream), 2000 if write < 1000 else 0)
                while pos < tiny:  # many tiny writes first
                    writer.write(stream[pos:pos + write])
                    await writer.drain()
                    pos += write
                writer.write(stream[pos:])
                writer.write_eof()
                await asyncio.wait_for(reader.read(), 10)  # the listener closes its side
            except ConnectionError:
                pass  # closed on a bad header while we were still writing
            writer.close()
            await until(lambda: listener.stats.open_connections == 0)
            return seen, listener.stats, bus

    seen, stats, bus = run(main())
    check_stream(stream, seen, stats, bus, prefix=before)


# -- UDP datagrams -----------------------------------------------------------------------------
datagram = st.one_of(
    st.tuples(topics, payloads).map(lambda tp: frame(*tp)),
    st.tuples(topics, payloads, mutations).map(lambda tpm: mutate(*tpm)),
    st.binary(max_size=300),
)


@SOCKET_FUZZ
@given(datagrams=st.lists(datagram, min_size=1, max_size=12))
def test_udp_datagrams_match_the_model(datagrams):
    expected = [model_datagram(d) for d in datagrams]

    async def main():
        bus = MessageBus(blocks_per_class=64)
        seen = record(bus)
        async with FeedListener(bus) as listener:
            addr = await listener.start_udp("127.0.0.1")
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            for d in datagrams:
                sock.sendto(d, addr)
            stats = listener.stats
            await until(lambda: stats.frames + stats.undelivered == len(datagrams))
            sock.close()
            return seen, stats, bus

    seen, stats, bus = run(main())
    assert seen == [e for e in expected if e is not None]
    assert stats.malformed == sum(e is None for e in expected)
    assert bus.allocator.in_use == 0


@pytest.mark.parametrize("loop_kind", LOOPS)
def test_udp_flood_of_garbage_is_drained_batch_by_batch(loop_kind):
    rng = random.Random(7)

    async def main():
        bus = MessageBus()
        seen = record(bus)
        async with FeedListener(bus, udp_batch=8) as listener:
            addr = await listener.start_udp("127.0.0.1")
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sent = 0
            for _ in range(20):  # bounded: 20 bursts of 100
                for _ in range(100):
                    sock.sendto(rng.randbytes(rng.randrange(0, 600)), addr)
                sent += 100
                sock.sendto(frame("u.ok", b"alive"), addr)
                sent += 1
                await until(lambda s=sent: listener.stats.frames + listener.stats.undelivered
                            == s)
            sock.close()
            return seen, listener.stats

    seen, stats = run(main(), loop_kind)
    assert seen.count(("u.ok", b"alive")) == 20 and stats.errors == 0


# -- ZeroMQ frames ---------------------------------------------------------------------------------
zmq = pytest.importorskip("zmq")

from hftalloc.net.zmq_bridge import HEADER as ZHEADER  # noqa: E402
from hftalloc.net.zmq_bridge import ZmqBridge  # noqa: E402


def zframe(topic: bytes, publisher: int, seq: int, payload: bytes) -> bytes:
    return topic + b"\0" + ZHEADER.pack(publisher, seq) + payload


class ZmqModel:
    """What ZmqBridge._on_frame must do with each frame (filters: '>')."""

    def __init__(self, max_gap: int, max_payload: int = MAX_PAYLOAD):
        self.max_gap, self.max_payload = max_gap, max_payload
        self.last: dict[tuple[int, str], int] = {}
        self.out: list[tuple[str, bytes]] = []
        self.counts: Counter[str] = Counter()

    def feed(self, d: bytes) -> None:
        end = d[:256].find(b"\0")
        if end <= 0 or len(d) < end + 1 + ZHEADER.size:
            self.counts["malformed"] += 1
            return
        topic = topic_of(d[:end])
        if topic is None:
            self.counts["malformed"] += 1
            return
        publisher, seq = ZHEADER.unpack_from(d, end + 1)
        if seq == 0:
            self.counts["malformed"] += 1
            return
        last = self.last.get((publisher, topic))
        if last is not None and seq != last + 1:
            if last < seq <= last + 1 + self.max_gap:
                self.counts["gaps"] += seq - last - 1
            else:
                self.counts["anomalies"] += 1
        self.last[(publisher, topic)] = seq
        payload = d[end + 1 + ZHEADER.size:]
        if len(payload) > self.max_payload:
            self.counts["too_large"] += 1
            return
        self.out.append((topic, payload))


zmq_valid = st.tuples(st.sampled_from([b"t.a", b"md.q.A", "t.\u00e9".encode()]),
                      st.integers(1, 3), st.integers(1, 40), st.binary(max_size=300))
zmq_mutation = st.one_of(
    st.tuples(st.just("truncate"), st.integers(0, 400)),
    st.tuples(st.just("flip"), st.integers(0, 3000)),
    st.tuples(st.just("seq"), st.sampled_from([0, 2**63, 2**64 - 1])),
    st.tuples(st.just("topic"), st.sampled_from([b"", b"\xff\xfe", b"a..b", b"a.*", b"x" * 300,
                                                 b"t\0a"])),
    st.tuples(st.just("big"), st.sampled_from([MAX_PAYLOAD + 1, 9000])),
)


def zmutate(valid, mutation) -> bytes:
    topic, publisher, seq, payload = valid
    kind, arg = mutation
    data = bytearray(zframe(topic, publisher, seq, payload))
    if kind == "truncate":
        return bytes(data[:arg % len(data)])
    if kind == "flip":
        data[(arg // 8) % len(data)] ^= 1 << (arg % 8)
        return bytes(data)
    if kind == "seq":
        return zframe(topic, publisher, arg, payload)
    if kind == "topic":
        return arg + b"\0" + ZHEADER.pack(publisher, seq) + payload
    return zframe(topic, publisher, seq, bytes(arg))


@FUZZ
@given(frames=st.lists(st.one_of(zmq_valid.map(lambda v: zframe(*v)),
                                 st.tuples(zmq_valid, zmq_mutation).map(lambda vm: zmutate(*vm)),
                                 st.binary(max_size=300)), max_size=30),
       max_gap=st.sampled_from([1, 10, 1_000_000]))
def test_zmq_frames_match_the_model(frames, max_gap):
    bus = MessageBus(blocks_per_class=64)
    seen = record(bus)
    bridge = ZmqBridge(bus, context=zmq.Context.instance(), max_gap=max_gap)
    model = ZmqModel(max_gap)
    for d in frames:
        bridge._on_frame(d, ((">",),))
        model.feed(d)
    assert seen == model.out
    for name in ("malformed", "gaps", "anomalies", "too_large"):
        assert getattr(bridge, name) == model.counts[name], name
    assert bridge.errors == 0 and bus.allocator.in_use == 0
    bridge.close()


@pytest.mark.parametrize("seed", range(3))
def test_zmq_multipart_and_garbage_over_loopback(seed):
    rng = random.Random(seed)
    context = zmq.Context()
    bus = MessageBus(blocks_per_class=64)
    bridge = ZmqBridge(bus, context=context)
    raw = context.socket(zmq.PUB)
    port = raw.bind_to_random_port("tcp://127.0.0.1")
    bridge.subscribe_from(f"tcp://127.0.0.1:{port}", ">")
    seen = record(bus)
    deadline = time.monotonic() + 10
    while not seen:  # slow joiner
        assert time.monotonic() < deadline
        raw.send(zframe(b"sys.join", 99, 1, b""))
        bridge.poll(0.01)
    seen.clear()
    expected, multipart, seq = [], 0, 0
    for _ in range(60):
        kind = rng.choice(["good", "multi", "garbage"])
        if kind == "good":
            seq += 1
            payload = rng.randbytes(rng.randrange(0, 200))
            raw.send(zframe(b"t.ok", 1, seq, payload))
            expected.append(("t.ok", payload))
        elif kind == "multi":  # a valid frame inside a multipart message is not smuggled in
            seq += 1
            parts = [zframe(b"t.ok", 1, seq, b"smuggled")] * rng.randrange(1, 3)
            parts += [rng.randbytes(rng.randrange(0, 50)) for _ in range(rng.randrange(1, 3))]
            rng.shuffle(parts)
            raw.send_multipart(parts)
            multipart += 1
        else:  # no NUL: never a topic end, so always malformed
            raw.send(bytes(b % 255 + 1 for b in rng.randbytes(rng.randrange(0, 100))))
    seq += 1
    raw.send(zframe(b"t.ok", 1, seq, b"end"))
    expected.append(("t.ok", b"end"))
    assert bridge.poll_until(lambda: seen and seen[-1] == ("t.ok", b"end"), timeout=10)
    assert seen == expected and bridge.multipart == multipart and bridge.errors == 0
    raw.close(linger=0)
    bridge.close()
    context.destroy(linger=0)


# -- the bus <- transport bridge ---------------------------------------------------------------
class Inbound(bytearray):
    """A stand-in for an inbound transport message: a buffer with a topic."""

    def __init__(self, topic, data):
        super().__init__(data)
        self.topic = topic


@FUZZ
@given(messages=st.lists(st.tuples(st.one_of(topics, st.text(max_size=12), st.integers()),
                                   st.integers(0, 9000)), max_size=30),
       core=st.sampled_from(BUS_CORES))
def test_bridge_inbound_messages_are_delivered_or_counted(messages, core):
    bus = core(blocks_per_class=8)
    seen = record(bus)
    bridge = ShmBridge(bus)
    expected, invalid, too_large = [], 0, 0
    for topic, size in messages:
        data = bytes([size % 251]) * size
        bridge._on_channel_message(Inbound(topic, data))
        try:
            valid = validate_topic(topic) is not None
        except InvalidTopic:
            valid = False
        if not valid:
            invalid += 1
        elif size > MAX_PAYLOAD:
            too_large += 1
        else:
            expected.append((topic, data))
    assert seen == expected
    assert bridge.in_invalid == invalid and bridge.in_too_large == too_large
    assert bridge.received == len(expected) and bridge.in_errors == 0
    assert bus.allocator.in_use == 0
    bridge.close()


# -- slowloris and floods on 127.0.0.1 ---------------------------------------------------------
@pytest.mark.parametrize("loop_kind", LOOPS)
def test_slowloris_dribblers_are_cut_and_real_clients_served(loop_kind):
    async def dribble(host, port, stop):
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(HEADER.pack(4000, 3) + b"t.s")
        try:
            while not stop.is_set():  # one byte every 20 ms, until the listener hangs up
                writer.write(b"\0")
                await writer.drain()
                if reader.at_eof():
                    break
                try:
                    await asyncio.wait_for(reader.read(1), 0.02)
                    break  # EOF: cut off
                except TimeoutError:
                    pass
        except ConnectionError:
            pass
        writer.close()

    async def main():
        bus = MessageBus(blocks_per_class=16, policy="drop")
        seen = record(bus)
        async with FeedListener(bus, frame_timeout=0.3, max_connections=64) as listener:
            host, port = await listener.start_tcp("127.0.0.1")
            stop = asyncio.Event()
            tasks = [asyncio.create_task(dribble(host, port, stop)) for _ in range(30)]
            await until(lambda: listener.stats.open_connections == 30)
            _, writer = await asyncio.open_connection(host, port)
            sent = [bytes([i]) * 4000 for i in range(40)]
            for payload in sent:
                writer.write(frame("t.ok", payload))
            await until(lambda: len(seen) == len(sent))
            await until(lambda: listener.stats.timeouts == 30)
            stop.set()
            await asyncio.wait_for(asyncio.gather(*tasks), 10)
            writer.close()
            await until(lambda: listener.stats.open_connections == 0)
            return seen, sent, listener.stats, bus

    seen, sent, stats, bus = run(main(), loop_kind)
    assert [p for _, p in seen] == sent and stats.dropped == 0
    assert stats.partial_blocks == 0 and bus.allocator.in_use == 0


@pytest.mark.parametrize("loop_kind", LOOPS)
def test_connection_flood_is_refused_and_idle_connections_cost_no_buffer(loop_kind):
    async def main():
        bus = MessageBus()
        seen = record(bus)
        async with FeedListener(bus, max_connections=50) as listener:
            host, port = await listener.start_tcp("127.0.0.1", backlog=256)
            clients = []
            for _ in range(200):
                clients.append(await asyncio.open_connection(host, port))
            await until(lambda: listener.stats.connections + listener.stats.refused == 200)
            buffers = [p.scratch for p in listener._protocols]
            for _, w in clients:
                w.close()
            await until(lambda: listener.stats.open_connections == 0)
            _, writer = await asyncio.open_connection(host, port)
            writer.write(frame("t.x", b"served"))
            await until(lambda: len(seen) == 1)
            writer.close()
            return buffers, listener.stats

    buffers, stats = run(main(), loop_kind)
    assert stats.refused == 150 and len(buffers) == 50
    assert all(b is None for b in buffers)  # allocated on the first byte only


@pytest.mark.parametrize("loop_kind", LOOPS)
def test_a_flooding_connection_does_not_starve_another(loop_kind):
    async def main():
        bus = MessageBus(blocks_per_class=64)
        counts = Counter()
        bus.subscribe(">", lambda m: counts.update([m.topic]))
        async with FeedListener(bus) as listener:
            host, port = await listener.start_tcp("127.0.0.1")
            _, flood = await asyncio.open_connection(host, port)
            _, calm = await asyncio.open_connection(host, port)
            burst = frame("t.flood", bytes(100)) * 200
            calm_sent = 0
            for _ in range(50):  # bounded: the flood goes on while the calm client sends
                flood.write(burst)
                calm.write(frame("t.calm", b"hello"))
                calm_sent += 1
                await asyncio.sleep(0)
            await until(lambda: counts["t.calm"] == calm_sent)
            flooded = counts["t.flood"]
            flood.close()
            calm.close()
            return calm_sent, flooded

    calm_sent, flooded = run(main(), loop_kind)
    assert calm_sent == 50 and flooded > 0


@pytest.mark.skipif(not os.environ.get("NET_SOAK_SECONDS"), reason="set NET_SOAK_SECONDS")
def test_soak_slowloris_floods_and_garbage():
    seconds = float(os.environ["NET_SOAK_SECONDS"])
    rng = random.Random(1)

    def rss_kib() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024

    async def main():
        bus = MessageBus(blocks_per_class=64, policy="drop")
        bus.subscribe(">", lambda m: None)
        async with FeedListener(bus, frame_timeout=0.2, max_connections=100) as listener:
            host, port = await listener.start_tcp("127.0.0.1")
            addr = await listener.start_udp("127.0.0.1")
            udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            samples = []
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                conns = [await asyncio.open_connection(host, port) for _ in range(20)]
                for _, w in conns:
                    w.write(HEADER.pack(rng.randrange(0, 9000), rng.randrange(0, 300)) +
                            rng.randbytes(rng.randrange(0, 400)))
                for _ in range(200):
                    udp.sendto(rng.randbytes(rng.randrange(0, 400)), addr)
                await asyncio.sleep(0.25)
                for _, w in conns:
                    w.close()
                samples.append(rss_kib())
            udp.close()
            await until(lambda: listener.stats.open_connections == 0)
            return samples, bus

    samples, bus = run(main())
    settled = samples[len(samples) * 2 // 5:]
    assert max(settled) - settled[0] < 8 * 1024, samples
    assert bus.allocator.in_use == 0
