"""hftalloc against the libraries a user would pick instead, in the same run.

    python benchmarks/bench_peers.py                      # about a minute
    python benchmarks/bench_peers.py --quick              # about 20 s, noisier
    python benchmarks/bench_peers.py --plot-dir docs/images   # also draw the latency curves

In one process: ``hftalloc.MessageBus`` (sync) against nautilus_trader's ``MessageBus``
(Cython, publishes object references) and a hand-written dict of callbacks, 64 B
payloads, one and four subscribers. Throughput: best of ``--repeat`` runs with a
subscriber that counts. Latency: one more run whose subscriber records
``perf_counter_ns()`` minus the stamp taken just before publish.

Between two processes (spawned; nothing shared but the transport): the hftalloc
shared-memory channel against iceoryx2's Python bindings (``Slice[c_uint8]`` samples,
loaned, filled with ``ctypes.memmove``, sent; the subscriber polls ``receive()``) and
faster-fifo (``put``/``get`` of bytes). Throughput: the producer sends N messages as
fast as the transport takes them. Latency: one message every ``--pace-us`` µs with
``perf_counter_ns()`` (CLOCK_MONOTONIC, shared by both processes) in its first 8 bytes;
every consumer busy-polls, so wake-up costs are not part of any figure.

Fan-in: 1, 2 and 4 producer processes into one consumer process, 64 B: the channel
with one producer slot per process against faster-fifo (one queue, every producer
putting into it) and iceoryx2 (``max_publishers``); total msgs/s (all messages over
first send .. last receive) and one-way latency with every producer pacing.

Batches: ``ChannelWriter.publish_many`` of 16 and 256 payloads into a reader whose
``poll_batch`` handler gets tuples of messages, against the per-message path
(``publish`` -> subscriber) in the same run.

A peer that is not installed is left out with a note (``pip install ".[bench]"``).
"""

from __future__ import annotations

import argparse
import ctypes
import multiprocessing as mp
import os
import platform
import struct
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from time import perf_counter_ns
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from _timing import table  # noqa: E402

from hftalloc import Histogram, MessageBus  # noqa: E402

STAMP = struct.Struct("<q")
TOPIC = "md.quote.AAPL"
TIMEOUT = 60.0
PERCENTILES = (50.0, 90.0, 99.0, 99.9, 99.99)


@dataclass
class Result:
    """One contender in one case: throughput and a latency histogram (ns)."""

    case: str
    label: str
    rate: float
    latency: Histogram
    reference: bool = False


# -- in one process ----------------------------------------------------------------------------
def _hftalloc_bus(subs: int, sink: Callable[[Any], None]) -> tuple[Callable[[], None], Any]:
    bus = MessageBus(blocks_per_class=256)
    for _ in range(subs):
        bus.subscribe("md.quote.*", sink)
    payload = bytes(64)
    publish = bus.publish
    return (lambda: publish(TOPIC, payload)), bus.close


def _nautilus_bus(subs: int, sink: Callable[[Any], None]) -> tuple[Callable[[], None], Any]:
    from nautilus_trader.common.component import MessageBus as NautilusBus
    from nautilus_trader.common.component import TestClock
    from nautilus_trader.model.identifiers import TraderId

    bus = NautilusBus(trader_id=TraderId("BENCH-001"), clock=TestClock())
    for i in range(subs):  # nautilus refuses the same handler twice on one topic
        bus.subscribe("md.quote.*", (lambda m, s=sink: s(m)) if i else sink)
    payload = bytes(64)
    publish = bus.publish
    return (lambda: publish(TOPIC, payload)), lambda: None


def _dict_of_callbacks(subs: int, sink: Callable[[Any], None]) -> tuple[Callable[[], None], Any]:
    handlers: dict[str, list[Callable[[Any], None]]] = {TOPIC: [sink] * subs}
    payload = bytearray(64)  # bytes(bytes_object) would return the object itself, no copy

    def publish() -> None:
        data = bytes(payload)  # what a bus that owns its messages must do: one copy
        for handler in handlers.get(TOPIC, ()):
            handler(data)

    return publish, lambda: None


IN_PROCESS: list[tuple[str, Callable[..., Any], str | None]] = [
    ("hftalloc MessageBus", _hftalloc_bus, None),
    ("nautilus_trader MessageBus", _nautilus_bus, "nautilus_trader"),
    ("dict of callbacks (copying)", _dict_of_callbacks, None),
]


