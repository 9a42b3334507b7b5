"""Game-loop hitches from the cyclic GC: CPython's default vs framealloc's frame policy.

    python benchmarks/bench_game_loop.py            # 10 000 frames per mode (~4 min)
    python benchmarks/bench_game_loop.py --quick    # 600 frames per mode (~30 s)

A world of 300 000 long-lived objects (what a loaded level holds) and, each frame,
2 000 small cyclic objects (1 000 pairs pointing at each other: events, contacts),
of which 100 live on for 60 frames (effects, projectiles): those survive the young
collections and reach the old generation, which is what eventually makes CPython
run a full collection over the whole world.
Four modes take turns in slices of the run so that machine noise hits them alike,
each paced at a fixed ``target_fps``:

- ``no GC (floor)``: the same workload with the collector disabled for the whole run
  and nothing collected -- garbage grows, so it is no policy but the floor: its
  max/p50 and p99.9/p50 are what this machine's noise alone does to the workload.
  It runs in a child interpreter in lockstep with the others (its garbage must not
  become work for the other modes' collections);
- ``default``: ``GameLoop(gc="auto")``, CPython's collector as it is;
- ``frame policy``: ``GameLoop(gc="frame")`` + ``loop.freeze()`` after loading;
- ``policy + frame objects``: the same, the pairs taken from ``frame.objects(Pair)``
  (recycled at swap instead of becoming garbage).

Per mode: work time per frame (update + render + swap) p50/p99/p99.9/max, interval
between presented frames p50/max and hitches (a frame presented more than two
periods after the previous one), GC pause time inside frames and in the slack
between them, the time spent settling frame records in the slack (the frame-objects
mode: its records are taken back there, right after the swap), full collections
inside frames, the worst work time of the frames that
follow a slack collection of generation 1 or 2 against that of the other frames (do
the outliers come from caches a collection left cold?), and -- from a child process
per mode running the same frames unpaced -- RSS after the run and the objects a
final full collection still finds (garbage the mode left behind). The target checks
compare each frame-aware mode with the targets and with the floor's ratios.
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

import numpy as np

from framealloc import FixedStepClock, Frame, FrameAllocator, GameLoop, LoopStats
from framealloc.gcpolicy import GCMode

FLOOR = "no GC (floor)"
MODES = (FLOOR, "default", "frame policy", "policy + frame objects")
IN_PROCESS = MODES[1:]
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

    policy: GCMode = "frame" if mode in ("frame policy", "policy + frame objects") else "auto"
    loop = GameLoop(pooled if mode == "policy + frame objects" else churn,
                    allocator=FrameAllocator(1 << 16), dt=1 / 60,
                    clock=FixedStepClock(1 / 60), target_fps=target_fps, gc=policy)
    if policy == "frame":
        loop.freeze()
    return loop


def run_interleaved(frames: int, slices: int = 10) -> dict[str, dict[str, Any]]:
    """Every mode for `frames` frames, taking turns in `slices` slices (one world in this
    process; the floor in a child interpreter, in lockstep)."""
    floor = FloorChild()
    try:
        world = make_world()  # noqa: F841 - kept alive for the whole run
        gc.collect()
        loops = {mode: make_loop(mode) for mode in IN_PROCESS}
        floor.ready()
        for loop in loops.values():
            loop.run(20)  # warm up (not counted below: fresh stats)
            loop.reset_stats()
        done = 0
        for k in range(slices):
            n = frames * (k + 1) // slices - done
            floor.run(n)
            for loop in loops.values():
                loop.run(n)
            done += n
        results = {FLOOR: floor.results()}
    finally:
        floor.close()
    results.update({mode: _results(loop.stats) for mode, loop in loops.items()})
    return results


def _results(stats: LoopStats) -> dict[str, Any]:
    """What the report needs of a mode's stats (JSON-able: the floor's come from a child)."""
    return {"summary": stats.summary(),
            "work_ms": (stats.series("frame_time") * 1e3).tolist(),
            "slack_generation": stats.series("gc_slack_generation").astype(int).tolist()}


class FloorChild:
    """The floor mode in a child interpreter, running its slices when told to."""

    def __init__(self) -> None:
        code = (f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); "
                f"import bench_game_loop as b; b._floor_child()")
        self.proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)

    def _ask(self, command: str) -> str:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the floor child ended (exit status {self.proc.wait()})")
        return line

    def ready(self) -> None:
        """Wait until the child has built its world and warmed up."""
        self._ask("ready")

    def run(self, frames: int) -> None:
        self._ask(f"run {frames}")

    def results(self) -> dict[str, Any]:
        return dict(json.loads(self._ask("results")))

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


def _floor_child() -> None:
    world = make_world()  # noqa: F841
    gc.collect()
    gc.disable()  # for the whole run: nothing is collected
    loop = make_loop(FLOOR)
    loop.run(20)
    loop.reset_stats()
    for line in sys.stdin:
        command, *arg = line.split()
        if command == "run":
            loop.run(int(arg[0]))
            print("done", flush=True)
        elif command == "results":
            print(json.dumps(_results(loop.stats)), flush=True)
        else:
            print("ok", flush=True)


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
    if mode == FLOOR:
        gc.disable()
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


def after_old_collections(work_ms: list[float], slack_generation: list[int]
                          ) -> dict[str, float]:
    """Frames that follow a slack collection of generation >= 1 against the others:
    how many, and the p50 and max work ms of both."""
    work = np.asarray(work_ms)
    before = np.asarray(slack_generation)
    follows = np.zeros(len(work), bool)
    follows[1:] = before[:-1] >= 1

    def stat(values: np.ndarray, f: Any) -> float:
        return float(f(values)) if len(values) else float("nan")

    return {"after_old_gc": int(follows.sum()),
            "after_old_gc_p50_ms": stat(work[follows], np.median),
            "after_old_gc_max_ms": stat(work[follows], np.max),
            "other_p50_ms": stat(work[~follows], np.median),
            "other_max_ms": stat(work[~follows], np.max)}


def rows(quick: bool = False) -> list[dict[str, Any]]:
    """The benchmark's table rows, one dict per mode (for the docs and the script)."""
    frames = 600 if quick else 10_000
    results = run_interleaved(frames, slices=3 if quick else 10)
    memory = {mode: child_memory(mode, frames) for mode in MODES}
    out = []
    for mode in MODES:
        s = results[mode]["summary"]
        out.append({
            "mode": mode, "frames": s["frames"],
            "work_p50_ms": s["frame_ms_p50"], "work_p99_ms": s["frame_ms_p99"],
            "work_p999_ms": s["frame_ms_p99.9"], "work_max_ms": s["frame_ms_max"],
            "interval_p50_ms": s["interval_ms_p50"], "interval_max_ms": s["interval_ms_max"],
            "hitches": s["hitches"],
            "gc_ms_in_frames": s["gc_ms_in_frames"], "gc_ms_in_slack": s["gc_ms_in_slack"],
            "settle_ms": s["objects_settle_ms"],
            "full_in_frames": s["gc_full_in_frames"],
            "longest_gc_ms": s["gc_longest_pause_ms"],
            "collections": (s["gc_collections_gen0"], s["gc_collections_gen1"],
                            s["gc_collections_gen2"]),
            **after_old_collections(results[mode]["work_ms"],
                                    results[mode]["slack_generation"]),
            "rss_mib": memory[mode]["rss_mib"], "garbage_left": memory[mode]["garbage_left"],
        })
    return out


