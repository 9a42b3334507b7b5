"""Trading demo: synthetic feed -> MessageBus -> books -> strategy -> exchange -> P&L.

    python examples/trading_demo.py                 # 10 s, sync bus
    python examples/trading_demo.py --mode async    # asyncio drain task (uvloop if installed)
    python examples/trading_demo.py --duration 1 --rate 50000 --symbols 4
    python examples/trading_demo.py --record run.journal   # keep the market data
    python examples/trading_demo.py --replay run.journal   # same orders, fills and P&L
    python examples/trading_demo.py --plot latency.png     # latency percentile curve

A seeded random walk quotes several symbols (plus trades and variable-size depth
snapshots, so several size classes are used). Per-symbol order books follow the
quotes; a mean-reversion strategy sends IOC orders and passive DAY orders it later
cancels; a simulated exchange gateway answers with fills; a portfolio tracks
positions and P&L. Every message is a fixed-layout binary record encoded in place in
a pool block (``hftalloc.schemas``). At the end the bus reports throughput,
publish->deliver latency percentiles, pool usage per size class with high-water marks,
and drops.

``--record PATH`` journals every market-data message (``md.>``, with the bus's publish
stamps) through :class:`hftalloc.journal.Recorder`; ``--replay PATH`` feeds a recorded
journal into the same books, strategy and exchange instead of the random walk: the
strategy and the exchange are deterministic, so a replay of a sync run prints the same
orders, fills and P&L lines. ``--plot PATH`` draws the publish->deliver latency
percentile curve (needs matplotlib).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import struct
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from hftalloc import JournalError, MessageBus, loop_factory
from hftalloc import schemas as S

TICK = 0.01
SNAPSHOT = struct.Struct("<BBHI8sHH")  # version, type=100, flags, size, symbol, bids, asks
LEVEL = struct.Struct("<dI")  # price, qty
SNAPSHOT_TYPE = 100


# -- market data --------------------------------------------------------------------------
class Feed:
    """Seeded random walk of mid prices; publishes quotes, trades and depth snapshots."""

    def __init__(self, bus: MessageBus, symbols: list[str], seed: int) -> None:
        self.bus = bus
        self.rng = random.Random(seed)
        self.symbols = symbols
        self.mids = [round(self.rng.uniform(20, 500), 2) for _ in symbols]
        self.quote_topics = [f"md.quote.{s}" for s in symbols]
        self.trade_topics = [f"md.trade.{s}" for s in symbols]
        self.book_topics = [f"md.book.{s}" for s in symbols]
        self.raw_symbols = [s.encode() for s in symbols]
        self.count = 0
        self.trade_id = 0

    def step(self) -> None:
        """Move one symbol's mid and publish its quote (sometimes a trade or a snapshot)."""
        i = self.count % len(self.symbols)
        self.count += 1
        rng = self.rng
        mid = max(TICK, self.mids[i] + rng.gauss(0.0, 2.0) * TICK)
        self.mids[i] = mid
        half = rng.randint(1, 3) * TICK / 2
        msg = self.bus.claim(self.quote_topics[i], S.QUOTE.size)
        if msg is not None:
            with msg:
                S.QUOTE.pack_into(msg.buffer, 0, self.raw_symbols[i], mid - half,
                                  rng.randint(1, 50) * 100, mid + half, rng.randint(1, 50) * 100,
                                  time.perf_counter_ns())
        if self.count % 7 == 0:
            self.trade_id += 1
            msg = self.bus.claim(self.trade_topics[i], S.TRADE.size)
            if msg is not None:
                with msg:
                    S.TRADE.pack_into(msg.buffer, 0, self.raw_symbols[i], mid,
                                      rng.randint(1, 10) * 100, rng.choice((S.BUY, S.SELL)),
                                      self.trade_id, time.perf_counter_ns())
        if self.count % 97 == 0:
            self.snapshot(i, mid, rng.randint(4, 80))

    def snapshot(self, i: int, mid: float, depth: int) -> None:
        """A variable-size depth snapshot (hundreds of bytes to ~2 KiB)."""
        size = SNAPSHOT.size + 2 * depth * LEVEL.size
        msg = self.bus.claim(self.book_topics[i], size)
        if msg is None:
            return
        with msg:
            buf = msg.buffer
            SNAPSHOT.pack_into(buf, 0, S.VERSION, SNAPSHOT_TYPE, 0, size, self.raw_symbols[i],
                               depth, depth)
            off = SNAPSHOT.size
            for level in range(depth):
                LEVEL.pack_into(buf, off, mid - (level + 1) * TICK, 100 * (level + 1))
                LEVEL.pack_into(buf, off + LEVEL.size, mid + (level + 1) * TICK, 100 * (level + 1))
                off += 2 * LEVEL.size


