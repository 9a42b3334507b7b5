"""Trading demo across processes: feed, strategy and exchange gateway over shared memory.

    python examples/trading_processes.py                    # 10 s
    python examples/trading_processes.py --duration 2 --rate 20000

The components of ``trading_demo.py`` (Feed, Books, Strategy, ExchangeGateway,
Portfolio) run unchanged, each process with its own MessageBus; ``ShmBridge``\\s join
the buses through four shared-memory channels (single producer, single consumer each)::

    feed ──md.>──────────▶ strategy ──ord.new.* / ord.cancel.*──▶ gateway
      └───md.quote.*─────────────────────────────────────────────▶  │
                           strategy ◀──────────ord.fill.*───────────┘

The parent creates the channels (and unlinks them at the end, even on errors), starts
the three processes, shows progress from the channel counters and prints each side's
report. ``main(argv)`` is the entry point (``trading_demo.py --processes`` calls it).
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing as mp
import os
import queue
import sys
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

import trading_demo as demo  # noqa: E402

from hftalloc import MessageBus  # noqa: E402
from hftalloc.bridge import ShmBridge  # noqa: E402
from hftalloc.shm import Channel  # noqa: E402
from hftalloc.shm.status import segment_status  # noqa: E402

SYMBOLS = ["AAPL", "MSFT", "NVDA", "AMZN", "GOOG", "META", "TSLA", "JPM", "XOM", "KO", "PEP",
           "WMT", "INTC", "AMD", "ORCL", "IBM"]
ROUTES = {  # channel -> (producer, consumer, topics)
    "md-strategy": ("feed", "strategy", ["md.>"]),
    "md-gateway": ("feed", "gateway", ["md.quote.*"]),
    "orders": ("strategy", "gateway", ["ord.new.*", "ord.cancel.*"]),
    "fills": ("gateway", "strategy", ["ord.fill.*"]),
}


def _bridge(role: str, bus: MessageBus, names: dict[str, str], timeout: float) -> ShmBridge:
    bridge = ShmBridge(bus, policy="block", timeout=timeout)
    for key, (producer, consumer, topics) in ROUTES.items():
        if producer == role:
            bridge.forward(names[key], topics)
        elif consumer == role:
            bridge.receive(names[key])
    return bridge


def _bridge_report(bridge: ShmBridge, bus: MessageBus) -> dict[str, Any]:
    stats = bus.stats()
    return {
        "bus_published": stats.published, "bus_delivered": stats.delivered,
        "bus_dropped": stats.dropped, "bus_rejected": stats.rejected, "errors": stats.errors,
        "sent": bridge.sent, "received": bridge.received,
        "channels": {e.name: e.stats() for e in (*bridge.writers, *bridge.readers)},
        "pools": [(p.block_size, p.high_water) for p in stats.pools if p.high_water],
    }


def _drain(bridge: ShmBridge, quiet_for: float = 0.1, limit: float = 5.0) -> None:
    """Poll until nothing arrived for ``quiet_for`` seconds (bounded by ``limit``)."""
    deadline = time.monotonic() + limit
    last = time.monotonic()
    while time.monotonic() < deadline and time.monotonic() - last < quiet_for:
        if bridge.poll():
            last = time.monotonic()
        else:
            bridge.wait(0.01)


# -- the three processes --------------------------------------------------------------------------
def feed_process(names: dict[str, str], args: argparse.Namespace, stop: Any, results: Any,
                 ) -> None:
    bus = MessageBus(blocks_per_class=args.blocks_per_class, name="feed")
    bridge = _bridge("feed", bus, names, args.timeout)
    feed = demo.Feed(bus, SYMBOLS[: args.symbols], args.seed)
    results.put(("ready", "feed"))
    start = time.perf_counter()
    while not stop.is_set():
        elapsed = time.perf_counter() - start
        if elapsed >= args.duration:
            break
        due = int(elapsed * args.rate) - feed.count if args.rate else 256
        if due <= 0:
            time.sleep(0.0005)
        for _ in range(min(due, 256)):
            feed.step()
    elapsed = time.perf_counter() - start
    results.put(("feed", {"elapsed": elapsed, "quotes": feed.count,
                          **_bridge_report(bridge, bus)}))
    bridge.close()
    bus.close()


def strategy_process(names: dict[str, str], args: argparse.Namespace, stop: Any, results: Any,
                     ) -> None:
    bus = MessageBus(blocks_per_class=args.blocks_per_class, name="strategy")
    symbols = SYMBOLS[: args.symbols]
    books = demo.Books(bus, symbols)
    strategy = demo.Strategy(bus, books, symbols)
    portfolio = demo.Portfolio(books)
    portfolio.subscribe(bus)
    bridge = _bridge("strategy", bus, names, args.timeout)
    results.put(("ready", "strategy"))
    while not stop.is_set():
        if not bridge.poll():
            bridge.wait(0.01)
    _drain(bridge)
    results.put(("strategy", {
        "orders": strategy.orders, "cancels": strategy.cancels, "pnl": portfolio.pnl(),
        "traded_qty": portfolio.traded_qty,
        "positions": {s: q for s, q in sorted(portfolio.position.items()) if q},
        **_bridge_report(bridge, bus)}))
    bridge.close()
    bus.close()


def gateway_process(names: dict[str, str], args: argparse.Namespace, stop: Any, results: Any,
                    ) -> None:
    bus = MessageBus(blocks_per_class=args.blocks_per_class, name="gateway")
    books = demo.Books(bus, SYMBOLS[: args.symbols])
    gateway = demo.ExchangeGateway(bus, books)
    bridge = _bridge("gateway", bus, names, args.timeout)
    results.put(("ready", "gateway"))
    while not stop.is_set():
        if not bridge.poll():
            bridge.wait(0.01)
    _drain(bridge)
    results.put(("gateway", {"fills": gateway.fills, "cancelled": gateway.cancelled,
                             "resting": len(gateway.resting), **_bridge_report(bridge, bus)}))
    bridge.close()
    bus.close()


PROCESSES = {"feed": feed_process, "strategy": strategy_process, "gateway": gateway_process}


# -- the parent -----------------------------------------------------------------------------------
def progress(names: dict[str, str], elapsed: float, duration: float, tty: bool) -> None:
    counts = {key: segment_status(name).published for key, name in names.items()}
    elapsed = min(elapsed, duration)
    line = (f"[{'#' * int(elapsed / duration * 30):<30}] {elapsed:5.1f}/{duration:.1f}"
            " s  " + "  ".join(f"{k}={v:,}" for k, v in counts.items()))
    print(("\r" + line) if tty else line, end="" if tty else "\n", flush=True)


def report(results: dict[str, dict[str, Any]], elapsed: float) -> str:
    feed, strat, gw = results["feed"], results["strategy"], results["gateway"]
    rate = feed["bus_published"] / feed["elapsed"]
    lines = ["", f"== trading demo over processes: {elapsed:.2f} s (feed, strategy, gateway)",
             f"feed            : {feed['quotes']:,} quote steps, {feed['bus_published']:,} "
             f"messages ({rate:,.0f} msgs/s)"]
    for role, res in (("feed", feed), ("strategy", strat), ("gateway", gw)):
        for name, ch in res["channels"].items():
            if ch.role == "consumer":
                lat = ch.latency
                key = next(k for k in ROUTES if name.endswith("-" + k))
                lines.append(
                    f"{key:<16}: {ch.received:,} received by {role}, gaps={ch.gaps} "
                    f"dropped={ch.dropped} waits={ch.waits}; cross-process latency "
                    f"p50={lat.p50 / 1e3:.1f} µs p99={lat.p99 / 1e3:.1f} µs "
                    f"p99.9={lat.p999 / 1e3:.1f} µs")
    lines += [
        f"trading         : orders={strat['orders']:,} fills={gw['fills']:,} "
        f"cancels={strat['cancels']:,} (exchange cancelled {gw['cancelled']:,}, "
        f"{gw['resting']} resting) traded qty={strat['traded_qty']:,}",
        f"P&L             : {strat['pnl']:+,.2f}  positions: "
        + ", ".join(f"{s}={q:+}" for s, q in strat["positions"].items()),
        "errors          : " + ", ".join(
            f"{r}: subscriber errors={res['errors']} bus drops={res['bus_dropped']} "
            f"rejected={res['bus_rejected']}" for r, res in results.items()),
        "pool high water : " + "; ".join(
            f"{r} " + ", ".join(f"{size} B:{hw}" for size, hw in res["pools"])
            for r, res in results.items()),
    ]
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="hftalloc trading demo across processes")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds to run (10)")
    parser.add_argument("--rate", type=float, default=50_000,
                        help="target quote steps per second, 0 = as fast as possible (50000)")
    parser.add_argument("--symbols", type=int, default=8, choices=range(1, 17), metavar="1..16")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--blocks-per-class", type=int, default=1024)
    parser.add_argument("--ring", type=int, default=4096, help="descriptors per channel")
    parser.add_argument("--timeout", type=float, default=5.0,
                        help="seconds a publisher waits for room in a full channel")
    parser.add_argument("--quiet", action="store_true", help="no progress line")
    args, _ = parser.parse_known_args(argv)  # tolerate trading_demo's own flags
    if args.duration <= 0:
        parser.error("--duration must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    ctx = mp.get_context("spawn")
    run_id = f"{os.getpid()}-{int(time.time() * 1000) % 100000}"
    names = {key: f"demo-{run_id}-{key}" for key in ROUTES}
    stop = ctx.Event()
    results_queue = ctx.Queue()
    procs = []
    with contextlib.ExitStack() as stack:
        for name in names.values():
            stack.enter_context(Channel(name, ring_capacity=args.ring,
                                        blocks_per_class=args.blocks_per_class, num_classes=6))
        # consumers first, so nothing waits on an empty role for long
        for role in ("gateway", "strategy", "feed"):
            proc = ctx.Process(target=PROCESSES[role], args=(names, args, stop, results_queue),
                               name=f"demo-{role}")
            proc.start()
            procs.append(proc)
        try:
            # the run starts once every process has attached (starting them takes a while)
            ready: set[str] = set()
            deadline = time.monotonic() + args.timeout + 60
            while len(ready) < len(procs):
                if not all(p.is_alive() for p in procs) or time.monotonic() > deadline:
                    raise RuntimeError(f"the demo processes did not start (ready: {sorted(ready)})")
                with contextlib.suppress(queue.Empty):
                    ready.add(results_queue.get(timeout=0.5)[1])
            tty = sys.stdout.isatty() and not args.quiet
            start = time.perf_counter()
            while time.perf_counter() - start < args.duration:
                if not all(p.is_alive() for p in procs[:2]):
                    break
                time.sleep(0.2 if tty else 1.0)
                if not args.quiet:
                    progress(names, time.perf_counter() - start, args.duration, tty)
            stop.set()
            results: dict[str, dict[str, Any]] = {}
            while len(results) < 3:
                role, data = results_queue.get(timeout=args.timeout + 15)
                results[role] = data
            elapsed = time.perf_counter() - start
            for proc in procs:
                proc.join(10)
        finally:
            stop.set()
            for proc in procs:
                if proc.is_alive():
                    proc.terminate()
                    proc.join(5)
                if proc.is_alive():
                    proc.kill()
                    proc.join(5)
        if tty:
            print()
        print(report(results, elapsed))
    return 0 if all(p.exitcode == 0 for p in procs) else 1


if __name__ == "__main__":
    raise SystemExit(main())
