"""Run every benchmark in turn and write docs/benchmarks.md (tables and pictures).

    python benchmarks/run_all.py            # the full runs (several minutes)
    python benchmarks/run_all.py --quick    # shorter, noisier runs
    python benchmarks/run_all.py --only bench_bus.py bench_peers.py   # rewrite these sections

Each script compares hftalloc, coreallocs or framealloc against its peers in the same
run and prints markdown tables; this runner collects that output, section by section,
into ``docs/benchmarks.md`` and has the scripts that draw pictures write them into
``docs/images/``. A script that fails is reported and its section says so; the exit
status is then 1.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DOC = ROOT / "docs" / "benchmarks.md"
IMAGES = ROOT / "docs" / "images"


@dataclass
class Bench:
    """One script: its section title, what it measures, extra arguments, pictures."""

    script: str
    title: str
    about: str
    args: list[str] = field(default_factory=list)
    images: list[tuple[str, str]] = field(default_factory=list)  # (file in docs/images, caption)
    quick_args: list[str] = field(default_factory=lambda: ["--quick"])


BENCHES = [
    Bench("bench_core.py", "coreallocs: pools, slabs and arenas",
          "Allocation and release from Python and from C (nogil C API) against `bytearray`, "
          "`numpy.empty`, glibc `malloc`/`free` and `cymem.Pool`."),
    Bench("bench_object_pool.py", "coreallocs: ObjectPool",
          "Acquire, use and release pooled objects against fresh objects, a list free list and "
          "a `SimpleQueue` pool."),
    Bench("bench_bus.py", "hftalloc: the message bus",
          "Publish to 1 and 4 subscribers: sync and asyncio dispatch against `asyncio.Queue` "
          "fan-out, a dict of callbacks and pyzmq inproc PUB/SUB."),
    Bench("bench_peers.py", "hftalloc against nautilus_trader, iceoryx2 and faster-fifo",
          "The bus against nautilus_trader's MessageBus in one process; the shared-memory "
          "channel against iceoryx2's Python bindings and faster-fifo between two processes.",
          args=["--plot-dir", str(IMAGES)],
          images=[("bus_latency.png", "publish -> deliver latency percentiles, one process"),
                  ("ipc_latency.png", "one-way latency percentiles between two processes")]),
    Bench("bench_ipc.py", "hftalloc: shared memory between processes",
          "The shared-memory channel and the bus-to-bus bridge against `multiprocessing.Queue` "
          "and pyzmq `ipc://`."),
    Bench("bench_zmq_netns.py", "hftalloc: ZeroMQ between network namespaces",
          "The ZeroMQ bridge (bus -> bus) against pyzmq PUB/SUB over TCP between two network "
          "namespaces joined by a veth pair (needs root or CAP_NET_ADMIN)."),
    Bench("bench_journal.py", "hftalloc: the journal",
          "Appends, sequential reads and replay against hand-written `struct`/`file.write` "
          "loops and `pickle`."),
    Bench("bench_fix.py", "hftalloc: FIX",
          "Parsing and encoding FIX 4.4 messages against simplefix and QuickFIX's Python API, and "
          "the order -> ExecutionReport round trip over loopback against QuickFIX on both ends."),
    Bench("bench_frame.py", "framealloc: frame scratch arrays",
          "Scratch arrays from the frame allocator against `numpy.empty`, and the demo's frame "
          "times."),
    Bench("bench_game_loop.py", "framealloc: a hitch-free game loop",
          "Frame times of a game-like workload (300,000 long-lived objects, thousands of small "
          "cyclic objects a frame) with CPython's default GC against the frame-aware GC policy "
          "and frame-scoped objects."),
    Bench("../examples/game_demo.py", "framealloc: the particle demo",
          "The particle game demo's frame times: framealloc against plain numpy temporaries "
          "and numpy `out=` arguments, the modes taking turns in one run.",
          args=["--compare", "--plot", str(IMAGES / "frame_times.png")],
          images=[("frame_times.png", "frame times of the particle demo per mode, GC pauses "
                   "marked")],
          quick_args=["--frames", "300"]),
]


def run(bench: Bench, quick: bool) -> tuple[int, str, float]:
    cmd = [sys.executable, str(HERE / bench.script), *bench.args,
           *(bench.quick_args if quick else [])]
    started = time.perf_counter()
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False)
    sys.stdout.write(done.stdout)
    sys.stderr.write(done.stderr)
    return done.returncode, done.stdout, time.perf_counter() - started


def section(bench: Bench, status: int, output: str, quick: bool) -> str:
    script = (HERE / bench.script).resolve().relative_to(ROOT)
    extra = [a for a in bench.args if not a.startswith(str(ROOT))]
    command = " ".join(["python", str(script), *extra, *(bench.quick_args if quick else [])])
    lines = [f"## {bench.title}", "", bench.about, "", f"`{command}`", ""]
    if status != 0:
        lines += [f"The run failed (exit status {status}); see its output.", ""]
    lines += [output.strip(), ""]
    for name, caption in bench.images:
        if (IMAGES / name).exists():
            lines += [f"![{caption}](images/{name})", ""]
    return "\n".join(lines)


def merge_sections(page: str, fresh: dict[str, str]) -> list[str]:
    """The sections of an existing page, in ``BENCHES`` order, with those in ``fresh``
    (title -> section) replaced; a section starts at its ``## title`` line."""
    titles = {f"## {b.title}": b.title for b in BENCHES}
    old: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in page.splitlines():
        if line in titles:
            current = old.setdefault(titles[line], [])
        if current is not None:
            current.append(line)
    merged = []
    for bench in BENCHES:
        if bench.title in fresh:
            merged.append(fresh[bench.title])
        elif bench.title in old:
            merged.append("\n".join(old[bench.title]).rstrip() + "\n")
    return merged


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="shorter, noisier runs")
    parser.add_argument("--only", nargs="+", metavar="SCRIPT", help="run only these scripts")
    args = parser.parse_args(argv)
    IMAGES.mkdir(parents=True, exist_ok=True)
    chosen = [b for b in BENCHES if (HERE / b.script).exists()
              and (args.only is None or b.script in args.only)]
    sections, failed = [], []
    for bench in chosen:
        print(f"\n===== {bench.script} =====", flush=True)
        status, output, seconds = run(bench, args.quick)
        print(f"({seconds:.0f} s)", flush=True)
        if status != 0:
            failed.append(bench.script)
        sections.append(section(bench, status, output, args.quick))
    head = [
        "# Benchmarks",
        "",
        "Every figure below compares against the peers a user would pick instead, measured "
        "in the same run on the same machine; ratios matter more than absolute numbers. "
        "Rerun them with `python benchmarks/run_all.py` (this page is written by it).",
        "",
        "On a shared virtual machine the speed of a CPU can change by up to 2x from one "
        "minute to the next: the scripts take the best of several rounds and, where they "
        "can, run the contenders of a table in turns, so the ratios within a table hold "
        "better than the absolute figures between runs or sections.",
        "",
        f"Machine: Python {platform.python_version()}, {platform.machine()}, "
        f"{os.cpu_count()} CPUs, {platform.system()} {platform.release()}; "
        f"written {time.strftime('%Y-%m-%d')}{' (quick runs)' if args.quick else ''}.",
        "",
    ]
    if args.only is not None and DOC.exists():
        fresh = {b.title: text for b, text in zip(chosen, sections, strict=True)}
        sections = merge_sections(DOC.read_text(), fresh)
    DOC.write_text("\n".join(head + sections).rstrip() + "\n")
    print(f"\nwrote {DOC.relative_to(ROOT)}")
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
