"""Journal benchmarks: hftalloc.journal against what a user would write instead, same run.

    python benchmarks/bench_journal.py [--quick] [--dir DIR]

1. append 64 B / 1 KiB records from Python: JournalWriter.append vs a hand-written
   buffered ``file.write(struct.pack(header) + payload)`` loop vs ``pickle.dump`` per
   message (ratios: the hand-written loop = 1.0x)
2. a bus with a Recorder attached vs the same bus without (64 B, one no-op subscriber)
3. sequential read: JournalReader iteration vs a hand-written ``struct.unpack_from``
   loop over an mmap of the hand-written file
4. replay into a bus with a no-op subscriber (msgs/s)
5. append latency p50/p99/p99.9 per flush policy (none, interval, every) and the flush
   cost per record

Files go to DIR (default: a temporary directory on the filesystem of the system temp dir).
"""

from __future__ import annotations

import argparse
import gc
import mmap
import os
import pickle
import shutil
import struct
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import table

from hftalloc import MessageBus
from hftalloc.journal import (
    JournalReader,
    JournalWriter,
    Recorder,
    crc32c_implementation,
    replay,
)

HEADER = struct.Struct("<IIQqII")   # the same 32-byte header the journal writes
TOPICS = ("md.quote.AAPL", "md.quote.MSFT", "md.trade.AAPL", "md.trade.MSFT")


def best_of(fn, repeat: int) -> float:  # type: ignore[no-untyped-def]
    """Smallest wall time of ``fn()`` over ``repeat`` runs (GC off while timing)."""
    best = float("inf")
    for _ in range(repeat):
        gc.collect()
        gc.disable()
        try:
            t0 = time.perf_counter()
            fn()
            best = min(best, time.perf_counter() - t0)
        finally:
            gc.enable()
    return best


def fresh(base: str, name: str) -> str:
    path = os.path.join(base, name)
    shutil.rmtree(path, ignore_errors=True)
    if os.path.exists(path):
        os.unlink(path)
    return path


