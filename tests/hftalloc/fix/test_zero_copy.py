"""Zero-copy receive path: inbound FIX messages land in claimed bus blocks and are committed
as they are (asyncio and uvloop), frames straddling reads are carried in bounded moves, kept
views are never overwritten, and oversized messages get the spec's answer."""

from __future__ import annotations

import asyncio
import random

import pytest

from hftalloc import MessageBus
from hftalloc.fix import FixEncoder, frame, parse
from hftalloc.fix.bridge import BusApplication
from hftalloc.fix.connection import FixConnection
from hftalloc.fix.endpoints import FixInitiator
from hftalloc.fix.session import Application, SessionConfig
from hftalloc.fix.venue import Venue
from hftalloc.loops import has_uvloop, run

np = pytest.importorskip("numpy")

LOOPS = [False, *([True] if has_uvloop() else [])]


def order(i):
    return [(11, f"c{i}"), (55, "AAPL"), (54, "1"), (38, 100), (40, "2"), (44, 99.0),
            (59, "0"), (60, "20260101-00:00:00.000")]


def address(view) -> int:
    return int(np.frombuffer(view, np.uint8).ctypes.data)


class BlockRecorder:
    """Wraps FixConnection.get_buffer: the blocks the transport was given to write into."""

    def __init__(self, monkeypatch) -> None:
        self.blocks: list[tuple[int, int]] = []
        original = FixConnection.get_buffer

        def get_buffer(conn, sizehint):
            buf = original(conn, sizehint)
            if buf.is_block:
                self.blocks.append((buf.address, buf.capacity))
            return buf
        monkeypatch.setattr(FixConnection, "get_buffer", get_buffer)

    def holds(self, addr: int, size: int) -> bool:
        return any(a <= addr and addr + size <= a + cap for a, cap in self.blocks)


@pytest.mark.parametrize("use_uvloop", LOOPS)
def test_reports_are_published_from_the_block_the_socket_filled(tmp_path, monkeypatch,
                                                                   use_uvloop):
    recorder = BlockRecorder(monkeypatch)

    async def main():
        bus = MessageBus(name="fixzc")
        seen = []
        bus.subscribe("fix.CLIENT-VENUE.in.8", lambda m: seen.append(
            (address(m.payload), len(m.payload), parse(m.payload).get_str(11))))
        venue = Venue(store_dir=None)
        port = await venue.start()
        ini = FixInitiator(SessionConfig("CLIENT", "VENUE"), BusApplication(bus), port=port)
        s = await ini.start()
        for i in range(40):
            s.send("D", order(i))
            if i % 10 == 9:
                await asyncio.sleep(0.01)
        for _ in range(500):
            if len(seen) >= 80:
                break
            await asyncio.sleep(0.01)
        await ini.stop()
        await venue.stop()
        bus.close()
        return seen, s.stats

    seen, st = run(main(), use_uvloop=use_uvloop)
    assert len(seen) == 80 and sorted({c for _, _, c in seen}) == sorted(f"c{i}"
                                                                         for i in range(40))
    assert all(recorder.holds(addr, size) for addr, size, _ in seen)   # the very bytes
    assert st.inbound_copied == 0 and st.inbound_in_place == 80
    assert st.inbound_moved_bytes < st.bytes_in                 # bounded carries only


class Keeper(Application):
    def __init__(self) -> None:
        self.kept: list[tuple[memoryview, str]] = []

    def on_message(self, session, msg):
        if len(self.kept) < 3:
            self.kept.append((msg.get_view(11), msg.get_str(11)))


def test_kept_views_are_never_overwritten(tmp_path):
    async def main():
        bus = MessageBus(name="fixkeep")
        got = []
        bus.subscribe("fix.CLIENT-VENUE.in.8", lambda m: got.append(parse(m.payload)
                                                                     .get_str(11)))
        venue = Venue(store_dir=None)
        port = await venue.start()
        keeper = Keeper()
        ini = FixInitiator(SessionConfig("CLIENT", "VENUE"), BusApplication(bus, keeper),
                           port=port)
        s = await ini.start()
        for i in range(30):
            s.send("D", order(i))
        for _ in range(500):
            if len(got) >= 60:
                break
            await asyncio.sleep(0.01)
        views = [(bytes(v), text) for v, text in keeper.kept]
        await ini.stop()
        await venue.stop()
        for v, _ in keeper.kept:
            v.release()
        bus.close()
        return got, views, s.stats

    got, views, st = run(main())
    assert len(got) == 60
    assert all(data == text.encode() for data, text in views)   # unchanged after 60 more
    assert st.inbound_copied == 3                  # those three were published as copies
    assert st.inbound_in_place == 57


