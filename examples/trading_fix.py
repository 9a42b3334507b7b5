"""Trading demo over FIX 4.4: the order path through a real FIX session on loopback.

    python examples/trading_fix.py [--orders 2000] [--symbols 4]

The venue (``python -m hftalloc fix venue``) runs in its own process. This process runs a
small strategy on the message bus: it publishes binary NewOrder records on
``fix.<session>.orders``; the FIX initiator turns them into NewOrderSingle messages, and
the venue's ExecutionReports come back as Fill records on ``fix.<session>.fills`` (and as
raw FIX on ``fix.<session>.in.8``). It prints the order-to-fill latency, the session
statistics of both sides and the venue's report (printed by the venue on SIGINT).
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import subprocess
import sys
import time

from hftalloc import MessageBus
from hftalloc.fix.bridge import BusApplication, bind_outbound
from hftalloc.fix.endpoints import FixInitiator
from hftalloc.fix.session import SessionConfig
from hftalloc.histogram import Histogram
from hftalloc.loops import run
from hftalloc.schemas import BUY, DAY, FILL, NEW_ORDER, SELL, NewOrder

SYMBOLS = ["AAPL", "MSFT", "NVDA", "AMZN", "GOOG", "META", "TSLA", "AMD"]


async def trade(port: int, orders: int, symbols: list[str]) -> str:
    bus = MessageBus(name="fixdemo")
    sent_at: dict[int, int] = {}
    latency = Histogram()
    filled = 0
    done = asyncio.get_running_loop().create_future()

    def on_fill(msg) -> None:  # type: ignore[no-untyped-def]
        nonlocal filled
        fill = FILL.decode(msg.payload)
        t0 = sent_at.pop(fill.order_id, None)
        if t0 is not None:
            latency.record(time.perf_counter_ns() - t0)
        filled += 1
        if filled == orders and not done.done():
            done.set_result(None)

    ini = FixInitiator(SessionConfig("DEMO", "VENUE", reset_on_logon=True),
                       BusApplication(bus), port=port)
    session = await ini.start()
    topic = f"fix.{session.session_id}.orders"
    bus.subscribe(f"fix.{session.session_id}.fills", on_fill)
    subs = bind_outbound(bus, session)
    start = time.perf_counter()
    for i in range(orders):
        sym = symbols[i % len(symbols)]
        order = NewOrder(i + 1, sym, BUY if i % 2 == 0 else SELL, 100.0 + (i % 7) * 0.01,
                         100, DAY, time.time_ns())
        sent_at[order.order_id] = time.perf_counter_ns()
        with bus.claim(topic, NEW_ORDER.size) as m:
            NEW_ORDER.encode_into(m.buffer, order)
        if i % 64 == 63:
            await asyncio.sleep(0)          # let the reports in
    await asyncio.wait_for(done, 60)
    elapsed = time.perf_counter() - start
    for sub in subs:
        sub.unsubscribe()
    stats = session.stats
    await ini.stop()
    bus.close()
    lat = latency.summary()
    return "\n".join([
        f"FIX demo: {orders} orders on {len(symbols)} symbols -> {filled} fills in "
        f"{elapsed:.2f} s ({orders / elapsed:,.0f} orders/s)",
        f"  order -> fill (bus -> FIX -> venue -> FIX -> bus, bursts of 64): "
        f"p50={lat.p50 / 1e3:.0f} us p99={lat.p99 / 1e3:.0f} us max={lat.max / 1e3:.0f} us",
        f"  session {session.session_id}: {stats.format()}",
    ])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="hftalloc trading demo over FIX 4.4")
    parser.add_argument("--orders", type=int, default=2000)
    parser.add_argument("--symbols", type=int, default=4, choices=range(1, 9), metavar="1..8")
    args, _ = parser.parse_known_args(argv)
    venue = subprocess.Popen([sys.executable, "-m", "hftalloc", "fix", "venue", "--port", "0"],
                             stdout=subprocess.PIPE, text=True)
    try:
        assert venue.stdout is not None
        line = venue.stdout.readline()
        if not line.startswith("listening on"):
            print("the venue did not start", file=sys.stderr)
            return 1
        port = int(line.rsplit(":", 1)[1])
        print(run(trade(port, args.orders, SYMBOLS[:args.symbols])))
        venue.send_signal(signal.SIGINT)
        out, _ = venue.communicate(timeout=10)
        print(out.rstrip())
    finally:
        if venue.poll() is None:
            venue.kill()
            venue.wait()
    return 0 if venue.returncode == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
