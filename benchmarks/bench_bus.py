"""Message bus benchmark: hftalloc vs the alternatives a user would pick, in one run.

    python benchmarks/bench_bus.py            # full run (about 30 s)
    python benchmarks/bench_bus.py --quick    # a few seconds, noisier

Every contender moves the same messages (payload copied from a reusable ``bytearray``,
as a producer that reuses its buffer must do) to 1 or 4 subscribers doing the same work:
read the first payload byte. Two passes per case:

* throughput: messages/s = messages / (first publish -> last delivery), best of 7 runs
  (contenders interleaved round-robin, so machine load hits all alike); no timestamps
  are taken for the baselines (hftalloc always stamps and records its own latency
  histogram: that cost stays in its figures);
* latency: each subscriber also computes ``perf_counter_ns() - publish timestamp``;
  p50/p99/p99.9/max over every delivery of one run.

Async contenders publish in bursts of 64 messages and then yield to the loop. The
``ratio`` column divides throughput by the hand-written ``asyncio.Queue`` fan-out for
the same payload and subscriber count.

A second table measures batches (64 B, batches of 16 and 256, one subscriber): messages
delivered per second with ``publish_many`` to a batch subscriber
(``subscribe(..., batch=True)``) and to a per-message subscriber, against the same
batches through an ``asyncio.Queue`` of lists, a dict of callbacks taking a list, and
pyzmq; the ``ratio`` column divides by the per-message subscriber. Two kinds of batch
subscriber: one that reads the first byte of every message (the per-message work of the
first table), one that only counts the batch and reads its last message.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import platform
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass

from hftalloc import Histogram, MessageBus
from hftalloc.loops import has_uvloop

TOPIC = "md.quote.AAPL"
BURST = 64
pc = time.perf_counter_ns


@dataclass
class Result:
    name: str
    payload: int
    subs: int
    rate: float  # msgs/s
    latency: Histogram | None


class Sink:
    """Per-subscriber state: a byte sink and optional latency samples."""

    __slots__ = ("count", "last", "lat")

    def __init__(self) -> None:
        self.count = 0
        self.last = 0
        self.lat: list[int] = []


# -- contenders: each returns elapsed seconds and fills the sinks --------------------------
def run_bus_sync(n: int, src: bytearray, sinks: list[Sink], probe: bool, cls: type) -> float:
    bus = cls(blocks_per_class=1024)
    for sink in sinks:
        bus.subscribe(TOPIC, _bus_callback(sink, probe))
    publish = bus.publish
    for _ in range(min(n, 1000)):  # warm-up: route resolution, pool class creation
        publish(TOPIC, src)
    for s in sinks:
        s.lat.clear()
    t0 = time.perf_counter()
    for _ in range(n):
        publish(TOPIC, src)
    elapsed = time.perf_counter() - t0
    assert bus.allocator.in_use == 0
    bus.close()
    return elapsed


def run_bus_claim(n: int, src: bytearray, sinks: list[Sink], probe: bool) -> float:
    """The zero-copy form: claim a block, write the payload into it, commit."""
    bus = MessageBus(blocks_per_class=1024)
    for sink in sinks:
        bus.subscribe(TOPIC, _bus_callback(sink, probe))
    claim = bus.claim
    size = len(src)

    def one() -> None:
        msg = claim(TOPIC, size)
        msg.buffer[:] = src
        msg.commit()

    for _ in range(min(n, 1000)):
        one()
    for s in sinks:
        s.lat.clear()
    t0 = time.perf_counter()
    for _ in range(n):
        msg = claim(TOPIC, size)
        msg.buffer[:] = src
        msg.commit()
    elapsed = time.perf_counter() - t0
    assert bus.allocator.in_use == 0
    bus.close()
    return elapsed


def _bus_callback(sink: Sink, probe: bool) -> Callable[[object], None]:
    if probe:
        lat = sink.lat

        def on_msg(msg):  # type: ignore[no-untyped-def]
            sink.last = msg.payload[0]
            lat.append(pc() - msg.publish_ns)
    else:

        def on_msg(msg):  # type: ignore[no-untyped-def]
            sink.last = msg.payload[0]

    return on_msg


def run_bus_async(n: int, src: bytearray, sinks: list[Sink], probe: bool, uvloop: bool) -> float:
    async def main() -> float:
        bus = MessageBus(mode="async", blocks_per_class=1024)
        for sink in sinks:
            bus.subscribe(TOPIC, _bus_callback(sink, probe))
        publish = bus.publish
        await bus.start()
        for i in range(min(n, 1000)):
            publish(TOPIC, src)
            if i % BURST == BURST - 1:
                await asyncio.sleep(0)
        await bus.join()
        for s in sinks:
            s.lat.clear()
        t0 = time.perf_counter()
        for i in range(n):
            publish(TOPIC, src)
            if i % BURST == BURST - 1:
                await asyncio.sleep(0)
        await bus.join()
        elapsed = time.perf_counter() - t0
        await bus.aclose()
        return elapsed

    return _run_loop(main(), uvloop)


def run_queue_fanout(n: int, src: bytearray, sinks: list[Sink], probe: bool,
                     uvloop: bool = False) -> float:
    async def consume(queue: asyncio.Queue, sink: Sink) -> None:
        lat = sink.lat
        while True:
            item = await queue.get()
            if item is None:
                return
            if probe:
                ts, data = item
                sink.last = data[0]
                lat.append(pc() - ts)
            else:
                sink.last = item[0]

    async def produce(queues: list[asyncio.Queue], count: int) -> None:
        for i in range(count):
            data = bytes(src)
            item = (pc(), data) if probe else data
            for q in queues:
                await q.put(item)
            if i % BURST == BURST - 1:
                await asyncio.sleep(0)

    async def main() -> float:
        queues: list[asyncio.Queue] = [asyncio.Queue(maxsize=1024) for _ in sinks]
        tasks = [asyncio.create_task(consume(q, s)) for q, s in zip(queues, sinks, strict=True)]
        await produce(queues, min(n, 1000))
        while any(q.qsize() for q in queues):
            await asyncio.sleep(0)
        for s in sinks:
            s.lat.clear()
        t0 = time.perf_counter()
        await produce(queues, n)
        for q in queues:
            await q.put(None)
        await asyncio.gather(*tasks)
        return time.perf_counter() - t0

    return _run_loop(main(), uvloop)


def run_dict_callbacks(n: int, src: bytearray, sinks: list[Sink], probe: bool) -> float:
    """The plain alternative: a dict of callback lists, each message copied to bytes."""
    handlers: dict[str, list[Callable[..., None]]] = {}
    for sink in sinks:
        if probe:
            def cb(data: bytes, ts: int, sink: Sink = sink) -> None:
                sink.last = data[0]
                sink.lat.append(pc() - ts)
        else:
            def cb(data: bytes, ts: int, sink: Sink = sink) -> None:
                sink.last = data[0]
        handlers.setdefault(TOPIC, []).append(cb)

    def publish(topic: str, payload: bytearray) -> None:
        data = bytes(payload)
        ts = pc() if probe else 0
        for callback in handlers.get(topic, ()):
            callback(data, ts)

    for _ in range(min(n, 1000)):
        publish(TOPIC, src)
    for s in sinks:
        s.lat.clear()
    t0 = time.perf_counter()
    for _ in range(n):
        publish(TOPIC, src)
    return time.perf_counter() - t0


def run_zmq(n: int, src: bytearray, sinks: list[Sink], probe: bool) -> float:
    """pyzmq inproc PUB/SUB in one thread: publish a burst, then each SUB reads it.

    One frame per message, ``topic + ' ' + 8-byte timestamp + payload`` (the SUB side
    filters on the topic prefix): the fast idiomatic form (multipart messages measured
    about 15x slower here).
    """
    import zmq

    ctx = zmq.Context()
    pub = ctx.socket(zmq.PUB)
    pub.setsockopt(zmq.SNDHWM, 0)
    pub.bind("inproc://bench")
    subs = []
    topic = TOPIC.encode() + b" "
    ts_at = len(topic)
    body_at = ts_at + 8
    frame = bytearray(topic + bytes(8) + src)
    stamp = struct.Struct("<q")
    for _ in sinks:
        s = ctx.socket(zmq.SUB)
        s.setsockopt(zmq.RCVHWM, 0)
        s.connect("inproc://bench")
        s.setsockopt(zmq.SUBSCRIBE, topic)
        subs.append(s)
    pending = set(range(len(subs)))  # slow joiner: wait until every subscriber is connected
    while pending:
        pub.send(frame)
        for i in list(pending):
            if subs[i].poll(10):
                pending.discard(i)
    for s in subs:
        while s.poll(0):
            s.recv()

    def burst(count: int) -> None:
        sent = 0
        while sent < count:
            k = min(BURST, count - sent)
            for _ in range(k):
                if probe:
                    stamp.pack_into(frame, ts_at, pc())
                pub.send(frame)
            for s, sink in zip(subs, sinks, strict=True):
                lat = sink.lat
                for _ in range(k):
                    data = s.recv()
                    sink.last = data[body_at]
                    if probe:
                        lat.append(pc() - stamp.unpack_from(data, ts_at)[0])
            sent += k

    burst(min(n, 1000))
    for s in sinks:
        s.lat.clear()
    t0 = time.perf_counter()
    burst(n)
    elapsed = time.perf_counter() - t0
    for s in subs:
        s.close(0)
    pub.close(0)
    ctx.term()
    return elapsed


def _run_loop(coro, uvloop: bool) -> float:  # type: ignore[no-untyped-def]
    if uvloop:
        import uvloop as uv

        factory = uv.new_event_loop
    else:
        factory = asyncio.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(coro)


def contenders() -> list[tuple[str, Callable[..., float]]]:
    out: list[tuple[str, Callable[..., float]]] = [
        ("hftalloc sync (compiled core)", lambda *a: run_bus_sync(*a, MessageBus)),
        ("hftalloc sync claim+commit", run_bus_claim),
    ]
    out.append(("hftalloc async (asyncio)", lambda *a: run_bus_async(*a, False)))
    if has_uvloop():
        out.append(("hftalloc async (uvloop)", lambda *a: run_bus_async(*a, True)))
    out.append(("asyncio.Queue fan-out", run_queue_fanout))
    out.append(("dict of callbacks, copying", run_dict_callbacks))
    try:
        import zmq  # noqa: F401

        out.append(("pyzmq inproc PUB/SUB", run_zmq))
    except ImportError:
        print("pyzmq not installed: skipping the PUB/SUB contender")
    return out


BASELINE = "asyncio.Queue fan-out"


def measure_case(cases: list[tuple[str, Callable[..., float]]], n: int, payload: int,
                 nsubs: int, reps: int) -> list[Result]:
    """Throughput: best of ``reps`` runs, contenders interleaved round-robin so that load
    changes on the machine hit every contender alike. Then one latency run each."""
    src = bytearray(os.urandom(payload))
    best = {name: float("inf") for name, _ in cases}
    for _ in range(reps):
        for name, fn in cases:
            gc.collect()
            best[name] = min(best[name], fn(n, src, [Sink() for _ in range(nsubs)], False))
    results = []
    for name, fn in cases:
        sinks = [Sink() for _ in range(nsubs)]
        gc.collect()
        fn(n, src, sinks, True)
        hist = Histogram()
        for s in sinks:
            hist.record_many(max(0, v) for v in s.lat)
        results.append(Result(name, payload, nsubs, n / best[name], hist))
    return results


def format_table(results: list[Result]) -> str:
    base = {(r.payload, r.subs): r.rate for r in results if r.name == BASELINE}
    width = max(len(r.name) for r in results)
    head = (f"| {'contender':<{width}} | payload | subs | msgs/s | ratio | p50 µs | p99 µs "
            f"| p99.9 µs | max µs |")
    lines = [head, "|" + "|".join("-" * (len(c)) for c in head.split("|")[1:-1]) + "|"]
    for r in results:
        s = r.latency.summary() if r.latency is not None else None
        ratio = r.rate / base[(r.payload, r.subs)] if (r.payload, r.subs) in base else float("nan")
        lat = (f"{s.p50 / 1e3:6.2f} | {s.p99 / 1e3:6.2f} | {s.p999 / 1e3:8.2f} | "
               f"{s.max / 1e3:6.0f}") if s and s.count else "   n/a |    n/a |      n/a |    n/a"
        lines.append(f"| {r.name:<{width}} | {r.payload:>5} B | {r.subs:>4} | "
                     f"{r.rate / 1e6:5.2f}M | {ratio:4.1f}x | {lat} |")
    return "\n".join(lines)


# -- batches -----------------------------------------------------------------------------------
HAVE_BATCHES = hasattr(MessageBus, "publish_many")


def batch_bus(n: int, size: int, src: bytearray, kind: str) -> tuple[float, int]:
    """``publish_many`` of batches of ``size``; ``kind``: the subscriber (``each``: a batch
    subscriber reading every message's first byte; ``count``: a batch subscriber counting
    the batch and reading its last message; ``single``: a per-message subscriber)."""
    bus = MessageBus(blocks_per_class=max(1024, size))
    sink = Sink()
    if kind == "each":
        def on_batch(batch):  # type: ignore[no-untyped-def]
            for m in batch:
                sink.last = m.payload[0]
            sink.count += len(batch)
        bus.subscribe(TOPIC, on_batch, batch=True)
    elif kind == "count":
        def on_count(batch):  # type: ignore[no-untyped-def]
            sink.count += len(batch)
            sink.last = batch[-1].payload[0]
        bus.subscribe(TOPIC, on_count, batch=True)
    else:
        def on_msg(msg):  # type: ignore[no-untyped-def]
            sink.last = msg.payload[0]
            sink.count += 1
        bus.subscribe(TOPIC, on_msg)
    publish_many = bus.publish_many
    payloads = [src] * size
    rounds = max(1, n // size)
    for _ in range(max(1, 1000 // size)):
        publish_many(TOPIC, payloads)
    sink.count = 0
    t0 = time.perf_counter()
    for _ in range(rounds):
        publish_many(TOPIC, payloads)
    elapsed = time.perf_counter() - t0
    assert sink.count == rounds * size and bus.allocator.in_use == 0
    bus.close()
    return elapsed, rounds * size


def batch_single_publish(n: int, size: int, src: bytearray, kind: str) -> tuple[float, int]:
    """A loop of single ``publish`` calls to a batch subscriber (batches of one)."""
    bus = MessageBus(blocks_per_class=1024)
    sink = Sink()

    def on_batch(batch):  # type: ignore[no-untyped-def]
        for m in batch:
            sink.last = m.payload[0]

    bus.subscribe(TOPIC, on_batch, batch=True)
    publish = bus.publish
    count = max(1, n // size) * size
    for _ in range(1000):
        publish(TOPIC, src)
    t0 = time.perf_counter()
    for _ in range(count):
        publish(TOPIC, src)
    elapsed = time.perf_counter() - t0
    bus.close()
    return elapsed, count


def batch_dict(n: int, size: int, src: bytearray, kind: str) -> tuple[float, int]:
    """A dict of callbacks taking a list of copies (bytes) per batch."""
    sink = Sink()

    def on_batch(items: list[bytes]) -> None:
        for data in items:
            sink.last = data[0]

    handlers: dict[str, list[Callable[[list[bytes]], None]]] = {TOPIC: [on_batch]}
    payloads = [src] * size
    rounds = max(1, n // size)

    def publish_many(topic: str, items: list[bytearray]) -> None:
        copies = [bytes(p) for p in items]
        for callback in handlers.get(topic, ()):
            callback(copies)

    t0 = time.perf_counter()
    for _ in range(rounds):
        publish_many(TOPIC, payloads)
    return time.perf_counter() - t0, rounds * size


def batch_queue(n: int, size: int, src: bytearray, kind: str) -> tuple[float, int]:
    """An asyncio.Queue of lists of copies: one put/get per batch."""
    rounds = max(1, n // size)
    sink = Sink()

    async def main() -> float:
        queue: asyncio.Queue = asyncio.Queue(maxsize=64)

        async def consume() -> None:
            while True:
                items = await queue.get()
                if items is None:
                    return
                for data in items:
                    sink.last = data[0]

        task = asyncio.create_task(consume())
        t0 = time.perf_counter()
        for _ in range(rounds):
            await queue.put([bytes(src) for _ in range(size)])
        await queue.put(None)
        await task
        return time.perf_counter() - t0

    return _run_loop(main(), False), rounds * size


def batch_zmq(n: int, size: int, src: bytearray, kind: str) -> tuple[float, int]:
    """pyzmq inproc PUB/SUB: a burst of ``size`` frames, then the SUB reads them."""
    import zmq

    ctx = zmq.Context()
    pub = ctx.socket(zmq.PUB)
    pub.setsockopt(zmq.SNDHWM, 0)
    pub.bind("inproc://bench-batch")
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.RCVHWM, 0)
    sub.connect("inproc://bench-batch")
    topic = TOPIC.encode() + b" "
    sub.setsockopt(zmq.SUBSCRIBE, topic)
    frame = bytes(topic + src)
    while True:  # slow joiner
        pub.send(frame)
        if sub.poll(10):
            break
    while sub.poll(0):
        sub.recv()
    at = len(topic)
    sink = Sink()
    rounds = max(1, n // size)
    t0 = time.perf_counter()
    for _ in range(rounds):
        for _ in range(size):
            pub.send(frame)
        for _ in range(size):
            sink.last = sub.recv()[at]
    elapsed = time.perf_counter() - t0
    sub.close(0)
    pub.close(0)
    ctx.term()
    return elapsed, rounds * size


def batch_contenders() -> list[tuple[str, Callable[..., tuple[float, int]]]]:
    out: list[tuple[str, Callable[..., tuple[float, int]]]] = [
        ("hftalloc publish_many -> per-message sub", lambda *a: batch_bus(*a[:3], "single")),
        ("hftalloc publish_many -> batch sub (each)", lambda *a: batch_bus(*a[:3], "each")),
        ("hftalloc publish_many -> batch sub (count)", lambda *a: batch_bus(*a[:3], "count")),
        ("hftalloc publish x1 -> batch sub", batch_single_publish),
        ("dict of callbacks, list of copies", batch_dict),
        ("asyncio.Queue of lists", batch_queue),
    ]
    try:
        import zmq  # noqa: F401

        out.append(("pyzmq inproc PUB/SUB", batch_zmq))
    except ImportError:
        pass
    return out


BATCH_BASELINE = "hftalloc publish_many -> per-message sub"


def measure_batches(n: int, sizes: list[int], reps: int) -> str:
    src = bytearray(os.urandom(64))
    cases = batch_contenders()
    rows = []
    for size in sizes:
        best = {name: 0.0 for name, _ in cases}
        for _ in range(reps):
            for name, fn in cases:
                gc.collect()
                elapsed, count = fn(n, size, src, "")
                best[name] = max(best[name], count / elapsed)
        for name, _ in cases:
            rows.append((name, size, best[name], best[name] / best[BATCH_BASELINE]))
            print(f"  {name:<44} batch {size:>4}: {best[name] / 1e6:.2f}M msgs/s", flush=True)
    width = max(len(r[0]) for r in rows)
    head = f"| {'contender (64 B, 1 subscriber)':<{width}} | batch | msgs/s | ratio |"
    lines = [head, "|" + "|".join("-" * len(c) for c in head.split("|")[1:-1]) + "|"]
    lines += [f"| {name:<{width}} | {size:>5} | {rate / 1e6:5.2f}M | {ratio:4.1f}x |"
              for name, size, rate, ratio in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer messages and repetitions")
    parser.add_argument("--messages", type=int, help="messages per run (overrides the mode)")
    parser.add_argument("--reps", type=int, help="throughput repetitions (best is kept)")
    parser.add_argument("--payloads", default="64,512,4096")
    parser.add_argument("--subs", default="1,4")
    parser.add_argument("--batches", default="16,256", help="batch sizes ('' to skip)")
    parser.add_argument("--only-batches", action="store_true", help="skip the first table")
    args = parser.parse_args(argv)
    n = args.messages or (10_000 if args.quick else 50_000)
    reps = args.reps or (2 if args.quick else 7)
    payloads = [int(p) for p in args.payloads.split(",")]
    subs = [int(s) for s in args.subs.split(",")]
    print(f"python {platform.python_version()} on {platform.machine()}, {os.cpu_count()} CPUs; "
          f"{n} messages per run, best of {reps}; "
          f"async bursts of {BURST}")
    results = []
    cases = contenders()
    for payload in payloads if not args.only_batches else []:
        for nsubs in subs:
            for r in measure_case(cases, n, payload, nsubs, reps):
                results.append(r)
                print(f"  {r.name:<34} {payload:>5} B x{nsubs}: {r.rate / 1e6:.2f}M msgs/s",
                      flush=True)
    if results:
        print()
        print(format_table(results))
    sizes = [int(b) for b in args.batches.split(",") if b.strip()]
    if sizes and HAVE_BATCHES:
        print()
        table = measure_batches(n * 4, sizes, reps)
        print()
        print(table)
    elif sizes:
        print("this hftalloc has no publish_many: skipping the batch table")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