@dataclass
class Book:
    """Top of book and depth summary for one symbol."""

    bid: float = 0.0
    ask: float = 0.0
    bid_qty: int = 0
    ask_qty: int = 0
    last_trade: float = 0.0
    depth_levels: int = 0
    updates: int = 0

    @property
    def mid(self) -> float:
        return (self.bid + self.ask) / 2


class Books:
    """One book per symbol, kept up to date from quotes, trades and snapshots."""

    def __init__(self, bus: MessageBus, symbols: list[str]) -> None:
        self.books = {s: Book() for s in symbols}
        bus.subscribe("md.quote.*", self.on_quote)
        bus.subscribe("md.trade.*", self.on_trade)
        bus.subscribe("md.book.*", self.on_snapshot)

    def on_quote(self, msg) -> None:  # type: ignore[no-untyped-def]
        _, bid, bid_qty, ask, ask_qty, _ = S.QUOTE.unpack_from(msg.payload)
        book = self.books[msg.topic[9:]]
        book.bid, book.bid_qty, book.ask, book.ask_qty = bid, bid_qty, ask, ask_qty
        book.updates += 1

    def on_trade(self, msg) -> None:  # type: ignore[no-untyped-def]
        self.books[msg.topic[9:]].last_trade = S.TRADE.unpack_from(msg.payload)[1]

    def on_snapshot(self, msg) -> None:  # type: ignore[no-untyped-def]
        *_, bids, asks = SNAPSHOT.unpack_from(msg.payload)
        self.books[msg.topic[8:]].depth_levels = bids + asks


# -- trading ------------------------------------------------------------------------------------
class Strategy:
    """Mean reversion on the mid: IOC orders on large deviations, passive DAY orders cancelled
    after a while."""

    def __init__(self, bus: MessageBus, books: Books, symbols: list[str], limit: int = 2000):
        self.bus = bus
        self.books = books
        self.limit = limit
        self.ema = {s: 0.0 for s in symbols}
        self.position = {s: 0 for s in symbols}
        self.resting: dict[str, list[tuple[int, int]]] = {s: [] for s in symbols}
        self.last_trade: dict[str, int] = {}
        self.next_id = 1
        self.orders = 0
        self.cancels = 0
        bus.subscribe("md.quote.*", self.on_quote)
        bus.subscribe("ord.fill.*", self.on_fill)

    def on_quote(self, msg) -> None:  # type: ignore[no-untyped-def]
        symbol = msg.topic[9:]
        book = self.books.books[symbol]
        mid = book.mid
        ema = self.ema[symbol]
        if ema == 0.0:
            self.ema[symbol] = mid
            return
        self.ema[symbol] = ema = ema + 0.05 * (mid - ema)
        deviation = (mid - ema) / TICK
        pos = self.position[symbol]
        cooled = book.updates - self.last_trade.get(symbol, -100) >= 20
        if cooled and deviation > 5 and pos > -self.limit:
            self.last_trade[symbol] = book.updates
            self.send(symbol, S.SELL, book.bid, 100, S.IOC)
        elif cooled and deviation < -5 and pos < self.limit:
            self.last_trade[symbol] = book.updates
            self.send(symbol, S.BUY, book.ask, 100, S.IOC)
        elif book.updates % 25 == 0 and abs(pos) < self.limit:
            if pos <= 0:  # passive order on the side that brings the position back to flat
                self.send(symbol, S.BUY, book.bid - TICK, 100, S.DAY)
            else:
                self.send(symbol, S.SELL, book.ask + TICK, 100, S.DAY)
        resting = self.resting[symbol]
        while resting and resting[0][1] < book.updates - 50:
            order_id, _ = resting.pop(0)
            self.cancels += 1
            S.publish(self.bus, f"ord.cancel.{symbol}",
                      S.Cancel(order_id, symbol, time.perf_counter_ns()))

    def send(self, symbol: str, side: int, price: float, qty: int, tif: int) -> None:
        order_id = self.next_id
        self.next_id += 1
        self.orders += 1
        if tif == S.DAY:
            self.resting[symbol].append((order_id, self.books.books[symbol].updates))
        msg = self.bus.claim(f"ord.new.{symbol}", S.NEW_ORDER.size)
        if msg is not None:
            with msg:
                S.NEW_ORDER.pack_into(msg.buffer, 0, order_id, symbol.encode(), side, price, qty,
                                      tif, time.perf_counter_ns())

    def on_fill(self, msg) -> None:  # type: ignore[no-untyped-def]
        order_id, _, side, _, qty, leaves, _, _ = S.FILL.unpack_from(msg.payload)
        symbol = msg.topic[9:]
        self.position[symbol] += qty if side == S.BUY else -qty
        if leaves == 0:
            self.resting[symbol] = [r for r in self.resting[symbol] if r[0] != order_id]