def bench_in_process(n: int, repeat: int, subs: int) -> list[Result]:
    """Throughput with a counting subscriber (best of ``repeat`` rounds; each round runs every
    contender once, so a change in the machine's speed during the run reaches them all), then
    one latency run each whose subscriber records ``perf_counter_ns()`` minus the stamp taken
    before publish."""
    contenders = []
    for label, make, module in IN_PROCESS:
        if module is not None and not _importable(module):
            print(f"  ({label}: {module} is not installed; left out)")
            continue
        count = [0]

        def counting(_msg: Any, count: list[int] = count) -> None:
            count[0] += 1

        publish, close = make(subs, counting)
        contenders.append((label, make, publish, close, count, [0.0]))
    for _ in range(repeat):
        for label, _make, publish, _close, count, best in contenders:
            count[0] = 0
            t0 = perf_counter_ns()
            for _ in range(n):
                publish()
            elapsed = perf_counter_ns() - t0
            assert count[0] == n * subs, f"{label}: {count[0]} deliveries of {n * subs}"
            best[0] = max(best[0], n / (elapsed / 1e9))
    results = []
    for label, make, _publish, close, _count, best in contenders:
        close()
        stamps: list[int] = []
        sent = [0]

        def stamping(_msg: Any, stamps: list[int] = stamps, sent: list[int] = sent) -> None:
            stamps.append(perf_counter_ns() - sent[0])

        publish, close_latency = make(subs, stamping)
        for _ in range(n):
            sent[0] = perf_counter_ns()
            publish()
        close_latency()
        hist = Histogram()
        hist.record_many(stamps)
        results.append(Result(f"64 B, {subs} sub", label, best[0], hist,
                              reference=label.startswith("nautilus")))
    return results


# -- between processes ---------------------------------------------------------------------------
def _shm_sender(name: str) -> tuple[Callable[[bytearray], Any], Callable[[], None]]:
    from hftalloc.shm import ChannelWriter

    writer = ChannelWriter(name, policy="block", timeout=TIMEOUT)
    publish = writer.publish
    return (lambda payload: publish(TOPIC, payload)), writer.close


def _shm_receiver(name: str, on_data: Callable[[Any], None]) -> tuple[Callable[[], int], Any]:
    from hftalloc.shm import ChannelReader

    reader = ChannelReader(name)
    reader.subscribe(TOPIC, lambda msg: on_data(msg.payload))
    poll = reader.poll
    return (lambda: poll(1024)), reader.close


def _iox_service(name: str) -> Any:
    import iceoryx2 as iox2

    name, _, publishers = name.partition("#")
    iox2.set_log_level(iox2.LogLevel.Error)
    node = iox2.NodeBuilder.new().create(iox2.ServiceType.Ipc)
    builder = (node.service_builder(iox2.ServiceName.new(name))
               .publish_subscribe(iox2.Slice[ctypes.c_uint8])
               .subscriber_max_buffer_size(4096).history_size(0)
               .enable_safe_overflow(False))  # else a full buffer drops the oldest sample
    if publishers:
        builder = builder.max_publishers(int(publishers))
    return node, builder.open_or_create()


def _iox_has_max_publishers() -> bool:
    import iceoryx2 as iox2

    node = iox2.NodeBuilder.new().create(iox2.ServiceType.Ipc)
    builder = (node.service_builder(iox2.ServiceName.new(f"probe-{uuid.uuid4().hex[:8]}"))
               .publish_subscribe(iox2.Slice[ctypes.c_uint8]))
    return hasattr(builder, "max_publishers")


def _iox_sender(name: str) -> tuple[Callable[[bytearray], Any], Callable[[], None]]:
    import iceoryx2 as iox2

    node, service = _iox_service(name)
    publisher = (service.publisher_builder().initial_max_slice_len(4096)
                 .backpressure_strategy(iox2.BackpressureStrategy.RetryUntilDelivered).create())
    loan, memmove = publisher.loan_slice_uninit, ctypes.memmove

    def send(payload: bytearray) -> None:
        sample = loan(len(payload))
        memmove(sample.payload_ptr, bytes(payload), len(payload))
        sample.assume_init().send()

    return send, lambda: (publisher.delete(), node)  # keep the node alive until closed


