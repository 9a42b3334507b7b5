"""framealloc benchmark: scratch arrays vs numpy.empty, swap() cost, demo frame times.

    PYTHONPATH=src python3 benchmarks/bench_frame.py           # full run (~1 min)
    PYTHONPATH=src python3 benchmarks/bench_frame.py --quick   # a few seconds

Everything is measured in the same process and reported as ratios. Timings are the
best of several interleaved repeats (the minimum is the least disturbed by other
processes); the demo figures are percentiles over all its frames.

1. Scratch arrays of 16, 1 Ki and 64 Ki float64: ``FrameAllocator.array(n)`` and
   ``arrays(8, n)`` (8 per call) against
   ``numpy.empty(n)``. Each frame allocates its arrays and drops them; framealloc's
   time includes its share of ``swap()``. A "floor" row times the cheapest compiled
   call with one argument: the bound on any per-call allocator driven from Python.
2. ``swap()`` with 10, 1 000 and 100 000 allocations in the frame being recycled
   (arrays and raw blocks): median of single swaps, and the ratio to the 10 case.
   "warm": the frame before the swap made 100 small arrays; "cold": it ran a burst
   of unrelated numpy calls first (the same burst for every count), which is what
   a real frame does and costs the interpreted swap path its cache lines.
3. The particle demo (examples/game_demo.py): frame time p50/p99 in framealloc mode,
   naive mode (numpy temporaries) and numpy-out mode (same code, numpy.empty), the
   modes taking turns in 4 slices of the run.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from framealloc import FrameAllocator

ROOT = Path(__file__).resolve().parents[1]


# -- 1. scratch arrays ------------------------------------------------------------------
BATCH = 8  # arrays per arrays() call in the batch row


def time_batches(make: Callable[[int], object], n: int, calls: int, frames: int,
                 end_frame: Callable[[], object] | None, per_call: int = 1) -> float:
    """Seconds per array for `frames` frames of `calls` calls of `make(n)` (each call
    returning `per_call` arrays of n float64)."""
    started = time.perf_counter()
    for _ in range(frames):
        for _ in range(calls):
            make(n)
        if end_frame is not None:
            end_frame()
    return (time.perf_counter() - started) / (calls * frames * per_call)


def bench_scratch(quick: bool) -> list[tuple[str, ...]]:
    repeats = 5 if quick else 9
    total = 20_000 if quick else 200_000
    frame_size = 32 << 20
    # name -> (make, end of frame, arrays per call)
    contenders: dict[str, tuple[Callable[[int], object], Callable[[], object] | None, int]] = {
        "numpy.empty": (np.empty, None, 1),
    }
    fa = FrameAllocator(frame_size)
    fb = FrameAllocator(frame_size)
    allocators = [fa, fb]
    contenders["framealloc array() (compiled)"] = (fa.array, fa.swap, 1)
    batch = fb.arrays
    contenders[f"framealloc arrays({BATCH}, n) (compiled)"] = (
        lambda n: batch(BATCH, n), fb.swap, BATCH)
    # the cheapest possible call of a compiled method with one argument (it returns an
    # existing object): no allocator called from Python per array can be faster
    contenders["floor: any compiled call (dict.get)"] = ({}.get, None, 1)

    rows = []
    for n in (16, 1024, 65536):
        nbytes = n * 8
        per_frame = max(BATCH, min(1000, (frame_size // 2) // nbytes))
        frames = max(3, total // per_frame // (8 if n == 65536 else 1))
        best = {name: float("inf") for name in contenders}
        for _ in range(repeats):  # interleaved: drifts in machine load hit everyone alike
            for name, (make, end, per_call) in contenders.items():
                gc.collect()
                t = time_batches(make, n, per_frame // per_call, frames, end, per_call)
                best[name] = min(best[name], t)
        base = best["numpy.empty"]
        for name, t in best.items():
            ratio = "1.00x" if name == "numpy.empty" else f"{base / t:.2f}x"
            rows.append((f"{n} floats", name, f"{t * 1e9:.0f}", ratio))
    for fa in allocators:
        assert fa.leaks == 0 and fa.overflows == 0
    return rows


# -- 2. swap cost ----------------------------------------------------------------------------
def time_swaps(fa: FrameAllocator, make: Callable[[int], object], count: int, samples: int,
               between: Callable[[], object]) -> float:
    """Median ns of the swap that recycles a buffer holding `count` allocations.

    Frame A makes `count` allocations (dropped at once); frame B runs `between`, the
    same work whatever `count` is, so the cache state before the timed swap does not
    depend on `count`; the swap from B to C then recycles A's buffer.
    """
    times = []
    for _ in range(samples):
        for _ in range(count):
            make(16)
        fa.swap()
        between()
        started = time.perf_counter_ns()
        fa.swap()
        times.append(time.perf_counter_ns() - started)
    return statistics.median(times)


def bench_swap(quick: bool) -> list[tuple[str, ...]]:
    samples = 15 if quick else 41
    burst = 20_000 if quick else 100_000
    fa = FrameAllocator(16 << 20)

    def warm() -> None:  # 100 small arrays in frame B
        for _ in range(100):
            fa.array(16)

    def cold() -> None:  # a burst of unrelated numpy work evicts the swap path from caches
        for _ in range(burst):
            np.empty(16)

    cases = {"arrays, warm": (fa.array, warm), "blocks, warm": (fa.allocate, warm),
             "arrays, cold": (fa.array, cold)}
    medians = {name: {count: time_swaps(fa, make, count, samples, between)
                      for count in (10, 1000, 100_000)}
               for name, (make, between) in cases.items()}
    rows = []
    for count in (10, 1000, 100_000):
        row = [f"{count}"]
        for name in cases:
            t = medians[name][count]
            row += [f"{t / 1e3:.1f}", f"{t / medians[name][10]:.2f}x"]
        rows.append(tuple(row))
    assert fa.leaks == 0
    return rows


# -- 3. demo frame times ------------------------------------------------------------------
def bench_demo(quick: bool) -> tuple[list[tuple[str, ...]], str]:
    spec = importlib.util.spec_from_file_location("game_demo", ROOT / "examples" / "game_demo.py")
    assert spec and spec.loader
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    particles, frames = (5000, 150) if quick else (20_000, 600)
    gc.collect()
    runs = demo.run_interleaved(list(demo.MODES), particles, frames)  # modes take turns
    results = {mode: stats.summary() for mode, (stats, _, _) in runs.items()}
    base = results["framealloc"]
    rows = []
    for mode, s in results.items():
        rows.append((mode, f"{s['frame_ms_p50']:.3f}", f"{s['frame_ms_p99']:.3f}",
                     f"{s['frame_ms_p50'] / base['frame_ms_p50']:.2f}x",
                     f"{s['frame_ms_p99'] / base['frame_ms_p99']:.2f}x",
                     str(s["gc_collections"])))
    return rows, f"{particles} particles, {frames} frames per mode"


def table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="framealloc benchmark")
    parser.add_argument("--quick", action="store_true", help="short run (a few seconds)")
    args = parser.parse_args(argv)
    print(f"python {sys.version.split()[0]}, numpy {np.__version__}"
          f"{', quick run' if args.quick else ''}\n")

    print("## Scratch arrays: ns per array (ratio = numpy.empty time / this time, >1 is faster)\n")
    print(table(("size", "allocator", "ns/array", "vs numpy.empty"), bench_scratch(args.quick)))
    print("\n## swap() cost: median us per swap, by allocations in the recycled frame\n")
    print(table(("allocations", "arrays warm: us", "vs 10", "blocks warm: us", "vs 10",
                 "arrays cold: us", "vs 10"), bench_swap(args.quick)))
    rows, what = bench_demo(args.quick)
    print(f"\n## Particle demo ({what}): frame time (ratio = mode / framealloc, >1 is slower)\n")
    print(table(("mode", "p50 ms", "p99 ms", "p50 vs framealloc", "p99 vs framealloc",
                 "GC collections"), rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
