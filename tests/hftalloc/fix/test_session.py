"""Sessions of this package on both ends: orders, cancel/replace, market data, heartbeats,
restart from file stores, MsgSeqNum too low, and the bus bridge."""

from __future__ import annotations

import asyncio

import pytest

from hftalloc import MessageBus
from hftalloc.fix import parse
from hftalloc.fix.bridge import BusApplication, bind_outbound
from hftalloc.fix.endpoints import FixInitiator
from hftalloc.fix.session import Application, SessionConfig
from hftalloc.fix.store import MemoryStore
from hftalloc.fix.venue import Venue, VenueApp
from hftalloc.loops import run
from hftalloc.schemas import BUY, CANCEL, DAY, FILL, NEW_ORDER, Cancel, NewOrder


class Recorder(Application):
    def __init__(self) -> None:
        self.messages: list[tuple[str, dict[int, str]]] = []
        self.groups: list[list[tuple[str, str]]] = []
        self.event = asyncio.Event()

    def on_message(self, session, msg):
        self.messages.append((msg.msg_type, {t: v.decode() for t, v in msg.fields()}))
        if msg.has(268):
            self.groups.append([(e.get_str(269), e.get_decimal(270)) for e in msg.group(268)])
        self.event.set()

    async def wait(self, predicate, timeout=5.0):
        async def loop():
            while not predicate():
                self.event.clear()
                await self.event.wait()
        await asyncio.wait_for(loop(), timeout)

    def of(self, msg_type):
        return [f for t, f in self.messages if t == msg_type]


def order(i, tif="0"):
    return [(11, f"c{i}"), (55, "AAPL"), (54, "1"), (38, 100), (40, "2"), (44, 99.0),
            (59, tif), (60, "20260101-00:00:00.000")]


async def pair(tmp_path, venue_app=None, **cfg):
    venue = Venue(store_dir=tmp_path / "venue", app=venue_app)
    port = await venue.start()
    rec = Recorder()
    ini = FixInitiator(SessionConfig("CLIENT", "VENUE", **cfg), rec, port=port,
                       store_dir=tmp_path / "client")
    session = await ini.start()
    return venue, ini, session, rec


def test_cancel_replace_and_rejects(tmp_path):
    async def main():
        venue, ini, s, rec = await pair(tmp_path, VenueApp(fill=False))
        s.send("D", order(1))
        s.send("G", [(41, "c1"), (11, "c1r"), (55, "AAPL"), (54, "1"), (38, 50), (40, "2"),
                     (44, 98.5), (60, "20260101-00:00:00.000")])
        s.send("F", [(41, "c1r"), (11, "c1x"), (55, "AAPL"), (54, "1"),
                     (60, "20260101-00:00:00.000")])
        s.send("F", [(41, "nope"), (11, "c2x"), (55, "AAPL"), (54, "1"),
                     (60, "20260101-00:00:00.000")])
        s.send("D", order(3, tif="3"))   # IOC below the touch: cancelled
        await rec.wait(lambda: len(rec.of("8")) == 5 and rec.of("9"))
        reports = rec.of("8")
        assert [r[150] for r in reports] == ["0", "5", "4", "0", "4"]
        assert reports[1][41] == "c1" and reports[1][38] == "50" and reports[1][44] == "98.5"
        assert rec.of("9")[0][41] == "nope" and rec.of("9")[0][434] == "1"
        assert [r[150] for r in rec.of("8") if r[11] == "c3"] == ["0", "4"]
        await ini.stop()
        await venue.stop()
        assert venue.app.stats.replaces == 1 and venue.app.stats.cancel_rejects == 1
    run(main())


def test_market_data_snapshot_and_stream(tmp_path):
    async def main():
        venue, ini, s, rec = await pair(tmp_path)
        s.send("V", [(262, "m1"), (263, "1"), (264, 5), (267, 2), (269, "0"), (269, "1"),
                     (146, 2), (55, "AAPL"), (55, "MSFT")])
        await rec.wait(lambda: len(rec.of("W")) == 2 and len(rec.of("X")) >= 2)
        snap = rec.groups[0]
        assert len(snap) == 10 and snap[0] == ("0", "99.99") and snap[1] == ("1", "100.01")
        assert {w[55] for w in rec.of("W")} == {"AAPL", "MSFT"}
        s.send("V", [(262, "m1"), (263, "2"), (264, 5), (267, 1), (269, "0"), (146, 1),
                     (55, "AAPL")])
        await ini.stop()
        await venue.stop()
    run(main())


