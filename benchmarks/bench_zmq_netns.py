"""Across a network link: hftalloc's ZmqBridge (bus -> bus) vs pyzmq PUB/SUB directly.

    sudo python benchmarks/bench_zmq_netns.py            # about a minute
    sudo python benchmarks/bench_zmq_netns.py --quick    # about 15 s, noisier

The producer runs in one network namespace and the consumer in another, joined by a
veth pair (``ip netns exec``; needs root or CAP_NET_ADMIN: without them the script
says why and measures nothing). The link is a real kernel network path (TCP over
veth), without the wire. Contenders, one after the other in the same run:

* ``pyzmq PUB/SUB``: one frame ``topic\\0payload``, HWM unlimited, blocking ``recv()``;
* ``hftalloc ZmqBridge bus -> bus``: ``bus.publish`` in the producer, a bus subscriber in
  the consumer (the bridge's frame adds a 16-byte header; one copy into the frame, one
  out of it into a bus block), HWM unlimited, ``poll()`` on the consumer side.

**throughput**: the producer sends N messages as fast as the socket takes them; rate =
N / (first send .. last receive), CLOCK_MONOTONIC in both processes (namespaces share
the clock); best of ``--repeat`` rounds. **latency**: one message every ``--pace-us`` µs
with ``perf_counter_ns()`` in its first 8 bytes; the consumer records receive - send.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import select
import struct
import subprocess
import sys
import time
from dataclasses import dataclass
from time import perf_counter_ns
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "tests", "support"))  # the netns helper

from _timing import table  # noqa: E402

STAMP = struct.Struct("<q")
TOPIC = "b.x"
WARM = "w.x"
TIMEOUT = 60.0
KINDS = {"zmq": "pyzmq PUB/SUB", "bridge": "hftalloc ZmqBridge bus -> bus"}


# -- child processes (one per namespace) ----------------------------------------------------------
def _say(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def _commands() -> Any:
    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd["op"] == "stop":
            return
        yield cmd


def producer(kind: str, address: str, size: int) -> None:
    import zmq

    ctx = zmq.Context()
    if kind == "zmq":
        sock = ctx.socket(zmq.PUB)
        sock.setsockopt(zmq.SNDHWM, 0)
        sock.bind(f"tcp://{address}:*")
        endpoint = sock.getsockopt_string(zmq.LAST_ENDPOINT)
        data_prefix, warm_frame = TOPIC.encode() + b"\0", WARM.encode() + b"\0"
        send = sock.send

        def publish(payload: bytearray) -> None:
            send(data_prefix + payload)

        def warm() -> None:
            send(warm_frame)
    else:
        from hftalloc import MessageBus
        from hftalloc.net import ZmqBridge

        bus = MessageBus(blocks_per_class=64)
        bridge = ZmqBridge(bus, context=ctx, hwm=0)
        endpoint = bridge.publish_to(f"tcp://{address}:*", [TOPIC, WARM])
        bus_publish = bus.publish

        def publish(payload: bytearray) -> None:
            bus_publish(TOPIC, payload)

        def warm() -> None:
            bus_publish(WARM, b"")
    _say({"endpoint": endpoint})
    payload = bytearray(size)
    for cmd in _commands():
        if cmd["op"] == "warm":  # until the parent says the consumer heard us
            while not select.select([sys.stdin], [], [], 0.005)[0]:
                warm()
            sys.stdin.readline()
            _say({"warm": True})
            continue
        n, pace_ns = cmd["n"], cmd["pace_ns"]
        t0 = due = perf_counter_ns()
        for _ in range(n):
            if pace_ns:
                due += pace_ns
                ahead = due - perf_counter_ns()
                if ahead > 0:  # sleep, do not spin: the consumer needs the CPU
                    time.sleep(ahead / 1e9)
                STAMP.pack_into(payload, 0, perf_counter_ns())
            publish(payload)
        _say({"t0": t0})
    if kind == "zmq":
        sock.close(linger=1000)
    else:
        bridge.close()
    ctx.term()


def consumer(kind: str, endpoint: str) -> None:
    import zmq

    ctx = zmq.Context()
    state: dict[str, Any] = {"n": 0, "warm": 0, "lat": None}

    def on_payload(data: Any) -> None:
        state["n"] += 1
        lat = state["lat"]
        if lat is not None:
            lat.append(perf_counter_ns() - STAMP.unpack_from(data)[0])

    if kind == "zmq":
        sock = ctx.socket(zmq.SUB)
        sock.setsockopt(zmq.RCVHWM, 0)
        sock.setsockopt(zmq.RCVTIMEO, 1000)
        sock.connect(endpoint)
        for topic in (TOPIC, WARM):
            sock.setsockopt(zmq.SUBSCRIBE, topic.encode() + b"\0")
        skip, warm_first = len(TOPIC) + 1, WARM.encode()[0]
        recv = sock.recv

        def receive() -> None:
            try:
                buffer = recv(copy=False).buffer
            except zmq.Again:
                return
            if buffer[0] == warm_first:
                state["warm"] += 1
            else:
                on_payload(buffer[skip:])
    else:
        from hftalloc import MessageBus
        from hftalloc.net import ZmqBridge

        bus = MessageBus(blocks_per_class=1024)
        bridge = ZmqBridge(bus, context=ctx, hwm=0)
        bridge.subscribe_from(endpoint, [TOPIC, WARM])
        bus.subscribe(TOPIC, lambda msg: on_payload(msg.payload))
        bus.subscribe(WARM, lambda msg: state.__setitem__("warm", state["warm"] + 1))
        poll = bridge.poll

        def receive() -> None:
            poll(1.0)

    _say({"up": True})
    for cmd in _commands():
        deadline = time.monotonic() + TIMEOUT
        if cmd["op"] == "join":
            while not state["warm"] and time.monotonic() < deadline:
                receive()
            _say({"joined": bool(state["warm"])})
            continue
        n = cmd["n"]
        state["n"] = 0
        state["lat"] = [] if cmd["lat"] else None
        _say({"ready": True})
        while state["n"] < n and time.monotonic() < deadline:
            receive()
        _say({"t_end": perf_counter_ns(), "received": state["n"], "lat": state["lat"]})
    if kind == "zmq":
        sock.close(linger=0)
    else:
        bridge.close()
    ctx.term()


# -- orchestration --------------------------------------------------------------------------------
class Child:
    def __init__(self, argv: list[str]) -> None:
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True)

    def send(self, **cmd: Any) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()

    def reply(self) -> Any:
        assert self.proc.stdout is not None
        if not select.select([self.proc.stdout], [], [], TIMEOUT + 10)[0]:
            raise TimeoutError(f"{self.proc.args[-3:]}: no reply")
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"{self.proc.args[-3:]} exited ({self.proc.wait()})")
        return json.loads(line)

    def request(self, **cmd: Any) -> Any:
        self.send(**cmd)
        return self.reply()

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.send(op="stop")
                self.proc.wait(20)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait(10)


@dataclass
class Result:
    label: str
    size: int
    rate: float
    received: int
    expected: int
    latency: Any


def run_case(pair: Any, kind: str, size: int, n: int, n_lat: int, pace_ns: int,
             repeat: int) -> Result:
    from hftalloc.histogram import Histogram

    me = [sys.executable, os.path.abspath(__file__)]
    prod = Child(pair.run("a", [*me, "--child", "producer", kind, pair.addr["a"], str(size)]))
    cons = None
    try:
        endpoint = prod.reply()["endpoint"]
        cons = Child(pair.run("b", [*me, "--child", "consumer", kind, endpoint]))
        cons.reply()
        prod.send(op="warm")
        joined = cons.request(op="join")["joined"]
        prod.send(op="done")
        prod.reply()
        if not joined:
            raise RuntimeError("the subscriber never heard the publisher")

        def round_trip(count: int, pace: int) -> tuple[int, dict[str, Any]]:
            cons.request(op="run", n=count, lat=bool(pace))
            t0 = prod.request(op="run", n=count, pace_ns=pace)["t0"]
            return t0, cons.reply()

        round_trip(min(n, 2000), 0)  # warm-up
        best, worst = 0.0, n
        for _ in range(repeat):
            t0, got = round_trip(n, 0)
            worst = min(worst, got["received"])
            best = max(best, got["received"] / ((got["t_end"] - t0) / 1e9))
        _, got = round_trip(n_lat, pace_ns)
        hist = Histogram()
        hist.record_many(max(0, v) for v in got["lat"])
        return Result(KINDS[kind], size, best, worst, n, hist)
    finally:
        for child in (prod, cons):
            if child is not None:
                child.close()


def format_results(results: list[Result]) -> str:
    base = {r.size: r.rate for r in results if r.label == KINDS["zmq"]}
    rows = []
    for r in results:
        s = r.latency.summary()
        lost = "" if r.received == r.expected else f" ({r.expected - r.received} lost)"
        rows.append([r.label, f"{r.size} B", f"{r.rate / 1e6:.2f}M{lost}",
                     f"{r.rate / base[r.size]:.2f}x", f"{s.p50 / 1e3:.1f}",
                     f"{s.p99 / 1e3:.1f}", f"{s.p999 / 1e3:.1f}", f"{s.max / 1e3:.0f}"])
    return table(["contender", "payload", "msgs/s", "ratio", "p50 µs", "p99 µs", "p99.9 µs",
                  "max µs"], rows)


def main(argv: list[str] | None = None) -> int:
    args_in = sys.argv[1:] if argv is None else argv
    if args_in[:1] == ["--child"]:
        role, kind, *rest = args_in[1:]
        if role == "producer":
            producer(kind, rest[0], int(rest[1]))
        else:
            consumer(kind, rest[0])
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer messages and rounds")
    parser.add_argument("--repeat", type=int, default=None, help="throughput rounds (best of)")
    parser.add_argument("--pace-us", type=float, default=100.0,
                        help="µs between messages in the latency run (100 = 10k msgs/s)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 1024])
    args = parser.parse_args(args_in)
    try:
        import zmq  # noqa: F401
    except ImportError:
        print("pyzmq is not installed: nothing measured (pip install 'coreallocs[zmq]')")
        return 0
    from netns import NetnsPair, netns_unavailable

    reason = netns_unavailable()
    if reason is not None:
        print(f"Not measured on this machine: {reason}.")
        return 0
    n = 20_000 if args.quick else 200_000
    n_lat = 2_000 if args.quick else 10_000
    repeat = args.repeat or (1 if args.quick else 3)
    print(f"# bench_zmq_netns: Python {platform.python_version()}, {platform.machine()}, "
          f"{os.cpu_count()} CPUs; two network namespaces joined by a veth pair, TCP; "
          f"{n:,} msgs x {repeat} (throughput), {n_lat:,} msgs at {1e6 / args.pace_us:,.0f}/s "
          f"(latency)", flush=True)
    results = []
    with NetnsPair() as pair:
        for size in args.sizes:
            for kind in KINDS:
                started = time.perf_counter()
                result = run_case(pair, kind, size, n, n_lat, int(args.pace_us * 1000), repeat)
                results.append(result)
                print(f"  {result.label:<32} {size:>5} B  {result.rate:>12,.0f} msgs/s  "
                      f"({time.perf_counter() - started:.1f} s)", flush=True)
    print()
    print(format_results(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