def table(data: list[dict[str, Any]]) -> str:
    header = ("mode", "frames", "work p50 ms", "p99", "p99.9", "max", "interval p50 ms",
              "interval max", "hitches", "GC ms in frames", "GC ms in slack",
              "records settled in slack ms", "full GCs in frames", "longest GC ms",
              "GCs gen0/1/2", "RSS MiB", "garbage left")
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for r in data:
        cells = (r["mode"], str(r["frames"]), f"{r['work_p50_ms']:.3f}", f"{r['work_p99_ms']:.3f}",
                 f"{r['work_p999_ms']:.3f}", f"{r['work_max_ms']:.3f}",
                 f"{r['interval_p50_ms']:.3f}", f"{r['interval_max_ms']:.3f}", str(r["hitches"]),
                 f"{r['gc_ms_in_frames']:.1f}", f"{r['gc_ms_in_slack']:.1f}",
                 f"{r['settle_ms']:.1f}", str(r["full_in_frames"]), f"{r['longest_gc_ms']:.1f}",
                 "/".join(map(str, r["collections"])),
                 f"{r['rss_mib']:.0f}", str(r["garbage_left"]))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def outlier_table(data: list[dict[str, Any]]) -> str:
    """Worst frames right after a slack collection of generation >= 1 vs the others."""
    header = ("mode", "frames after a gen-1/2 slack GC", "their p50 work ms", "their max",
              "other frames' p50 work ms", "their max", "max / p50", "p99.9 / p50")
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for r in data:
        p50 = r["work_p50_ms"]
        cells = (r["mode"], str(r["after_old_gc"]), f"{r['after_old_gc_p50_ms']:.3f}",
                 f"{r['after_old_gc_max_ms']:.3f}", f"{r['other_p50_ms']:.3f}",
                 f"{r['other_max_ms']:.3f}", f"{r['work_max_ms'] / p50:.2f}",
                 f"{r['work_p999_ms'] / p50:.2f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def verdicts(data: list[dict[str, Any]]) -> list[str]:
    """The targets of the frame-aware modes: absolute (against the default's RSS for
    memory) and against the floor's own max/p50 and p99.9/p50."""
    by_mode = {r["mode"]: r for r in data}
    default, floor = by_mode["default"], by_mode[FLOOR]
    floor_max = floor["work_max_ms"] / floor["work_p50_ms"]
    floor_tail = floor["work_p999_ms"] / floor["work_p50_ms"]
    out = []
    for r in data:
        if r["mode"] in (FLOOR, "default"):
            continue
        p50 = r["work_p50_ms"]
        ratio_max, ratio_tail = r["work_max_ms"] / p50, r["work_p999_ms"] / p50
        checks = {
            f"max <= 3x p50 ({ratio_max:.2f}x)": ratio_max <= 3,
            f"p99.9 <= 2x p50 ({ratio_tail:.2f}x)": ratio_tail <= 2,
            "no hitches": r["hitches"] == 0,
            "RSS <= 1.2x default": r["rss_mib"] <= 1.2 * default["rss_mib"],
        }
        floor_checks = {
            f"max/p50 <= floor's {floor_max:.2f}x": ratio_max <= floor_max,
            f"p99.9/p50 <= floor's {floor_tail:.2f}x": ratio_tail <= floor_tail,
            f"hitches <= floor's {floor['hitches']}": r["hitches"] <= floor["hitches"],
        }
        out.append(f"{r['mode']}: targets: " + ", ".join(
            f"{name} {'yes' if ok else 'NO'}" for name, ok in checks.items()))
        out.append(f"{r['mode']}: against the floor: " + ", ".join(
            f"{name} {'yes' if ok else 'NO'}" for name, ok in floor_checks.items()))
    return out


def _load() -> str:
    try:
        with open("/proc/loadavg") as f:
            return " ".join(f.read().split()[:3])
    except OSError:
        return "n/a"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="framealloc game-loop GC benchmark")
    parser.add_argument("--quick", action="store_true", help="600 frames per mode")
    args = parser.parse_args(argv)
    started, load = time.perf_counter(), _load()
    data = rows(args.quick)
    print(f"python {sys.version.split()[0]}, {WORLD} long-lived objects, {2 * PAIRS} cyclic "
          f"objects per frame, target_fps {TARGET_FPS:.0f} (period {1e3 / TARGET_FPS:.1f} ms), "
          f"modes interleaved, load average {load} at the start, {_load()} at the end; "
          f"{time.perf_counter() - started:.0f} s\n")
    print(table(data))
    print()
    print(outlier_table(data))
    print()
    for line in verdicts(data):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