class ExchangeGateway:
    """Simulated exchange: IOC orders fill at the touch, DAY orders rest until crossed."""

    def __init__(self, bus: MessageBus, books: Books) -> None:
        self.bus = bus
        self.books = books
        self.resting: dict[int, tuple[str, int, float, int]] = {}
        self.exec_id = 0
        self.fills = 0
        self.cancelled = 0
        bus.subscribe("ord.new.*", self.on_order)
        bus.subscribe("ord.cancel.*", self.on_cancel)
        bus.subscribe("md.quote.*", self.on_quote)

    def on_order(self, msg) -> None:  # type: ignore[no-untyped-def]
        order_id, _, side, price, qty, tif, _ = S.NEW_ORDER.unpack_from(msg.payload)
        symbol = msg.topic[8:]
        book = self.books.books[symbol]
        touch = book.ask if side == S.BUY else book.bid
        crosses = price >= touch if side == S.BUY else price <= touch
        if crosses:
            self.fill(order_id, symbol, side, touch, qty)
        elif tif == S.DAY:
            self.resting[order_id] = (symbol, side, price, qty)
        else:
            self.fill(order_id, symbol, side, price, 0)  # IOC that missed: nothing done

    def on_cancel(self, msg) -> None:  # type: ignore[no-untyped-def]
        if self.resting.pop(S.CANCEL.unpack_from(msg.payload)[0], None) is not None:
            self.cancelled += 1

    def on_quote(self, msg) -> None:  # type: ignore[no-untyped-def]
        if not self.resting:
            return
        symbol = msg.topic[9:]
        book = self.books.books[symbol]
        for order_id, (sym, side, price, qty) in list(self.resting.items()):
            if sym == symbol and (price >= book.ask if side == S.BUY else price <= book.bid):
                del self.resting[order_id]
                self.fill(order_id, symbol, side, price, qty)

    def fill(self, order_id: int, symbol: str, side: int, price: float, qty: int) -> None:
        self.exec_id += 1
        self.fills += qty > 0
        msg = self.bus.claim(f"ord.fill.{symbol}", S.FILL.size)
        if msg is not None:
            with msg:
                S.FILL.pack_into(msg.buffer, 0, order_id, symbol.encode(), side, price, qty, 0,
                                 self.exec_id, time.perf_counter_ns())


@dataclass
class Portfolio:
    """Positions and cash from fills; P&L marked at the book mids."""

    books: Books
    cash: float = 0.0
    position: dict[str, int] = field(default_factory=dict)
    traded_qty: int = 0

    def subscribe(self, bus: MessageBus) -> None:
        bus.subscribe("ord.fill.*", self.on_fill)

    def on_fill(self, msg) -> None:  # type: ignore[no-untyped-def]
        _, _, side, price, qty, _, _, _ = S.FILL.unpack_from(msg.payload)
        symbol = msg.topic[9:]
        signed = qty if side == S.BUY else -qty
        self.position[symbol] = self.position.get(symbol, 0) + signed
        self.cash -= signed * price
        self.traded_qty += qty

    def pnl(self) -> float:
        return self.cash + sum(q * self.books.books[s].mid for s, q in self.position.items())


# -- running ------------------------------------------------------------------------------------
@dataclass
class Demo:
    bus: MessageBus
    feed: Feed
    books: Books
    strategy: Strategy
    gateway: ExchangeGateway
    portfolio: Portfolio


SYMBOLS = ["AAPL", "MSFT", "NVDA", "AMZN", "GOOG", "META", "TSLA", "JPM", "XOM", "KO",
           "PEP", "WMT", "INTC", "AMD", "ORCL", "IBM"]


def build(args: argparse.Namespace, symbols: list[str] | None = None) -> Demo:
    bus = MessageBus(mode=args.mode, policy=args.policy, blocks_per_class=args.blocks_per_class,
                     name="demo")
    if symbols is None:
        symbols = SYMBOLS[: args.symbols]
    books = Books(bus, symbols)
    strategy = Strategy(bus, books, symbols)
    gateway = ExchangeGateway(bus, books)
    portfolio = Portfolio(books)
    portfolio.subscribe(bus)
    return Demo(bus, Feed(bus, symbols, args.seed), books, strategy, gateway, portfolio)