def _iox_receiver(name: str, on_data: Callable[[Any], None]) -> tuple[Callable[[], int], Any]:
    node, service = _iox_service(name)
    subscriber = service.subscriber_builder().buffer_size(4096).create()
    receive, string_at = subscriber.receive, ctypes.string_at

    def poll() -> int:
        count = 0
        while (sample := receive()) is not None:
            on_data(string_at(sample.payload_ptr, 8))
            sample.delete()
            count += 1
        return count

    return poll, lambda: (subscriber.delete(), node)


def _ff_sender(queue: Any) -> tuple[Callable[[bytearray], Any], Callable[[], None]]:
    put = queue.put

    def send(payload: bytearray) -> None:
        put(bytes(payload), timeout=TIMEOUT)

    return send, lambda: None


def _ff_receiver(queue: Any, on_data: Callable[[Any], None]) -> tuple[Callable[[], int], Any]:
    import queue as stdqueue

    get_many = queue.get_many

    def poll() -> int:
        try:
            items = get_many(block=False, max_messages_to_get=1024)
        except stdqueue.Empty:
            return 0
        for item in items:
            on_data(item)
        return len(items)

    return poll, lambda: None


@dataclass
class Transport:
    label: str
    key: str
    module: str | None

    def setup(self, producers: int = 1) -> Any:
        if self.key.startswith("shm"):
            from hftalloc.shm import Channel

            self.channel = Channel(f"peers-{uuid.uuid4().hex[:8]}", ring_capacity=4096,
                                   blocks_per_class=4096, num_classes=5, producers=producers)
            return self.channel.name
        if self.key == "iox":
            suffix = f"#{producers}" if producers > 1 else ""
            return f"hftalloc-peers-{uuid.uuid4().hex[:8]}{suffix}"
        from faster_fifo import Queue

        return Queue(max_size_bytes=32 * 1024 * 1024)

    def teardown(self) -> None:
        if self.key.startswith("shm"):
            self.channel.close()


TRANSPORTS = [
    Transport("hftalloc shm channel", "shm", None),
    Transport("iceoryx2 (Python bindings)", "iox", "iceoryx2"),
    Transport("faster-fifo Queue", "ff", "faster_fifo"),
]
SENDERS = {"shm": _shm_sender, "iox": _iox_sender, "ff": _ff_sender}
RECEIVERS = {"shm": _shm_receiver, "iox": _iox_receiver, "ff": _ff_receiver}