def test_heartbeats_keep_an_idle_session_up(tmp_path):
    async def main():
        venue, ini, s, _ = await pair(tmp_path, heartbeat=1)
        await asyncio.sleep(2.6)
        vs = venue.acceptor.sessions["CLIENT"]
        assert s.is_logged_on and vs.is_logged_on
        assert s.stats.heartbeats_out >= 1 and vs.stats.heartbeats_out >= 1
        assert s.stats.heartbeat_timeouts == 0 and vs.stats.heartbeat_timeouts == 0
        await ini.stop()
        await venue.stop()
    run(main())


def test_restart_both_sides_resumes_sequence_numbers(tmp_path):
    async def main():
        venue, ini, s, rec = await pair(tmp_path)
        for i in range(5):
            s.send("D", order(i))
        await rec.wait(lambda: len(rec.of("8")) == 10)
        await ini.stop()
        await venue.stop()
        out, inn = s.next_out, s.next_in
        venue2, ini2, s2, rec2 = await pair(tmp_path)     # same stores: a restart
        assert (s2.next_out, s2.next_in) == (out + 1, inn + 1)   # after the Logons
        s2.send("D", order(9))
        await rec2.wait(lambda: len(rec2.of("8")) == 2)
        vs = venue2.acceptor.sessions["CLIENT"]
        assert vs.stats.seq_too_low == 0 and vs.stats.resend_requests_out == 0
        await ini2.stop()
        await venue2.stop()
    run(main())


def test_initiator_with_lost_store_is_logged_out(tmp_path):
    async def main():
        venue, ini, s, rec = await pair(tmp_path)
        s.send("D", order(1))
        await rec.wait(lambda: len(rec.of("8")) == 2)
        await ini.stop()
        fresh = FixInitiator(SessionConfig("CLIENT", "VENUE"), Recorder(), port=venue.port,
                             store=MemoryStore())     # numbers start at 1 again
        with pytest.raises(TimeoutError):
            await fresh.connect(timeout=1.0)
        vs = venue.acceptor.sessions["CLIENT"]
        assert vs.stats.seq_too_low == 1
        await fresh.stop()
        await venue.stop()
    run(main())


def test_bus_bridge_orders_in_fills_out(tmp_path):
    async def main():
        bus = MessageBus(name="fixbridge")
        venue = Venue(store_dir=None)
        port = await venue.start()
        raw_reports: list[str] = []
        fills = []
        bus.subscribe("fix.CLIENT-VENUE.in.8",
                      lambda m: raw_reports.append(parse(m.payload).get_str(150)))
        bus.subscribe("fix.CLIENT-VENUE.fills", lambda m: fills.append(FILL.decode(m.payload)))
        ini = FixInitiator(SessionConfig("CLIENT", "VENUE"), BusApplication(bus), port=port)
        session = await ini.start()
        subs = bind_outbound(bus, session)
        with bus.claim("fix.CLIENT-VENUE.orders", NEW_ORDER.size) as m:
            NEW_ORDER.encode_into(m.buffer, NewOrder(42, "AAPL", BUY, 101.25, 300, DAY, 1))
        with bus.claim("fix.CLIENT-VENUE.orders", CANCEL.size) as m:
            CANCEL.encode_into(m.buffer, Cancel(42, "AAPL", 2))
        bus.publish("fix.CLIENT-VENUE.send.D",
                    b"11=7\x0155=MSFT\x0154=2\x0138=5\x0140=2\x0144=50\x01"
                    b"60=20260101-00:00:00.000\x01")
        for _ in range(200):
            if len(fills) == 2:
                break
            await asyncio.sleep(0.01)
        assert sorted((f.order_id, f.symbol, f.qty, f.price) for f in fills) == \
            [(7, "MSFT", 5, 50.0), (42, "AAPL", 300, 101.25)]
        assert raw_reports.count("F") == 2 and raw_reports.count("0") == 2
        assert venue.app.stats.cancel_rejects == 1      # the order had filled already
        for sub in subs:
            sub.unsubscribe()
        await ini.stop()
        await venue.stop()
        bus.close()
    run(main())


def test_application_errors_are_counted(tmp_path):
    class Broken(Application):
        def on_message(self, session, msg):
            raise RuntimeError("strategy bug")

    async def main():
        venue, ini, s, _ = await pair(tmp_path)
        s.app = Broken()
        s.send("D", order(1))
        for _ in range(300):
            if s.stats.app_errors == 2:
                break
            await asyncio.sleep(0.01)
        assert s.stats.app_errors == 2 and s.is_logged_on     # ack and fill, session up
        await ini.stop()
        await venue.stop()
    run(main())