class Progress:
    """A one-line progress bar (redrawn in place on a terminal, one line per second otherwise)."""

    def __init__(self, duration: float, quiet: bool) -> None:
        self.duration = duration
        self.quiet = quiet
        self.tty = sys.stdout.isatty()
        self.next = 0.0

    def update(self, elapsed: float, demo: Demo, final: bool = False) -> None:
        if self.quiet or (elapsed < self.next and not final):
            return
        self.next = elapsed + (0.2 if self.tty else 1.0)
        done = min(1.0, elapsed / self.duration)
        bar = "#" * int(done * 30)
        rate = demo.bus.published / elapsed if elapsed > 0 else 0.0
        line = (f"[{bar:<30}] {elapsed:5.1f}/{self.duration:.1f} s  "
                f"msgs={demo.bus.published:,}  {rate / 1e3:,.0f}k msgs/s  "
                f"orders={demo.strategy.orders:,}  pnl={demo.portfolio.pnl():+,.2f}")
        if self.tty:
            print("\r" + line, end="\n" if final else "", flush=True)
        else:
            print(line, flush=True)


def run_sync(demo: Demo, args: argparse.Namespace) -> float:
    progress = Progress(args.duration, args.quiet)
    start = time.perf_counter()
    step = demo.feed.step
    while True:
        elapsed = time.perf_counter() - start
        if elapsed >= args.duration:
            break
        due = int(elapsed * args.rate) - demo.feed.count if args.rate else 256
        if due <= 0:
            time.sleep(0.0005)
        for _ in range(min(due, 256)):
            step()
        progress.update(elapsed, demo)
    elapsed = time.perf_counter() - start
    progress.update(elapsed, demo, final=True)
    return elapsed


async def run_async(demo: Demo, args: argparse.Namespace) -> float:
    progress = Progress(args.duration, args.quiet)
    bus = demo.bus
    await bus.start()
    start = time.perf_counter()
    step = demo.feed.step
    while True:
        elapsed = time.perf_counter() - start
        if elapsed >= args.duration:
            break
        due = int(elapsed * args.rate) - demo.feed.count if args.rate else 64
        if due <= 0:
            await asyncio.sleep(0.0005)
        for _ in range(min(due, 64)):
            step()
        await asyncio.sleep(0)  # let the drain task dispatch this burst
        progress.update(elapsed, demo)
    await bus.join()
    elapsed = time.perf_counter() - start
    progress.update(elapsed, demo, final=True)
    print(report(demo, elapsed))
    await bus.aclose()
    return elapsed


def report(demo: Demo, elapsed: float) -> str:
    bus = demo.bus
    stats = bus.stats()
    lat = stats.latency
    families: dict[str, int] = {}
    for topic, t in stats.topics.items():
        key = ".".join(topic.split(".")[:2])
        families[key] = families.get(key, 0) + t.published
    lines = [
        "",
        f"== trading demo: {elapsed:.2f} s, {bus.mode} bus, "
        f"policy={bus.policy}",
        f"throughput      : {stats.published / elapsed:,.0f} msgs/s published, "
        f"{stats.delivered / elapsed:,.0f} deliveries/s "
        f"({stats.published:,} messages, {stats.delivered:,} deliveries)",
        "messages        : " + ", ".join(f"{k}={v:,}" for k, v in sorted(families.items())),
        f"latency (ns)    : publish->deliver p50={lat.p50:,} p90={lat.p90:,} p99={lat.p99:,} "
        f"p99.9={lat.p999:,} max={lat.max:,} (n={lat.count:,})",
        f"drops           : dropped={stats.dropped} rejected={stats.rejected} "
        f"subscriber errors={stats.errors} leaked views={stats.leaked_views} "
        f"blocked={stats.blocked}",
        f"trading         : orders={demo.strategy.orders:,} fills={demo.gateway.fills:,} "
        f"cancels={demo.strategy.cancels:,} (exchange cancelled {demo.gateway.cancelled:,}) "
        f"traded qty={demo.portfolio.traded_qty:,}",
        f"P&L             : {demo.portfolio.pnl():+,.2f}  positions: "
        + ", ".join(f"{s}={q:+}" for s, q in sorted(demo.portfolio.position.items()) if q),
        "pool usage per size class (high water = most blocks in use at once):",
        "  " + bus.allocator.report().replace("\n", "\n  "),
    ]
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="hftalloc trading demo")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds to run (10)")
    parser.add_argument("--rate", type=float, default=200_000,
                        help="target quotes per second, 0 = as fast as possible (200000)")
    parser.add_argument("--symbols", type=int, default=8, choices=range(1, 17), metavar="1..16")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--mode", choices=("sync", "async"), default="sync")
    parser.add_argument("--policy", choices=("raise", "drop", "block"), default=None,
                        help="exhaustion policy (default: raise for sync, block for async)")
    parser.add_argument("--blocks-per-class", type=int, default=1024)
    parser.add_argument("--quiet", action="store_true", help="no progress line")
    parser.add_argument("--processes", action="store_true",
                        help="feed, strategy and gateway as separate processes over shared "
                             "memory (examples/trading_processes.py)")
    parser.add_argument("--fix", action="store_true",
                        help="the order path over a real FIX 4.4 session to the venue in its own "
                             "process (examples/trading_fix.py; takes its options)")
    parser.add_argument("--record", metavar="PATH",
                        help="journal the market data (md.>) into the directory PATH")
    parser.add_argument("--replay", metavar="PATH",
                        help="feed a recorded journal instead of the random walk (sync bus)")
    parser.add_argument("--plot", metavar="PATH",
                        help="save the publish->deliver latency percentile curve (matplotlib)")
    args = parser.parse_args(argv)
    if args.replay and args.record:
        parser.error("--record and --replay exclude each other")
    if args.replay and args.mode != "sync":
        parser.error("--replay runs the sync bus (the order of an async run's deliveries "
                     "depends on scheduling)")
    if args.duration <= 0:
        parser.error("--duration must be positive")
    if args.policy is None:
        args.policy = "block" if args.mode == "async" else "raise"
    return args


