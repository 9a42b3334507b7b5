"""Game-loop hitches from the cyclic GC: CPython's default vs framealloc's frame policy.

    python benchmarks/bench_game_loop.py            # 10 000 frames per mode (~3 min)
    python benchmarks/bench_game_loop.py --quick    # 600 frames per mode (~20 s)

A world of 300 000 long-lived objects (what a loaded level holds) and, each frame,
2 000 small cyclic objects (1 000 pairs pointing at each other: events, contacts),
of which 100 live on for 60 frames (effects, projectiles): those survive the young
collections and reach the old generation, which is what eventually makes CPython
run a full collection over the whole world.
Three modes in the same process, sharing the world and taking turns in slices of
the run so that machine noise hits them alike, each paced at a fixed ``target_fps``:

- ``default``: ``GameLoop(gc="auto")``, CPython's collector as it is;
- ``frame policy``: ``GameLoop(gc="frame")`` + ``loop.freeze()`` after loading;
- ``policy + frame objects``: the same, the pairs taken from ``frame.objects(Pair)``
  (recycled at swap instead of becoming garbage).

Per mode: work time per frame (update + render + swap) p50/p99/p99.9/max, interval
between presented frames p50/max and hitches (a frame presented more than two
periods after the previous one), GC pause time inside frames and in the slack
between them, full collections inside frames, and -- from a child process per mode
running the same frames unpaced -- RSS after the run and the objects a final full
collection still finds (garbage the mode left behind).
"""

from __future__ import annotations

import argparse
import gc
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from framealloc import FixedStepClock, Frame, FrameAllocator, GameLoop, LoopStats
from framealloc.gcpolicy import GCMode

MODES = ("default", "frame policy", "policy + frame objects")
WORLD = 300_000
PAIRS = 1_000  # 2 000 cyclic objects per frame
KEPT = 50  # pairs per frame that live on for LIFETIME frames
LIFETIME = 60
TARGET_FPS = 240.0


class Pair:
    """A small object that points at its partner (a reference cycle per pair)."""

    __slots__ = ("other", "value")
    other: Pair | None
    value: int


def make_world(size: int = WORLD) -> list[Any]:
    """Long-lived, GC-tracked objects: what a loaded level keeps alive."""
    return [[i, (i, i + 1)] for i in range(size)]


def make_loop(mode: str, *, target_fps: float | None = TARGET_FPS) -> GameLoop:
    alive: list[list[Pair]] = []  # the pairs of the last LIFETIME frames that live on

    def keep(a: Pair, b: Pair) -> None:
        a.other, b.other = b, a
        alive[-1].append(a)

    def churn(dt: float, frame: Frame) -> None:
        alive.append([])
        for i in range(PAIRS - KEPT):
            a, b = Pair(), Pair()
            a.other, b.other = b, a
            a.value = b.value = i
        for _ in range(KEPT):
            keep(Pair(), Pair())
        del alive[:-LIFETIME]

    def pooled(dt: float, frame: Frame) -> None:
        alive.append([])
        new = frame.objects(Pair).new
        for i in range(PAIRS - KEPT):
            a, b = new(None, i), new(None, i)
            a.other, b.other = b, a
        for _ in range(KEPT):  # (these outlive the frame: ordinary objects)
            keep(Pair(), Pair())
        del alive[:-LIFETIME]

    policy: GCMode = "auto" if mode == "default" else "frame"
    loop = GameLoop(pooled if mode == "policy + frame objects" else churn,
                    allocator=FrameAllocator(1 << 16), dt=1 / 60,
                    clock=FixedStepClock(1 / 60), target_fps=target_fps, gc=policy)
    if policy == "frame":
        loop.freeze()
    return loop


def run_interleaved(frames: int, slices: int = 10) -> dict[str, LoopStats]:
    """Every mode for `frames` frames, taking turns in `slices` slices (one world)."""
    world = make_world()  # noqa: F841 - kept alive for the whole run
    gc.collect()
    loops = {mode: make_loop(mode) for mode in MODES}
    for loop in loops.values():
        loop.run(20)  # warm up (not counted below: fresh stats)
        loop.reset_stats()
    done = 0
    for k in range(slices):
        n = frames * (k + 1) // slices - done
        for loop in loops.values():
            loop.run(n)
        done += n
    return {mode: loop.stats for mode, loop in loops.items()}