def _shm_batch_sender(name: str, batch: int) -> tuple[Callable[[int], Any], Callable[[], None]]:
    from hftalloc.shm import ChannelWriter

    writer = ChannelWriter(name, policy="block", timeout=TIMEOUT)
    publish_many = writer.publish_many

    def send(n: int, payload: bytearray) -> None:
        payloads = [bytes(payload)] * batch
        for _ in range(n // batch):
            publish_many(TOPIC, payloads)

    return send, writer.close


def _shm_batch_consumer(name: str, conn: Any) -> None:
    from hftalloc.shm import ChannelReader

    reader = ChannelReader(name)
    state = [0]

    def on_batch(msgs: tuple[Any, ...], state: list[int] = state) -> None:
        state[0] += len(msgs)
        _ = msgs[-1].payload[0]  # read the last one in place

    poll_batch = reader.poll_batch
    conn.send("up")
    while (cmd := conn.recv())[0] != "stop":
        n = cmd[1]
        state[0] = 0
        conn.send("ready")
        deadline = time.monotonic() + TIMEOUT
        while state[0] < n and time.monotonic() < deadline:
            poll_batch(on_batch, 4096)
        conn.send((perf_counter_ns(), state[0], None))
    reader.close()


def _producer(key: str, handle: Any, size: int, conn: Any) -> None:
    payload = bytearray(size)
    if key.startswith("shmb"):
        send_many, close = _shm_batch_sender(handle, int(key[4:]))
        conn.send("up")
        while (cmd := conn.recv())[0] != "stop":
            t0 = perf_counter_ns()
            send_many(cmd[1], payload)
            conn.send(t0)
        close()
        return
    send, close = SENDERS[key](handle)
    conn.send("up")
    while (cmd := conn.recv())[0] != "stop":
        mode, n, pace_ns = cmd
        t0 = perf_counter_ns()
        due = t0
        for _ in range(n):
            if mode == "lat":
                due += pace_ns
                while perf_counter_ns() < due:  # spin: sleeping would add wake-up jitter
                    pass
                STAMP.pack_into(payload, 0, perf_counter_ns())
            send(payload)
        conn.send(t0)
    close()


def _consumer(key: str, handle: Any, conn: Any) -> None:
    if key.startswith("shmb"):
        _shm_batch_consumer(handle, conn)
        return
    state: dict[str, Any] = {"n": 0, "lat": None}

    def on_data(data: Any) -> None:
        state["n"] += 1
        if state["lat"] is not None:
            state["lat"].append(perf_counter_ns() - STAMP.unpack_from(data)[0])

    poll, close = RECEIVERS[key](handle, on_data)
    conn.send("up")
    while (cmd := conn.recv())[0] != "stop":
        mode, n = cmd
        state["n"], state["lat"] = 0, ([] if mode == "lat" else None)
        conn.send("ready")
        deadline = time.monotonic() + TIMEOUT
        while state["n"] < n and time.monotonic() < deadline:
            poll()
        conn.send((perf_counter_ns(), state["n"], state["lat"]))
    close()


def _expect(conn: Any, what: str) -> Any:
    if not conn.poll(TIMEOUT):
        raise TimeoutError(f"no {what} within {TIMEOUT} s")
    return conn.recv()


def run_transport(t: Transport, size: int, n: int, n_lat: int, pace_ns: int,
                  repeat: int) -> Result:
    ctx = mp.get_context("spawn")
    handle = t.setup()
    c_parent, c_child = ctx.Pipe()
    p_parent, p_child = ctx.Pipe()
    consumer = ctx.Process(target=_consumer, args=(t.key, handle, c_child))
    consumer.start()
    _expect(c_parent, "consumer start")  # iceoryx2: the subscriber exists before the first send
    producer = ctx.Process(target=_producer, args=(t.key, handle, size, p_child))
    producer.start()
    try:
        _expect(p_parent, "producer start")

        def run(mode: str, count: int) -> tuple[float, list[int] | None]:
            c_parent.send((mode, count))
            _expect(c_parent, "consumer ready")
            p_parent.send((mode, count, pace_ns))
            t0 = _expect(p_parent, "producer result")
            t_end, received, lat = _expect(c_parent, "consumer result")
            if received != count:
                raise RuntimeError(f"{t.label}: received {received} of {count}")
            return count / ((t_end - t0) / 1e9), lat

        run("tput", min(n, 2000))  # warm-up
        best = max(run("tput", n)[0] for _ in range(repeat))
        hist = Histogram()
        hist.record_many(max(0, v) for v in run("lat", n_lat)[1] or ())
        for conn in (c_parent, p_parent):
            conn.send(("stop",))
        producer.join(TIMEOUT)
        consumer.join(TIMEOUT)
        return Result(f"{size} B, 2 processes", t.label, best, hist,
                      reference=t.key == "iox")
    finally:
        for proc in (producer, consumer):
            if proc.is_alive():
                proc.kill()
                proc.join(5)
        t.teardown()


def run_fanin(t: Transport, producers: int, size: int, n: int, n_lat: int, pace_ns: int,
              repeat: int, case: str = "") -> Result:
    """``producers`` producer processes (``n`` messages each) into one consumer."""
    ctx = mp.get_context("spawn")
    handle = t.setup(producers)
    c_parent, c_child = ctx.Pipe()
    consumer = ctx.Process(target=_consumer, args=(t.key, handle, c_child))
    consumer.start()
    procs, pipes = [], []
    try:
        _expect(c_parent, "consumer start")
        for _ in range(producers):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_producer, args=(t.key, handle, size, child))
            proc.start()
            procs.append(proc)
            pipes.append(parent)
        for conn in pipes:
            _expect(conn, "producer start")

        def run(mode: str, count: int) -> tuple[float, list[int] | None]:
            c_parent.send((mode, count * producers))
            _expect(c_parent, "consumer ready")
            for conn in pipes:
                conn.send((mode, count, pace_ns))
            t0 = min(_expect(conn, "producer result") for conn in pipes)
            t_end, received, lat = _expect(c_parent, "consumer result")
            if received != count * producers:
                raise RuntimeError(f"{t.label}: received {received} of {count * producers}")
            return count * producers / ((t_end - t0) / 1e9), lat

        run("tput", min(n, 2048))  # warm-up
        best = max(run("tput", n)[0] for _ in range(repeat))
        hist = Histogram()
        if not t.key.startswith("shmb"):
            hist.record_many(max(0, v) for v in run("lat", n_lat // producers)[1] or ())
        for conn in (c_parent, *pipes):
            conn.send(("stop",))
        for proc in (*procs, consumer):
            proc.join(TIMEOUT)
        return Result(case or f"{size} B, {producers} producer process(es)", t.label, best,
                      hist, reference=t.key in ("ff", "shm1"))
    finally:
        for proc in (*procs, consumer):
            if proc.is_alive():
                proc.kill()
                proc.join(5)
        t.teardown()


def bench_fanin(size: int, n: int, n_lat: int, pace_ns: int, repeat: int) -> list[Result]:
    """1, 2 and 4 producers: the channel, faster-fifo and iceoryx2 (where it can)."""
    results = []
    has_ff, has_iox = _importable("faster_fifo"), _importable("iceoryx2")
    if not has_ff:
        print("  (faster-fifo is not installed; left out of the fan-in cases)")
    iox_multi = has_iox and _iox_has_max_publishers()
    if has_iox and not iox_multi:
        print("  (iceoryx2: these Python bindings have no max_publishers(); one producer only)")
    for producers in (1, 2, 4):
        contenders = [Transport("hftalloc shm channel", "shm", None)]
        if has_ff:
            contenders.append(Transport("faster-fifo Queue", "ff", "faster_fifo"))
        if has_iox and (producers == 1 or iox_multi):
            contenders.append(Transport(f"iceoryx2 (max_publishers={producers})", "iox",
                                        "iceoryx2"))
        for t in contenders:
            try:
                results.append(run_fanin(t, producers, size, n // producers, n_lat, pace_ns,
                                         repeat))
            except Exception as exc:  # a peer that cannot take this case: say so, go on
                print(f"  ({t.label}, {producers} producers: {type(exc).__name__}: {exc})")
    return results


def bench_batches(size: int, n: int, repeat: int) -> list[Result]:
    """publish_many + poll_batch (16 and 256 per batch) vs publish + subscriber."""
    results = []
    per_message = Transport("per message: publish -> subscriber", "shm1", None)
    per_message.key = "shm"
    result = run_fanin(per_message, 1, size, n, 2_000, 50_000, repeat,
                       case=f"{size} B, batches, 2 processes")
    result.reference = True
    results.append(result)
    for batch in (16, 256):
        t = Transport(f"publish_many({batch}) -> poll_batch", f"shmb{batch}", None)
        results.append(run_fanin(t, 1, size, n // batch * batch, 0, 0, repeat,
                                 case=f"{size} B, batches, 2 processes"))
    return results


def fanin_summary(results: list[Result]) -> str:
    """The targets, as ratios measured in this run."""
    rate = {(r.case, r.label.split(" (")[0]): r.rate for r in results}
    lines = []
    one = rate.get(("64 B, 1 producer process(es)", "hftalloc shm channel"))
    two = rate.get(("64 B, 2 producer process(es)", "hftalloc shm channel"))
    ff2 = rate.get(("64 B, 2 producer process(es)", "faster-fifo Queue"))
    if one and two:
        lines.append(f"2 producers / 1 producer (channel, total msgs/s): {two / one:.2f}x "
                     "(target >= 0.7x)")
    if two and ff2:
        lines.append(f"2 producers, channel / faster-fifo: {two / ff2:.1f}x (target >= 5x)")
    cpus = os.cpu_count() or 1
    if cpus < 3:
        lines.append(f"With {cpus} CPUs, 2 or 4 pacing producer processes and the consumer "
                     "take turns on the CPUs: the latency of those rows is mostly the wait "
                     "for a CPU, for every contender alike.")
    return "\n".join(lines)


# -- output ----------------------------------------------------------------------------------------
def _importable(module: str) -> bool:
    try:
        __import__(module)
    except ImportError:
        return False
    return True


def format_results(results: list[Result]) -> str:
    """Markdown table; ratio = msgs/s over the case's reference peer (first peer listed)."""
    refs = {r.case: r.rate for r in results if r.reference}
    rows = []
    for r in results:
        s = r.latency.summary()
        ratio = f"{r.rate / refs[r.case]:.1f}x" if r.case in refs else "-"
        if s.count:
            lat = [f"{s.p50 / 1e3:.2f}", f"{s.p99 / 1e3:.2f}", f"{s.p999 / 1e3:.2f}",
                   f"{s.max / 1e3:.0f}"]
        else:  # throughput only (the batch cases time no single message)
            lat = ["-"] * 4
        rows.append([r.case, r.label, f"{r.rate / 1e6:.2f}M", ratio, *lat])
    return table(["case", "contender", "msgs/s", "vs peer", "p50 µs", "p99 µs", "p99.9 µs",
                  "max µs"], rows)


def plot(results: list[Result], path: str, title: str) -> None:
    """Latency percentile curves (log-log), one line per contender and case."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    xs = [1 / (1 - p / 100) for p in PERCENTILES]
    for r in results:
        ys = [max(r.latency.percentile(p), 1) / 1e3 for p in PERCENTILES]
        ax.plot(xs, ys, marker="o", label=f"{r.label} ({r.case})")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xticks(xs, [f"p{p:g}" for p in PERCENTILES])
    ax.set_ylabel("latency (µs)")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer messages and rounds")
    parser.add_argument("--repeat", type=int, default=None)
    parser.add_argument("--pace-us", type=float, default=50.0)
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 1024])
    parser.add_argument("--plot-dir", default=None, help="write bus_latency.png, ipc_latency.png")
    parser.add_argument("--only", choices=["bus", "ipc", "fanin", "batch"], nargs="+",
                        default=["bus", "ipc", "fanin", "batch"], help="run these parts only")
    args = parser.parse_args(argv)
    n_bus = 20_000 if args.quick else 100_000
    n_ipc = 20_000 if args.quick else 200_000
    n_lat = 2_000 if args.quick else 20_000
    repeat = args.repeat or (2 if args.quick else 5)
    print(f"# bench_peers: Python {platform.python_version()}, {platform.machine()}, "
          f"{os.cpu_count()} CPUs; bus {n_bus:,} msgs x {repeat}; ipc {n_ipc:,} msgs x {repeat}, "
          f"latency {n_lat:,} msgs every {args.pace_us:g} µs", flush=True)
    bus_results = []
    for subs in (1, 4) if "bus" in args.only else ():
        bus_results += bench_in_process(n_bus, repeat, subs)
    if bus_results:
        print("\n## In one process\n")
        print(format_results(bus_results), flush=True)
    ipc_results = []
    for size in args.sizes if "ipc" in args.only else ():
        for t in TRANSPORTS:
            if t.module is not None and not _importable(t.module):
                print(f"  ({t.label}: {t.module} is not installed; left out)")
                continue
            ipc_results.append(run_transport(t, size, n_ipc, n_lat, int(args.pace_us * 1000),
                                             repeat))
    if ipc_results:
        print("\n## Between two processes\n")
        print(format_results(ipc_results), flush=True)
    if "fanin" in args.only:
        fanin = bench_fanin(64, n_ipc, n_lat, int(args.pace_us * 1000), repeat)
        print("\n## Several producer processes into one consumer (vs = over faster-fifo)\n")
        print(format_results(fanin))
        print("\n" + fanin_summary(fanin), flush=True)
    if "batch" in args.only:
        batches = bench_batches(64, 4 * n_ipc, repeat)
        print("\n## Batches through a channel (vs = over the per-message path)\n")
        print(format_results(batches), flush=True)
    if args.plot_dir:
        if not _importable("matplotlib"):
            print("--plot-dir needs matplotlib (pip install '.[bench]')", file=sys.stderr)
            return 2
        os.makedirs(args.plot_dir, exist_ok=True)
        plot([r for r in bus_results if r.case.endswith("1 sub")],
             os.path.join(args.plot_dir, "bus_latency.png"),
             "publish -> deliver, one process, 64 B, 1 subscriber")
        plot([r for r in ipc_results if r.case.startswith("64 B")],
             os.path.join(args.plot_dir, "ipc_latency.png"),
             "one-way latency between two processes, 64 B")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
