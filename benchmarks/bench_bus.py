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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer messages and repetitions")
    parser.add_argument("--messages", type=int, help="messages per run (overrides the mode)")
    parser.add_argument("--reps", type=int, help="throughput repetitions (best is kept)")
    parser.add_argument("--payloads", default="64,512,4096")
    parser.add_argument("--subs", default="1,4")
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
    for payload in payloads:
        for nsubs in subs:
            for r in measure_case(cases, n, payload, nsubs, reps):
                results.append(r)
                print(f"  {r.name:<34} {payload:>5} B x{nsubs}: {r.rate / 1e6:.2f}M msgs/s",
                      flush=True)
    print()
    print(format_table(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