def child_memory(mode: str, frames: int) -> dict[str, float]:
    """RSS after `frames` unpaced frames of `mode` in a fresh interpreter, and the
    objects a final full collection frees then."""
    code = (f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); "
            f"import bench_game_loop as b; b._memory_child({mode!r}, {frames})")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=600).stdout
    return json.loads(out.strip().splitlines()[-1])


def _memory_child(mode: str, frames: int) -> None:
    world = make_world()  # noqa: F841
    gc.collect()
    loop = make_loop(mode, target_fps=None)
    loop.run(frames)
    rss = _rss_mib()
    left = gc.collect()
    print(json.dumps({"rss_mib": rss, "garbage_left": left}))


def _rss_mib() -> float:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * 4096 / 2**20
    except OSError:  # not Linux: the peak instead
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rows(quick: bool = False) -> list[dict[str, Any]]:
    """The benchmark's table rows, one dict per mode (for the docs and the script)."""
    frames = 600 if quick else 10_000
    results = run_interleaved(frames, slices=3 if quick else 10)
    memory = {mode: child_memory(mode, frames) for mode in MODES}
    out = []
    for mode, stats in results.items():
        s = stats.summary()
        out.append({
            "mode": mode, "frames": s["frames"],
            "work_p50_ms": s["frame_ms_p50"], "work_p99_ms": s["frame_ms_p99"],
            "work_p999_ms": s["frame_ms_p99.9"], "work_max_ms": s["frame_ms_max"],
            "interval_p50_ms": s["interval_ms_p50"], "interval_max_ms": s["interval_ms_max"],
            "hitches": s["hitches"],
            "gc_ms_in_frames": s["gc_ms_in_frames"], "gc_ms_in_slack": s["gc_ms_in_slack"],
            "full_in_frames": s["gc_full_in_frames"],
            "longest_gc_ms": s["gc_longest_pause_ms"],
            "collections": (s["gc_collections_gen0"], s["gc_collections_gen1"],
                            s["gc_collections_gen2"]),
            "rss_mib": memory[mode]["rss_mib"], "garbage_left": memory[mode]["garbage_left"],
        })
    return out


def table(data: list[dict[str, Any]]) -> str:
    header = ("mode", "frames", "work p50 ms", "p99", "p99.9", "max", "interval p50 ms",
              "interval max", "hitches", "GC ms in frames", "GC ms in slack",
              "full GCs in frames", "longest GC ms", "GCs gen0/1/2", "RSS MiB", "garbage left")
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for r in data:
        cells = (r["mode"], str(r["frames"]), f"{r['work_p50_ms']:.3f}", f"{r['work_p99_ms']:.3f}",
                 f"{r['work_p999_ms']:.3f}", f"{r['work_max_ms']:.3f}",
                 f"{r['interval_p50_ms']:.3f}", f"{r['interval_max_ms']:.3f}", str(r["hitches"]),
                 f"{r['gc_ms_in_frames']:.1f}", f"{r['gc_ms_in_slack']:.1f}",
                 str(r["full_in_frames"]), f"{r['longest_gc_ms']:.1f}",
                 "/".join(map(str, r["collections"])),
                 f"{r['rss_mib']:.0f}", str(r["garbage_left"]))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def verdicts(data: list[dict[str, Any]]) -> list[str]:
    """The targets of the frame-aware modes, checked against the default's row."""
    default = next(r for r in data if r["mode"] == "default")
    out = []
    for r in data:
        if r["mode"] == "default":
            continue
        p50 = r["work_p50_ms"]
        checks = {
            "max <= 3x p50": r["work_max_ms"] <= 3 * p50,
            "p99.9 <= 2x p50": r["work_p999_ms"] <= 2 * p50,
            "no hitches": r["hitches"] == 0,
            "RSS <= 1.2x default": r["rss_mib"] <= 1.2 * default["rss_mib"],
        }
        out.append(f"{r['mode']}: " + ", ".join(
            f"{name} {'yes' if ok else 'NO'}" for name, ok in checks.items()))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="framealloc game-loop GC benchmark")
    parser.add_argument("--quick", action="store_true", help="600 frames per mode")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    data = rows(args.quick)
    print(f"python {sys.version.split()[0]}, {WORLD} long-lived objects, {2 * PAIRS} cyclic "
          f"objects per frame, target_fps {TARGET_FPS:.0f} (period {1e3 / TARGET_FPS:.1f} ms), "
          f"modes interleaved; {time.perf_counter() - started:.0f} s\n")
    print(table(data))
    print()
    for line in verdicts(data):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
