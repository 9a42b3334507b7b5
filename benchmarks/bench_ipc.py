"""Cross-process transports: hftalloc shared-memory channel vs multiprocessing.Queue vs pyzmq.

    python benchmarks/bench_ipc.py            # about a minute
    python benchmarks/bench_ipc.py --quick    # about 15 s, noisier

Every case runs a producer process and a consumer process (spawned, so nothing is
shared but the transport), in the same run, one contender after the other:

* **throughput**: the producer sends N messages as fast as the transport takes them,
  the consumer reads each one (first payload byte); rate = N / (first send .. last
  receive), clocks are CLOCK_MONOTONIC in both processes; best of ``--repeat`` rounds.
* **latency**: the producer sends one message every ``--pace-us`` µs (sleeping in
  between) with ``perf_counter_ns()`` in its first 8 bytes; the consumer records
  receive - send. This is the one-way latency of an idle-ish transport, wake-up included.

Contenders (payload built once in a bytearray; each transport copies it once or more):

* ``hftalloc shm channel``: ``ChannelWriter.publish`` -> ``ChannelReader.poll``, the
  subscriber reads ``msg.payload`` in place; the reader busy-polls (no kernel wake-up).
* ``hftalloc bus -> bus (ShmBridge)``: a MessageBus in each process, connected by a
  channel: two more copies (into and out of the local pools) and two bus dispatches.
* ``multiprocessing.Queue`` (bounded to 4096, ``put(bytes(payload))``, ``get()``).
* ``pyzmq ipc:// PUB/SUB``: single frame ``topic\\0payload``, HWM unlimited, blocking
  ``recv()``.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import platform
import struct
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from time import perf_counter_ns
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from _timing import table  # noqa: E402

from hftalloc.histogram import Histogram  # noqa: E402

STAMP = struct.Struct("<q")
TOPIC = "b.x"
TIMEOUT = 60.0


# -- transports: setup in the parent, endpoints in the children -----------------------------------
class Transport:
    """One contender: ``open_producer``/``open_consumer`` run in the child processes."""

    label = ""
    key = ""

    def setup(self, size: int) -> Any:
        """Parent side: create what both children attach to; returns a picklable handle."""
        return None

    def teardown(self) -> None:
        pass


class ShmTransport(Transport):
    label, key = "hftalloc shm channel", "shm"

    def setup(self, size: int) -> Any:
        from hftalloc.shm import Channel

        self.channel = Channel(f"bench-{uuid.uuid4().hex[:8]}", ring_capacity=4096,
                               blocks_per_class=4096, num_classes=5)
        return self.channel.name

    def teardown(self) -> None:
        self.channel.close()


class BridgeTransport(ShmTransport):
    label, key = "hftalloc bus -> bus (ShmBridge)", "bridge"


class QueueTransport(Transport):
    label, key = "multiprocessing.Queue", "queue"

    def setup(self, size: int) -> Any:
        return mp.get_context("spawn").Queue(4096)


class ZmqTransport(Transport):
    label, key = "pyzmq ipc:// PUB/SUB", "zmq"

    def setup(self, size: int) -> Any:
        self.path = os.path.join(tempfile.gettempdir(), f"hftalloc-bench-{uuid.uuid4().hex[:8]}")
        return (f"ipc://{self.path}", mp.get_context("spawn").Event())

    def teardown(self) -> None:
        if os.path.exists(self.path):
            os.unlink(self.path)


TRANSPORTS: list[Transport] = [ShmTransport(), BridgeTransport(), QueueTransport(),
                               ZmqTransport()]


def make_sender(key: str, handle: Any) -> tuple[Any, Any]:
    """(send(payload), close()) for the producer child."""
    if key == "shm":
        from hftalloc.shm import ChannelWriter

        writer = ChannelWriter(handle, policy="block", timeout=TIMEOUT)
        publish = writer.publish
        return (lambda payload: publish(TOPIC, payload)), writer.close
    if key == "bridge":
        from hftalloc import MessageBus
        from hftalloc.bridge import ShmBridge

        bus = MessageBus(blocks_per_class=64)
        bridge = ShmBridge(bus, policy="block", timeout=TIMEOUT)
        bridge.forward(handle, TOPIC)
        bus_publish = bus.publish
        return (lambda payload: bus_publish(TOPIC, payload)), bridge.close
    if key == "queue":
        put = handle.put
        return (lambda payload: put(bytes(payload))), handle.close
    import zmq

    endpoint, warm = handle
    ctx = zmq.Context()
    sock = ctx.socket(zmq.PUB)
    sock.setsockopt(zmq.SNDHWM, 0)
    sock.connect(endpoint)
    while not warm.is_set():  # the slow-joiner handshake: until the subscriber hears us
        sock.send(b"w")
        time.sleep(0.001)
    prefix = TOPIC.encode() + b"\0"
    send = sock.send

    def close() -> None:
        sock.close(linger=1000)
        ctx.term()

    return (lambda payload: send(prefix + payload)), close


def make_receiver(key: str, handle: Any, on_payload: Any) -> tuple[Any, Any]:
    """(receive_some() -> count, close()) for the consumer child; calls on_payload(buffer)."""
    if key == "shm":
        from hftalloc.shm import ChannelReader

        reader = ChannelReader(handle)
        reader.subscribe(TOPIC, on_payload)
        poll, wait = reader.poll, reader.wait

        def receive_shm() -> int:
            n = poll(1024)
            if not n:
                wait(1.0)  # spin 20 µs, then sleep on the segment's futex
            return n

        return receive_shm, reader.close
    if key == "bridge":
        from hftalloc import MessageBus
        from hftalloc.bridge import ShmBridge

        bus = MessageBus(blocks_per_class=1024)
        bridge = ShmBridge(bus)
        bridge.receive(handle)
        bus.subscribe(TOPIC, on_payload)
        bridge_poll, bridge_wait = bridge.poll, bridge.wait

        def receive_bridge() -> int:
            n = bridge_poll(1024)
            if not n:
                bridge_wait(1.0)
            return n

        return receive_bridge, bridge.close
    if key == "queue":
        get = handle.get

        def receive_queue() -> int:
            on_payload(get(timeout=TIMEOUT))
            return 1

        return receive_queue, lambda: None
    import zmq

    endpoint, warm = handle
    ctx = zmq.Context()
    sock = ctx.socket(zmq.SUB)
    sock.setsockopt(zmq.RCVHWM, 0)
    sock.setsockopt(zmq.RCVTIMEO, int(TIMEOUT * 1000))
    sock.bind(endpoint)
    sock.setsockopt(zmq.SUBSCRIBE, TOPIC.encode() + b"\0")
    sock.setsockopt(zmq.SUBSCRIBE, b"w")
    while sock.recv() != b"w":
        pass
    warm.set()
    recv = sock.recv
    skip = len(TOPIC) + 1

    def receive_zmq() -> int:
        frame = recv()
        if frame == b"w":  # leftover handshake frames
            return 0
        on_payload(memoryview(frame)[skip:])
        return 1

    def close() -> None:
        sock.close(linger=0)
        ctx.term()

    return receive_zmq, close


# -- child processes ------------------------------------------------------------------------------
def producer_main(key: str, handle: Any, size: int, conn: Any) -> None:
    send, close = make_sender(key, handle)
    payload = bytearray(size)
    conn.send("up")
    while True:
        cmd = conn.recv()
        if cmd[0] == "stop":
            break
        mode, n, pace_ns = cmd
        if mode == "tput":
            t0 = perf_counter_ns()
            for _ in range(n):
                send(payload)
        else:
            t0 = perf_counter_ns()
            due = t0
            for _ in range(n):
                due += pace_ns
                ahead = due - perf_counter_ns()
                if ahead > 0:  # sleep, do not spin: the consumer needs the CPU
                    time.sleep(ahead / 1e9)
                STAMP.pack_into(payload, 0, perf_counter_ns())
                send(payload)
        conn.send(t0)
    close()


def consumer_main(key: str, handle: Any, conn: Any) -> None:
    state = {"n": 0, "probe": 0, "lat": None}

    def on_payload(msg: Any) -> None:
        state["n"] += 1
        data = msg.payload if hasattr(msg, "payload") else msg
        lat = state["lat"]
        if lat is None:
            state["probe"] += data[0]
        else:
            lat.append(perf_counter_ns() - STAMP.unpack_from(data)[0])

    receive, close = make_receiver(key, handle, on_payload)
    conn.send("up")
    while True:
        cmd = conn.recv()
        if cmd[0] == "stop":
            break
        mode, n = cmd
        state["n"] = 0
        state["lat"] = [] if mode == "lat" else None
        conn.send("ready")
        deadline = time.monotonic() + TIMEOUT
        while state["n"] < n:
            if not receive() and time.monotonic() > deadline:
                break
        conn.send((perf_counter_ns(), state["n"], state["lat"]))
    close()


# -- orchestration --------------------------------------------------------------------------------
@dataclass
class Result:
    label: str
    size: int
    rate: float
    received: int
    expected: int
    latency: Histogram


def expect(conn: Any, what: str) -> Any:
    if not conn.poll(TIMEOUT):
        raise TimeoutError(f"no {what} within {TIMEOUT} s")
    return conn.recv()


def run_case(transport: Transport, size: int, n: int, n_lat: int, pace_ns: int,
             repeat: int) -> Result:
    ctx = mp.get_context("spawn")
    handle = transport.setup(size)
    cons_parent, cons_child = ctx.Pipe()
    prod_parent, prod_child = ctx.Pipe()
    consumer = ctx.Process(target=consumer_main, args=(transport.key, handle, cons_child))
    producer = ctx.Process(target=producer_main, args=(transport.key, handle, size, prod_child))
    consumer.start()
    producer.start()
    try:
        expect(cons_parent, "consumer start")
        expect(prod_parent, "producer start")
        best, worst_received = 0.0, n

        def round_trip(mode: str, count: int) -> tuple[int, int, int, Any]:
            cons_parent.send((mode, count))
            expect(cons_parent, "consumer ready")
            prod_parent.send((mode, count, pace_ns))
            t0 = expect(prod_parent, "producer result")
            t_end, received, lat = expect(cons_parent, "consumer result")
            return t0, t_end, received, lat

        round_trip("tput", min(n, 2000))  # warm-up
        for _ in range(repeat):
            t0, t_end, received, _ = round_trip("tput", n)
            worst_received = min(worst_received, received)
            best = max(best, received / ((t_end - t0) / 1e9))
        _, _, _, lat = round_trip("lat", n_lat)
        hist = Histogram()
        hist.record_many(max(0, v) for v in lat)
        for conn in (cons_parent, prod_parent):
            conn.send(("stop",))
        producer.join(TIMEOUT)
        consumer.join(TIMEOUT)
        return Result(transport.label, size, best, worst_received, n, hist)
    finally:
        for proc in (producer, consumer):
            if proc.is_alive():
                proc.kill()
                proc.join(5)
        transport.teardown()


def format_results(results: list[Result]) -> str:
    base = {r.size: r.rate for r in results if r.label == QueueTransport.label}
    rows = []
    for r in results:
        s = r.latency.summary()
        lost = "" if r.received == r.expected else f" ({r.expected - r.received} lost)"
        rows.append([
            r.label, f"{r.size} B", f"{r.rate / 1e6:.2f}M{lost}", f"{r.rate / base[r.size]:.1f}x",
            f"{s.p50 / 1e3:.1f}", f"{s.p99 / 1e3:.1f}", f"{s.p999 / 1e3:.1f}",
            f"{s.max / 1e3:.0f}",
        ])
    return table(["contender", "payload", "msgs/s", "ratio", "p50 µs", "p99 µs", "p99.9 µs",
                  "max µs"], rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer messages and rounds")
    parser.add_argument("--repeat", type=int, default=None, help="throughput rounds (best of)")
    parser.add_argument("--pace-us", type=float, default=100.0,
                        help="µs between messages in the latency run (100 = 10k msgs/s)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 1024])
    parser.add_argument("--only", nargs="+", choices=[t.key for t in TRANSPORTS])
    args = parser.parse_args(argv)
    n = 20_000 if args.quick else 200_000
    n_lat = 2_000 if args.quick else 10_000
    repeat = args.repeat or (1 if args.quick else 3)
    chosen = [t for t in TRANSPORTS if args.only is None or t.key in args.only]
    if args.only and "queue" not in args.only:
        chosen.append(QueueTransport())  # the reference of the ratio column
    print(f"# bench_ipc: Python {platform.python_version()}, {platform.machine()}, "
          f"{os.cpu_count()} CPUs; {n:,} msgs x {repeat} (throughput), {n_lat:,} msgs at "
          f"{1e6 / args.pace_us:,.0f}/s (latency)", flush=True)
    results = []
    for size in args.sizes:
        for transport in chosen:
            started = time.perf_counter()
            result = run_case(transport, size, n, n_lat, int(args.pace_us * 1000), repeat)
            results.append(result)
            print(f"  {transport.label:<32} {size:>5} B  {result.rate:>12,.0f} msgs/s  "
                  f"({time.perf_counter() - started:.1f} s)", flush=True)
    print()
    print(format_results(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