# -- record, replay, plot --------------------------------------------------------------------
def replay_symbols(path: str) -> list[str]:
    """The symbols of a recorded run, in the order the run used them."""
    from hftalloc.journal import JournalReader

    topics = JournalReader(path).topics
    found = {t.split(".", 2)[2] for t in topics if t.startswith("md.quote.")}
    return [s for s in SYMBOLS if s in found] + sorted(found - set(SYMBOLS))


def run_replay(demo: Demo, args: argparse.Namespace) -> float:
    """Publish the recorded market data into the demo's bus (as fast as possible)."""
    from hftalloc.journal import replay

    stats = replay(args.replay, demo.bus, topics="md.>")
    if not args.quiet:
        print(f"replayed {stats.published:,} market-data messages from {args.replay}")
    return stats.elapsed


def plot_latency(bus: MessageBus, path: str, plt) -> None:  # type: ignore[no-untyped-def]
    """The publish->deliver latency percentile curve (x: percentile on a 9s scale)."""
    hist = bus.latency
    nines = [i / 20 for i in range(0, 81)]                  # 0 .. 4 nines (99.99 %)
    qs = [100.0 * (1 - 10 ** -n) for n in nines]
    values = hist.percentiles(qs)
    fig, ax = plt.subplots(figsize=(8, 4.5))
    ax.plot(nines, values)
    ax.set_xticks([0, 1, 2, 3, 4], ["0%", "90%", "99%", "99.9%", "99.99%"])
    ax.set_yscale("log")
    ax.set_xlabel("percentile")
    ax.set_ylabel("publish -> deliver latency (ns)")
    ax.set_title(f"trading demo: {hist.count:,} deliveries, {bus.mode} bus")
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "--fix" in argv:  # the order path over FIX: its own options (examples/trading_fix.py)
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from trading_fix import main as run_fix

        return run_fix([a for a in argv if a != "--fix"])
    args = parse_args(argv)
    if args.processes:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from trading_processes import main as run_processes

        return run_processes(argv if argv is not None else sys.argv[1:])
    plt = None
    if args.plot:
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            print("--plot needs matplotlib: pip install matplotlib (or the package's "
                  "'plot' extra)", file=sys.stderr)
            return 2
    try:
        symbols = replay_symbols(args.replay) if args.replay else None
    except JournalError as exc:
        print(f"--replay: {exc}", file=sys.stderr)
        return 2
    demo = build(args, symbols)
    writer = None
    if args.record:
        from hftalloc.journal import JournalWriter, Recorder

        writer = JournalWriter(args.record)
        recorder = Recorder(demo.bus, writer, "md.>")
    if args.mode == "async":
        with asyncio.Runner(loop_factory=loop_factory()) as runner:
            runner.run(run_async(demo, args))
    else:
        elapsed = run_replay(demo, args) if args.replay else run_sync(demo, args)
        print(report(demo, elapsed))
    if writer is not None:
        writer.close()
        print(f"recorded {recorder.recorded:,} market-data messages into {args.record} "
              f"(failed {recorder.failed})")
    if plt is not None:
        plot_latency(demo.bus, args.plot, plt)
        print(f"latency percentile curve saved to {args.plot}")
    if not demo.bus.closed:
        demo.bus.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
