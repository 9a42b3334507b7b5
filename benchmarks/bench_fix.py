"""hftalloc.fix against simplefix and QuickFIX's Python API, in the same run.

    python benchmarks/bench_fix.py            # about a minute
    python benchmarks/bench_fix.py --quick    # about 15 s, noisier

1. Codec: parse (and read 4 fields) and encode a NewOrderSingle and a 10-level
   MarketDataSnapshotFullRefresh (20 entries): hftalloc.fix vs simplefix vs QuickFIX
   (``quickfix.Message(str, dictionary, False)``, ``getField``; encoding builds the message
   with ``setField``/``addGroup`` and calls ``toString``). Best of ``--repeat`` runs, ns/op.
2. Order -> ExecutionReport round trip over loopback, one order in flight: hftalloc
   initiator <-> hftalloc venue (``python -m hftalloc fix venue --no-fill``, its own
   process) vs QuickFIX initiator <-> QuickFIX acceptor (each in its own process). The
   next order is sent from the report callback on both sides. p50/p99/p99.9 in µs.
3. Inbound stream into the bus: a loopback peer writes ExecutionReports as fast as it can;
   messages per second until the last one is on the bus, for this package's initiator with
   ``BusApplication`` (each message received into a claimed block and committed in place),
   the same session copying each message into a block (its own receive buffer), and a
   hand-written ``asyncio.Protocol`` + simplefix ``FixParser`` + ``bus.publish`` (no session
   layer at all). Best of ``--repeat`` runs.

A peer that is not installed is left out with a note (``pip install simplefix quickfix``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

NOS_FIELDS = [(11, "ord-123456"), (55, "AAPL"), (54, "1"), (38, 100), (40, "2"),
              (44, 189.25), (59, "0"), (60, "20260101-12:00:00.000")]


def snapshot_fields() -> list[tuple[int, Any]]:
    fields: list[tuple[int, Any]] = [(262, "md-1"), (55, "AAPL"), (268, 20)]
    for level in range(10):
        fields += [(269, "0"), (270, round(99.99 - 0.01 * level, 2)), (271, 100 * (level + 1))]
        fields += [(269, "1"), (270, round(100.01 + 0.01 * level, 2)), (271, 100 * (level + 1))]
    return fields


def best_ns(fn, n: int, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter_ns()
        fn(n)
        best = min(best, (time.perf_counter_ns() - t) / n)
    return best


# -- codec ------------------------------------------------------------------------------------
def codec_rows(n: int, repeat: int) -> list[tuple[str, str, dict[str, float]]]:
    from hftalloc.fix import FixEncoder, parse

    enc = FixEncoder("CLIENT", "VENUE")
    nos = enc.encode("D", 12345, NOS_FIELDS)
    snap = enc.encode("W", 12346, snapshot_fields())
    buf = bytearray(4096)
    rows = []
    n_peer = max(200, n // 10)   # the peers are 10-100x slower: fewer iterations, same timer

    def ours_parse_nos(k: int) -> None:
        for _ in range(k):
            m = parse(nos)
            m.msg_type, m.get_str(11), m.get_float(44), m.get_int(38)

    def ours_parse_snap(k: int) -> None:
        for _ in range(k):
            m = parse(snap)
            for e in m.group(268):
                e.get_float(270)

    def ours_encode_nos(k: int) -> None:
        for _ in range(k):
            enc.encode_into(buf, "D", 12345, NOS_FIELDS)

    snap_fields = snapshot_fields()

    def ours_encode_snap(k: int) -> None:
        for _ in range(k):
            enc.encode_into(buf, "W", 12346, snap_fields)

    results: dict[str, dict[str, float]] = {
        "parse NewOrderSingle": {"hftalloc.fix": best_ns(ours_parse_nos, n, repeat)},
        "parse W snapshot (20 entries)": {"hftalloc.fix": best_ns(ours_parse_snap, n // 4,
                                                                   repeat)},
        "encode NewOrderSingle": {"hftalloc.fix": best_ns(ours_encode_nos, n, repeat)},
        "encode W snapshot (20 entries)": {"hftalloc.fix": best_ns(ours_encode_snap, n // 4,
                                                                    repeat)},
    }
    try:
        import simplefix  # type: ignore[import-untyped]
    except ImportError:
        print("simplefix not installed: left out", file=sys.stderr)
    else:
        def sf_parse_nos(k: int) -> None:
            p = simplefix.FixParser()
            for _ in range(k):
                p.append_buffer(nos)
                m = p.get_message()
                m.get(35), m.get(11), float(m.get(44)), int(m.get(38))

        def sf_parse_snap(k: int) -> None:
            p = simplefix.FixParser()
            for _ in range(k):
                p.append_buffer(snap)
                m = p.get_message()
                for i in range(1, 21):
                    float(m.get(270, i))

        def sf_encode(fields, mt):
            def run(k: int) -> None:
                for _ in range(k):
                    m = simplefix.FixMessage()
                    m.append_pair(8, "FIX.4.4")
                    m.append_pair(35, mt)
                    m.append_pair(49, "CLIENT")
                    m.append_pair(56, "VENUE")
                    m.append_pair(34, 12345)
                    m.append_utc_timestamp(52, precision=3)
                    for tag, value in fields:
                        m.append_pair(tag, value)
                    m.encode()
            return run
        sf = results
        sf["parse NewOrderSingle"]["simplefix"] = best_ns(sf_parse_nos, n_peer, repeat)
        sf["parse W snapshot (20 entries)"]["simplefix"] = best_ns(sf_parse_snap, n_peer // 4,
                                                                   repeat)
        sf["encode NewOrderSingle"]["simplefix"] = best_ns(sf_encode(NOS_FIELDS, "D"), n_peer,
                                                           repeat)
        sf["encode W snapshot (20 entries)"]["simplefix"] = best_ns(
            sf_encode(snap_fields, "W"), n_peer // 4, repeat)
    try:
        import quickfix as fix  # type: ignore[import-untyped]
        import quickfix44 as fix44  # type: ignore[import-untyped]
    except ImportError:
        print("quickfix not installed: left out", file=sys.stderr)
    else:
        dd = fix.DataDictionary(_data_dictionary())
        nos_s, snap_s = nos.decode(), snap.decode()

        def qf_parse_nos(k: int) -> None:
            for _ in range(k):
                m = fix.Message(nos_s, dd, False)
                m.getHeader().getField(35), m.getField(11), float(m.getField(44)), \
                    int(m.getField(38))

        def qf_parse_snap(k: int) -> None:
            g = fix44.MarketDataSnapshotFullRefresh.NoMDEntries()
            for _ in range(k):
                m = fix.Message(snap_s, dd, False)
                for i in range(1, 21):
                    m.getGroup(i, g)
                    float(g.getField(270))

        def qf_encode_nos(k: int) -> None:
            for _ in range(k):
                m = fix44.NewOrderSingle()
                h = m.getHeader()
                h.setField(49, "CLIENT")
                h.setField(56, "VENUE")
                h.setField(34, "12345")
                h.setField(fix.SendingTime())
                for tag, value in NOS_FIELDS:
                    m.setField(tag, str(value))
                m.toString()

        def qf_encode_snap(k: int) -> None:
            for _ in range(k):
                m = fix44.MarketDataSnapshotFullRefresh()
                h = m.getHeader()
                h.setField(49, "CLIENT")
                h.setField(56, "VENUE")
                h.setField(34, "12346")
                h.setField(fix.SendingTime())
                m.setField(262, "md-1")
                m.setField(55, "AAPL")
                for i in range(3, len(snap_fields), 3):
                    kind, px, qty = (v for _, v in snap_fields[i:i + 3])
                    g = fix44.MarketDataSnapshotFullRefresh.NoMDEntries()
                    g.setField(269, kind)
                    g.setField(270, str(px))
                    g.setField(271, str(qty))
                    m.addGroup(g)
                m.toString()
        qf = results
        qf["parse NewOrderSingle"]["quickfix"] = best_ns(qf_parse_nos, n_peer, repeat)
        qf["parse W snapshot (20 entries)"]["quickfix"] = best_ns(qf_parse_snap, n_peer // 4,
                                                                  repeat)
        qf["encode NewOrderSingle"]["quickfix"] = best_ns(qf_encode_nos, n_peer, repeat)
        qf["encode W snapshot (20 entries)"]["quickfix"] = best_ns(qf_encode_snap, n_peer // 4,
                                                                   repeat)
    for name, row in results.items():
        rows.append(("codec", name, row))
    return rows


def _data_dictionary() -> str:
    import quickfix
    for c in (Path(sys.prefix) / "share" / "quickfix" / "FIX44.xml",
              Path(quickfix.__file__).resolve().parent / "spec" / "FIX44.xml"):
        if c.exists():
            return str(c)
    raise FileNotFoundError("QuickFIX's FIX44.xml is not installed")


# -- round trip -------------------------------------------------------------------------------
def percentiles(samples_ns: list[int]) -> dict[str, float]:
    s = sorted(samples_ns)

    def q(p: float) -> float:
        return s[min(len(s) - 1, int(p * len(s)))] / 1000.0
    return {"p50": q(0.50), "p99": q(0.99), "p99.9": q(0.999), "n": len(s)}


def ours_round_trip(n: int, warmup: int) -> dict[str, float]:
    import asyncio

    from hftalloc.fix.endpoints import FixInitiator
    from hftalloc.fix.session import Application, SessionConfig
    from hftalloc.loops import run

    proc = subprocess.Popen([sys.executable, "-m", "hftalloc", "fix", "venue", "--port", "0",
                             "--no-fill"], stdout=subprocess.PIPE, text=True)
    try:
        port = int(proc.stdout.readline().rsplit(":", 1)[1])  # type: ignore[union-attr]
        samples: list[int] = []

        class Pinger(Application):
            def __init__(self) -> None:
                self.i = 0
                self.t0 = 0
                self.done: asyncio.Future[None] | None = None
                self.session: Any = None

            def fire(self) -> None:
                self.t0 = time.perf_counter_ns()
                self.session.send("D", [(11, f"b{self.i}"), *NOS_FIELDS[1:]])

            def on_message(self, session, msg) -> None:  # type: ignore[no-untyped-def]
                if msg.msg_type != "8":
                    return
                if self.i >= warmup:
                    samples.append(time.perf_counter_ns() - self.t0)
                self.i += 1
                if self.i < n + warmup:
                    self.fire()
                elif self.done is not None and not self.done.done():
                    self.done.set_result(None)

        async def main() -> None:
            app = Pinger()
            ini = FixInitiator(SessionConfig("BENCH", "VENUE"), app, port=port)
            app.session = await ini.start()
            app.done = asyncio.get_running_loop().create_future()
            app.fire()
            await asyncio.wait_for(app.done, 120)
            await ini.stop()
        run(main())
        return percentiles(samples)
    finally:
        proc.terminate()
        proc.wait(10)


QF_CFG = """[DEFAULT]
ConnectionType={kind}
ReconnectInterval=1
FileStorePath={store}
StartTime=00:00:00
EndTime=00:00:00
UseDataDictionary=Y
DataDictionary={dd}
HeartBtInt=30
ResetOnLogon=Y
{socket}
[SESSION]
BeginString=FIX.4.4
SenderCompID={sender}
TargetCompID={target}
"""


def _qf_child(role: str, port: int, n: int, warmup: int) -> None:
    """QuickFIX acceptor (acks every order) or initiator (ping-pong); prints JSON."""
    import threading

    import quickfix as fix
    import quickfix44 as fix44

    tmp = tempfile.mkdtemp(prefix="qfbench")
    sock = (f"SocketAcceptAddress=127.0.0.1\nSocketAcceptPort={port}" if role == "acceptor"
            else f"SocketConnectHost=127.0.0.1\nSocketConnectPort={port}")
    cfg = Path(tmp) / "qf.cfg"
    cfg.write_text(QF_CFG.format(kind=role, store=tmp, dd=_data_dictionary(), socket=sock,
                                 sender="QFV" if role == "acceptor" else "QFB",
                                 target="QFB" if role == "acceptor" else "QFV"))
    samples: list[int] = []
    done = threading.Event()
    logged = threading.Event()

    class App(fix.Application):
        sid: Any = None
        i = 0
        t0 = 0

        def onCreate(self, sid):  # type: ignore[no-untyped-def]
            self.sid = fix.SessionID(sid.getBeginString().getValue(),
                                     sid.getSenderCompID().getValue(),
                                     sid.getTargetCompID().getValue())

        def onLogon(self, sid):  # type: ignore[no-untyped-def]
            logged.set()

        def onLogout(self, sid): pass  # type: ignore[no-untyped-def]
        def toAdmin(self, m, sid): pass  # type: ignore[no-untyped-def]
        def fromAdmin(self, m, sid): pass  # type: ignore[no-untyped-def]
        def toApp(self, m, sid): pass  # type: ignore[no-untyped-def]

        def fire(self) -> None:
            m = fix44.NewOrderSingle()
            m.setField(11, f"b{self.i}")
            for tag, value in NOS_FIELDS[1:]:
                m.setField(tag, str(value))
            self.t0 = time.perf_counter_ns()
            fix.Session.sendToTarget(m, self.sid)

        def fromApp(self, m, sid):  # type: ignore[no-untyped-def]
            if role == "acceptor":
                self.i += 1
                er = fix44.ExecutionReport()
                for tag, value in ((37, f"Q{self.i}"), (17, f"X{self.i}"), (150, "0"),
                                   (39, "0"), (55, m.getField(55)), (54, m.getField(54)),
                                   (151, m.getField(38)), (14, 0), (6, 0),
                                   (11, m.getField(11))):
                    er.setField(tag, str(value))
                fix.Session.sendToTarget(er, self.sid)
                return
            if self.i >= warmup:
                samples.append(time.perf_counter_ns() - self.t0)
            self.i += 1
            if self.i < n + warmup:
                self.fire()
            else:
                done.set()

    app = App()
    settings = fix.SessionSettings(str(cfg))
    engine = (fix.SocketAcceptor if role == "acceptor" else fix.SocketInitiator)(
        app, fix.MemoryStoreFactory(), settings)
    engine.start()
    if role == "acceptor":
        print("ready", flush=True)
        sys.stdin.readline()          # until the parent closes stdin
    else:
        logged.wait(20)
        app.fire()
        done.wait(300)
        print(json.dumps(percentiles(samples)), flush=True)
    os._exit(0)                       # QuickFIX's stop() is not needed for a benchmark peer


def quickfix_round_trip(n: int, warmup: int) -> dict[str, float] | None:
    try:
        import quickfix  # noqa: F401
    except ImportError:
        print("quickfix not installed: left out", file=sys.stderr)
        return None
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    me = os.path.abspath(__file__)
    acc = subprocess.Popen([sys.executable, me, "--qf-child", "acceptor", "--port", str(port)],
                           stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert acc.stdout is not None and acc.stdout.readline().strip() == "ready"
        out = subprocess.run([sys.executable, me, "--qf-child", "initiator", "--port",
                              str(port), "--n", str(n), "--warmup", str(warmup)],
                             capture_output=True, text=True, timeout=600)
        return json.loads(out.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]
    finally:
        if acc.stdin is not None:
            acc.stdin.close()
        acc.wait(10)


# -- inbound stream ---------------------------------------------------------------------------
def _report_stream(n: int) -> bytes:
    from hftalloc.fix import FixEncoder

    enc = FixEncoder("VENUE", "CLIENT")
    return b"".join(enc.encode("8", 2 + i, [
        (37, f"o{i}"), (17, f"e{i}"), (150, "0"), (39, "0"), (55, "AAPL"), (54, "1"),
        (151, 100), (14, 0), (6, 0), (11, f"c{i}"), (38, 100), (44, 189.25)])
        for i in range(n))


def inbound_rows(n: int, repeat: int) -> dict[str, float]:
    """Messages per second from the socket onto the bus (see the module docstring)."""
    import asyncio

    from hftalloc import MessageBus
    from hftalloc.fix import FixEncoder, frame
    from hftalloc.fix.bridge import BusApplication
    from hftalloc.fix.endpoints import FixInitiator
    from hftalloc.fix.session import SessionConfig
    from hftalloc.loops import run

    stream = _report_stream(n)

    class CopyingBusApplication(BusApplication):
        inbound_bus = None            # no blocks for the connection: it copies

    async def serve(logon: bool) -> tuple[Any, int]:
        async def handle(reader: Any, writer: Any) -> None:
            if logon:
                buf = b""
                while not frame(buf)[1]:
                    buf += await reader.read(4096)
                writer.write(FixEncoder("VENUE", "CLIENT").encode("A", 1, [(98, 0),
                                                                          (108, 30)]))
            for at in range(0, len(stream), 65536):
                writer.write(stream[at:at + 65536])
                await writer.drain()
            await reader.read()       # until the client closes
            writer.close()
        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        return server, server.sockets[0].getsockname()[1]

    async def ours(in_place: bool) -> float:
        bus = MessageBus(name="bench-in", blocks_per_class=4096)
        done = asyncio.get_running_loop().create_future()
        count = [0, 0]

        def on_report(msg: Any) -> None:
            if count[0] == 0:
                count[1] = time.perf_counter_ns()
            count[0] += 1
            if count[0] == n and not done.done():
                done.set_result(time.perf_counter_ns())
        bus.subscribe("fix.CLIENT-VENUE.in.8", on_report)
        server, port = await serve(True)
        app = BusApplication(bus, fills=False) if in_place else \
            CopyingBusApplication(bus, fills=False)
        ini = FixInitiator(SessionConfig("CLIENT", "VENUE"), app, port=port)
        s = await ini.start()
        t_end = await asyncio.wait_for(done, 120)
        if in_place:
            assert s.stats.inbound_copied == 0, s.stats.format()
        s.close()
        server.close()
        await asyncio.sleep(0.01)
        bus.close()
        return n / ((t_end - count[1]) / 1e9)

    async def simplefix_protocol() -> float:
        import simplefix  # type: ignore[import-untyped]

        bus = MessageBus(name="bench-sf", blocks_per_class=4096)
        done = asyncio.get_running_loop().create_future()
        count = [0, 0]

        def on_report(msg: Any) -> None:
            if count[0] == 0:
                count[1] = time.perf_counter_ns()
            count[0] += 1
            if count[0] == n and not done.done():
                done.set_result(time.perf_counter_ns())
        bus.subscribe("fix.sf.in.8", on_report)

        class Receiver(asyncio.Protocol):
            def __init__(self) -> None:
                self.parser = simplefix.FixParser()

            def data_received(self, data: bytes) -> None:
                self.parser.append_buffer(data)
                while (m := self.parser.get_message()) is not None:
                    bus.publish("fix.sf.in." + m.get(35).decode(), m.encode(True))

        server, port = await serve(False)
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_connection(Receiver, "127.0.0.1", port)
        t_end = await asyncio.wait_for(done, 120)
        transport.close()
        server.close()
        await asyncio.sleep(0.01)
        bus.close()
        return n / ((t_end - count[1]) / 1e9)

    rows: dict[str, float] = {}
    cases: list[tuple[str, Any]] = [
        ("hftalloc.fix, received into bus blocks", lambda: ours(True)),
        ("hftalloc.fix, own buffer + copy into bus", lambda: ours(False))]
    try:
        import simplefix  # noqa: F401
        cases.append(("asyncio.Protocol + simplefix + publish", simplefix_protocol))
    except ImportError:
        print("simplefix not installed: left out", file=sys.stderr)
    for name, make in cases:
        rows[name] = max(run(make()) for _ in range(repeat))
    return rows


# -- report -----------------------------------------------------------------------------------
def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--qf-child", choices=("acceptor", "initiator"), help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--n", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--warmup", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.qf_child:
        _qf_child(args.qf_child, args.port, args.n, args.warmup)
        return 0
    n_codec = 10_000 if args.quick else 50_000
    n_rt, warm = (2_000, 200) if args.quick else (10_000, 1_000)
    repeat = 3 if args.quick else args.repeat
    print(f"# bench_fix ({'quick' if args.quick else 'full'}), Python {sys.version.split()[0]}")
    print(f"\n## codec: ns per message (best of {repeat}), ratio = peer / hftalloc.fix")
    print(f"{'case':34} {'hftalloc.fix':>13} {'simplefix':>17} {'quickfix':>17}")
    for _, name, row in codec_rows(n_codec, repeat):
        ours = row["hftalloc.fix"]
        cells = [f"{ours:11.0f} ns"]
        for peer in ("simplefix", "quickfix"):
            v = row.get(peer)
            cells.append(f"{v:8.0f} ns {v / ours:5.1f}x" if v else f"{'-':>17}")
        print(f"{name:34} {cells[0]:>13} {cells[1]:>17} {cells[2]:>17}")
    n_in = 20_000 if args.quick else 100_000
    print(f"\n## inbound stream onto the bus: messages/s ({n_in} ExecutionReports, best of "
          f"{repeat}), ratio = hftalloc in blocks / row")
    inbound = inbound_rows(n_in, repeat)
    best = inbound["hftalloc.fix, received into bus blocks"]
    for name, rate in inbound.items():
        print(f"{name:44} {rate / 1e3:9.0f}k/s {best / rate:6.2f}x")
    print(f"\n## order -> ExecutionReport round trip over loopback, µs ({n_rt} orders, "
          f"{warm} warm-up)")
    ours_rt = ours_round_trip(n_rt, warm)
    qf_rt = quickfix_round_trip(n_rt, warm)
    print(f"{'pair':44} {'p50':>8} {'p99':>8} {'p99.9':>8}")
    print(f"{'hftalloc initiator <-> hftalloc venue':44} {ours_rt['p50']:8.1f} "
          f"{ours_rt['p99']:8.1f} {ours_rt['p99.9']:8.1f}")
    if qf_rt:
        print(f"{'QuickFIX initiator <-> QuickFIX acceptor':44} {qf_rt['p50']:8.1f} "
              f"{qf_rt['p99']:8.1f} {qf_rt['p99.9']:8.1f}")
        print(f"{'ratio QuickFIX / hftalloc':44} {qf_rt['p50'] / ours_rt['p50']:7.2f}x "
              f"{qf_rt['p99'] / ours_rt['p99']:7.2f}x {qf_rt['p99.9'] / ours_rt['p99.9']:7.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