# -- a scripted acceptor sending chunks of its choice -------------------------------------
async def scripted_acceptor(script):
    """Answers the Logon, then runs ``script(writer, encoder)``."""
    done = asyncio.get_running_loop().create_future()

    async def handle(reader, writer):
        buf = b""
        while True:
            buf += await reader.read(4096)
            _, size = frame(buf)
            if size:
                break
        enc = FixEncoder("VENUE", "CLIENT")
        writer.write(enc.encode("A", 1, [(98, 0), (108, 30)]))
        try:
            await script(writer, enc)
        finally:
            done.set_result(None)
            await asyncio.sleep(0.2)
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1], done


def report(i, text_len=0):
    fields = [(37, f"o{i}"), (17, f"e{i}"), (150, "0"), (39, "0"), (55, "AAPL"), (54, "1"),
              (151, 100), (14, 0), (6, 0), (11, f"c{i}")]
    if text_len:
        fields.append((58, "t" * text_len))
    return fields


@pytest.mark.parametrize("use_uvloop", LOOPS)
@pytest.mark.parametrize("chunking", ["one-byte", "random", "burst"])
def test_frames_straddling_reads(use_uvloop, chunking):
    rng = random.Random(7)
    n = 60 if chunking != "one-byte" else 12

    async def script(writer, enc):
        stream = b"".join(enc.encode("8", 2 + i, report(i, rng.choice((0, 5, 300, 2000))))
                          for i in range(n))
        if chunking == "burst":
            writer.write(stream)
            await writer.drain()
            return
        pos = 0
        while pos < len(stream):
            step = 1 if chunking == "one-byte" else rng.randint(1, 700)
            writer.write(stream[pos:pos + step])
            pos += step
            await writer.drain()
            await asyncio.sleep(0)

    async def main():
        bus = MessageBus(name="fixstraddle")
        got = []
        bus.subscribe("fix.CLIENT-VENUE.in.8",
                      lambda m: got.append((parse(m.payload).get_str(11), len(m.payload))))
        server, port, done = await scripted_acceptor(script)
        ini = FixInitiator(SessionConfig("CLIENT", "VENUE"), BusApplication(bus), port=port)
        s = await ini.start()
        await asyncio.wait_for(done, 20)
        for _ in range(300):
            if len(got) >= n:
                break
            await asyncio.sleep(0.01)
        st = s.stats
        s.close()
        await asyncio.sleep(0.05)
        server.close()
        bus.close()
        return got, st

    got, st = run(main(), use_uvloop=use_uvloop)
    assert [c for c, _ in got] == [f"c{i}" for i in range(n)]
    assert st.inbound_in_place == n and st.inbound_copied == 0
    assert st.garbled == 0 and st.rejects_out == 0


def test_oversize_in_a_block_gets_a_logout(tmp_path):
    async def script(writer, enc):
        writer.write(enc.encode("8", 2, report(1)))
        writer.write(b"8=FIX.4.4\x019=900000\x0135=8\x01" + b"x" * 100)
        await writer.drain()

    async def main():
        bus = MessageBus(name="fixbig")
        got = []
        bus.subscribe("fix.CLIENT-VENUE.in.8", lambda m: got.append(len(m.payload)))
        server, port, done = await scripted_acceptor(script)
        ini = FixInitiator(SessionConfig("CLIENT", "VENUE", max_message_size=4096),
                           BusApplication(bus), port=port)
        s = await ini.start()
        await asyncio.wait_for(done, 5)
        await asyncio.wait_for(s.wait_closed(), 5)
        server.close()
        bus.close()
        return got, s.stats

    got, st = run(main())
    assert len(got) == 1 and st.oversize == 1 and st.logouts == 1


def test_message_larger_than_the_bus_blocks(tmp_path):
    """Within the size limit but above the bus's largest block: the session still handles
    it (from the connection's own buffer); the bus refuses the copy with its own error."""
    async def script(writer, enc):
        writer.write(enc.encode("8", 2, report(1)))
        writer.write(enc.encode("8", 3, report(2, text_len=20000)))
        writer.write(enc.encode("8", 4, report(3)))
        await writer.drain()

    class Seen(Application):
        def __init__(self):
            self.ids = []

        def on_message(self, session, msg):
            self.ids.append(msg.get_str(11))

    async def main():
        bus = MessageBus(name="fixhuge")
        got = []
        bus.subscribe("fix.CLIENT-VENUE.in.8", lambda m: got.append(parse(m.payload)
                                                                     .get_str(11)))
        server, port, done = await scripted_acceptor(script)
        seen = Seen()
        ini = FixInitiator(SessionConfig("CLIENT", "VENUE"), BusApplication(bus, seen),
                           port=port)
        s = await ini.start()
        await asyncio.wait_for(done, 5)
        for _ in range(300):
            if s.next_in >= 5:
                break
            await asyncio.sleep(0.01)
        st = s.stats
        s.close()
        await asyncio.sleep(0.05)
        server.close()
        bus.close()
        return got, st, s.next_in

    got, st, next_in = run(main())
    assert next_in == 5 and got == ["c1", "c3"]
    assert st.inbound_claim_failures >= 1 and st.app_errors == 1   # the bus's SizeTooLarge
    assert st.inbound_in_place + st.inbound_copied == 2 and st.rejects_out == 0