# -- 1. append ------------------------------------------------------------------------------
def bench_append(base: str, size: int, n: int, repeat: int) -> list[tuple[str, float]]:
    payload = bytes(range(256)) * (size // 256) + bytes(size % 256)
    monotonic_ns = time.monotonic_ns

    writers: list[JournalWriter] = []

    def journal() -> None:
        append = writers[-1].append
        for i in range(n):
            append(TOPICS[i & 3], payload)

    def hand_written() -> None:
        pack = HEADER.pack
        with open(fresh(base, "hand.bin"), "wb", buffering=1 << 20) as f:
            write = f.write
            ids = {t: k for k, t in enumerate(TOPICS)}
            for i in range(n):
                write(pack(32 + size, 0, i + 1, monotonic_ns(), ids[TOPICS[i & 3]], 0) + payload)

    def pickled() -> None:
        with open(fresh(base, "pickle.bin"), "wb", buffering=1 << 20) as f:
            dump = pickle.dump
            for i in range(n):
                dump((TOPICS[i & 3], i + 1, monotonic_ns(), payload), f, 5)

    def journal_timed() -> float:
        """Best of ``repeat`` runs, each on a fresh journal opened before the clock starts
        (both peers' files are created in a few microseconds; a segment is preallocated)."""
        best = float("inf")
        for _ in range(repeat):
            writers.append(JournalWriter(fresh(base, "j-append"), segment_size=64 << 20))
            best = min(best, best_of(journal, 1))
            writers.pop().close()
        return best

    out = [("JournalWriter.append", journal_timed() / n * 1e9)]
    for name, fn in (
                     ("hand-written file.write(struct.pack + payload)", hand_written),
                     ("pickle.dump per message", pickled)):
        out.append((name, best_of(fn, repeat) / n * 1e9))
    return out


# -- 2. bus with a recorder -----------------------------------------------------------------
def bench_recorder(base: str, n: int, repeat: int) -> list[tuple[str, float]]:
    payload = b"x" * 64

    def run(record: bool, subscribers: int) -> float:
        bus = MessageBus(blocks_per_class=256)
        for _ in range(subscribers):
            bus.subscribe("md.>", lambda msg: None)
        w = None
        if record:
            w = JournalWriter(fresh(base, "j-rec"), segment_size=64 << 20)
            Recorder(bus, w, "md.>")
        publish = bus.publish

        def loop() -> None:
            for i in range(n):
                publish(TOPICS[i & 3], payload)

        took = best_of(loop, repeat) / n * 1e9
        if w is not None:
            w.close()
        bus.close()
        return took

    return [("bus, 1 no-op subscriber", run(False, 1)),
            ("bus, 1 no-op subscriber + Recorder", run(True, 1)),
            ("bus, no subscriber", run(False, 0)),
            ("bus, Recorder only", run(True, 0))]


# -- 3. sequential read -----------------------------------------------------------------------
def bench_read(base: str, n: int, repeat: int) -> list[tuple[str, float]]:
    payload = b"r" * 64
    jpath = fresh(base, "j-read")
    with JournalWriter(jpath, segment_size=64 << 20) as w:
        for i in range(n):
            w.append(TOPICS[i & 3], payload)
    hpath = fresh(base, "hand-read.bin")
    with open(hpath, "wb", buffering=1 << 20) as f:
        for i in range(n):
            f.write(HEADER.pack(32 + 64, 0, i + 1, i, i & 3, 0) + payload)

    def journal() -> None:
        total = 0
        for rec in JournalReader(jpath):
            total += len(rec)
        assert total == 64 * n

    def hand() -> None:
        with open(hpath, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            view = memoryview(mm)
            unpack_from = HEADER.unpack_from
            pos, end, total = 0, len(mm), 0
            while pos < end:
                length, _crc, _seq, _ts, _tid, _flags = unpack_from(mm, pos)
                data = view[pos + 32:pos + length]
                total += len(data)
                pos += (length + 7) & ~7
            del data, view
        assert total == 64 * n

    return [("JournalReader iteration (CRC checked)", best_of(journal, repeat) / n * 1e9),
            ("hand-written struct.unpack_from over mmap (no CRC)", best_of(hand, repeat) / n * 1e9)]


# -- 4. replay ----------------------------------------------------------------------------------
def bench_replay(base: str, n: int, repeat: int) -> list[tuple[str, float]]:
    jpath = fresh(base, "j-replay")
    with JournalWriter(jpath, segment_size=64 << 20) as w:
        for i in range(n):
            w.append(TOPICS[i & 3], b"p" * 64)
    rows = []
    for label, with_ts in (("replay -> bus.publish_at (original stamps)", True),
                           ("replay -> bus.publish (fresh stamps)", False)):
        bus = MessageBus(blocks_per_class=256)
        bus.subscribe("md.>", lambda msg: None)
        target = bus if with_ts else _PublishOnly(bus)
        took = best_of(lambda target=target: replay(jpath, target), repeat)
        rows.append((label, took / n * 1e9))
        bus.close()
    bus = MessageBus(blocks_per_class=256)
    bus.subscribe("md.>", lambda msg: None)
    publish = bus.publish
    payload = b"p" * 64

    def loop() -> None:
        for i in range(n):
            publish(TOPICS[i & 3], payload)

    rows.append(("for-loop of bus.publish (the bus alone)", best_of(loop, repeat) / n * 1e9))
    bus.close()
    return rows


class _PublishOnly:
    """A bus seen without publish_at (replay then uses publish)."""

    def __init__(self, bus: MessageBus) -> None:
        self.publish = bus.publish


# -- 5. latency per flush policy ---------------------------------------------------------------
def bench_latency(base: str, n: int) -> list[list[str]]:
    payload = b"l" * 64
    rows = []
    clock = time.perf_counter_ns
    t0 = clock()
    for _ in range(10000):
        clock()
    overhead = (clock() - t0) / 10000
    mean_none = None
    for policy, count in (("none", n), ("interval", n), ("every", max(200, n // 50))):
        w = JournalWriter(fresh(base, f"j-lat-{policy}"), segment_size=64 << 20,
                          flush=policy, flush_interval=0.01)
        append = w.append
        samples = []
        gc.disable()
        try:
            for i in range(count):
                t = clock()
                append(TOPICS[i & 3], payload)
                samples.append(clock() - t)
        finally:
            gc.enable()
        w.close()
        samples.sort()

        def q(p: float, samples: list[int] = samples) -> float:
            return samples[min(len(samples) - 1, int(p * len(samples)))]

        mean = sum(samples) / len(samples)
        if mean_none is None:
            mean_none = mean
        rows.append([policy, f"{count:,}", f"{q(0.5):,.0f}", f"{q(0.99):,.0f}",
                     f"{q(0.999):,.0f}", f"{samples[-1]:,.0f}", f"{mean:,.0f}",
                     f"{max(0.0, mean - mean_none):,.0f}"])
    rows.append(["(timer overhead per sample)", "", f"{overhead:,.0f}", "", "", "", "", ""])
    return rows


def ratio_rows(rows: list[tuple[str, float]], baseline: int, faster_is_lower: bool = True
               ) -> list[list[str]]:
    base = rows[baseline][1]
    return [[name, f"{ns:,.0f}", f"{1e9 / ns / 1e6:,.2f}", f"{base / ns:.2f}x"]
            for name, ns in rows]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer messages and repeats")
    parser.add_argument("--dir", default=None, help="where the files go")
    args = parser.parse_args(argv)
    n = 20_000 if args.quick else 300_000
    repeat = 2 if args.quick else 5
    base = tempfile.mkdtemp(prefix="bench-journal-", dir=args.dir)
    try:
        print(f"hftalloc.journal benchmarks: {n:,} messages, best of {repeat}, CRC-32C "
              f"{crc32c_implementation()}, files in {base}\n")
        headers = ["contender", "ns/msg", "M msg/s", "ratio"]
        for size in (64, 1024):
            rows = bench_append(base, size, n, repeat)
            print(f"### append {size} B (ratio: speed vs the hand-written loop)\n")
            print(table(headers, ratio_rows(rows, 1)) + "\n")
        rows = bench_recorder(base, n, repeat)
        print("### bus with a Recorder vs without, 64 B (ratio: speed vs the bus with one "
              "no-op subscriber)\n")
        print(table(headers, ratio_rows(rows, 0)) + "\n")
        rows = bench_read(base, n, repeat)
        print("### sequential read, 64 B (ratio: speed vs the hand-written loop)\n")
        print(table(headers, ratio_rows(rows, 1)) + "\n")
        rows = bench_replay(base, n, repeat)
        print("### replay into a bus with a no-op subscriber, 64 B (ratio: vs the bus alone)\n")
        print(table(headers, ratio_rows(rows, 2)) + "\n")
        print("### append latency per flush policy, 64 B (ns; flush cost = mean - mean of "
              "'none')\n")
        print(table(["flush", "appends", "p50", "p99", "p99.9", "max", "mean", "flush cost"],
                    bench_latency(base, n)))
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
