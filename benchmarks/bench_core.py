"""Core allocator benchmarks: coreallocs vs the peers a Python user would pick, same run.

    python benchmarks/bench_core.py [--quick]

Python-level cases time 1000 operations per sample (median of repeats, GC paused while
timing); C-level cases are timed inside C by the C-API example module
(tests/support/capi_demo, compiled against the installed coreallocs on first use). Ratios are
peer time / coreallocs time, so > 1 means coreallocs is faster.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), os.pardir, "tests", "support"))
import capi_demo
from _timing import ns_per_op, table

from coreallocs import Arena, Pool, SlabAllocator

capi = capi_demo.load()

N = 1000
MIXED = [16, 32, 64, 128, 256] * (N // 5)


def python_cases(repeat: int) -> list[tuple[str, str, float, str, float]]:
    pool = Pool(64, N)
    alloc = pool.allocate
    slab = SlabAllocator(min_size=16, max_size=256, blocks_per_class=N)
    slab_alloc = slab.allocate
    arena = Arena(64 * N + 4096)
    arena_alloc = arena.allocate
    empty, u8 = np.empty, np.uint8

    def pool_explicit():
        for _ in range(N):
            alloc().release()

    def pool_drop():
        for _ in range(N):
            b = alloc()
            del b

    def pool_batch():
        blocks = [alloc() for _ in range(N)]
        for b in blocks:
            b.release()

    def bytearray_drop():
        for _ in range(N):
            b = bytearray(64)
            del b

    def bytearray_batch():
        blocks = [bytearray(64) for _ in range(N)]
        del blocks

    def numpy_drop():
        for _ in range(N):
            b = empty(64, u8)
            del b

    def slab_mixed():
        blocks = [slab_alloc(s) for s in MIXED]
        for b in blocks:
            b.release()

    def bytearray_mixed():
        blocks = [bytearray(s) for s in MIXED]
        del blocks

    def numpy_mixed():
        blocks = [empty(s, u8) for s in MIXED]
        del blocks

    def arena_fill_reset():
        for _ in range(N):
            arena_alloc(64)
        arena.reset()

    def arena_fill_keep_reset():
        blocks = [arena_alloc(64) for _ in range(N)]
        del blocks
        arena.reset()

    t = {
        name: ns_per_op(fn, N, repeat)
        for name, fn in {
            "pool_explicit": pool_explicit,
            "pool_drop": pool_drop,
            "pool_batch": pool_batch,
            "bytearray_drop": bytearray_drop,
            "bytearray_batch": bytearray_batch,
            "numpy_drop": numpy_drop,
            "slab_mixed": slab_mixed,
            "bytearray_mixed": bytearray_mixed,
            "numpy_mixed": numpy_mixed,
            "arena": arena_fill_reset,
            "arena_keep": arena_fill_keep_reset,
        }.items()
    }
    return [
        (
            "64 B alloc+release() x1000",
            "Pool",
            t["pool_explicit"],
            "bytearray(64)",
            t["bytearray_drop"],
        ),
        (
            "64 B alloc+release() x1000",
            "Pool",
            t["pool_explicit"],
            "numpy.empty(64,u8)",
            t["numpy_drop"],
        ),
        (
            "64 B alloc+drop (GC release) x1000",
            "Pool",
            t["pool_drop"],
            "bytearray(64)",
            t["bytearray_drop"],
        ),
        (
            "64 B alloc+drop (GC release) x1000",
            "Pool",
            t["pool_drop"],
            "numpy.empty(64,u8)",
            t["numpy_drop"],
        ),
        (
            "1000 x 64 B held, then released",
            "Pool",
            t["pool_batch"],
            "bytearray(64)",
            t["bytearray_batch"],
        ),
        (
            "mixed 16..256 B x1000 held, released",
            "SlabAllocator",
            t["slab_mixed"],
            "bytearray(n)",
            t["bytearray_mixed"],
        ),
        (
            "mixed 16..256 B x1000 held, released",
            "SlabAllocator",
            t["slab_mixed"],
            "numpy.empty(n,u8)",
            t["numpy_mixed"],
        ),
        ("arena 64 B x1000 + reset", "Arena", t["arena"], "bytearray(64)", t["bytearray_drop"]),
        (
            "arena 64 B x1000 held + reset",
            "Arena",
            t["arena_keep"],
            "bytearray(64)",
            t["bytearray_batch"],
        ),
    ]


def cymem_batch_ns(rounds: int) -> float | None:
    """cymem's C-level alloc/free, compiled on the fly; None when cymem or a compiler is missing."""
    try:
        import cymem  # noqa: F401
        import pyximport

        pyximport.install(language_level=3, inplace=False)
        import _cymem_bench

        return _cymem_bench.batch_ns(64, N, rounds)
    except Exception as exc:
        print(f"(cymem comparison skipped: {exc})", file=sys.stderr)
        return None


def c_cases(rounds: int) -> list[tuple[str, str, float, str, float | None]]:
    pool = Pool(64, N)
    slab = SlabAllocator(min_size=16, max_size=256, blocks_per_class=N)
    pair_n = rounds * N
    locked = min(capi.pool_alloc_free_ns(pool, pair_n) for _ in range(3))
    unlocked = min(capi.pool_alloc_free_ns(pool, pair_n, False) for _ in range(3))
    batch = min(capi.pool_batch_ns(pool, N, rounds) for _ in range(3))
    malloc_batch = min(capi.malloc_batch_ns(64, N, rounds) for _ in range(3))
    slab_mixed = min(capi.slab_mixed_ns(slab, rounds) for _ in range(3))
    arena = Arena(64 * pair_n)
    arena_ns = capi.arena_alloc_ns(arena, pair_n, 64)
    cymem = cymem_batch_ns(rounds)
    rows = [
        (
            "C: pool_alloc+pool_free pair (spin-locked)",
            "Pool",
            locked,
            "malloc+free (batch)",
            malloc_batch,
        ),
        (
            "C: same, _unlocked single-thread variant",
            "Pool",
            unlocked,
            "malloc+free (batch)",
            malloc_batch,
        ),
        ("C: 1000 x 64 B alloc, then free all", "Pool", batch, "malloc+free", malloc_batch),
        (
            "C: mixed 16..256 B x1000 (slab_alloc/free)",
            "SlabAllocator",
            slab_mixed,
            "malloc+free (64 B)",
            malloc_batch,
        ),
        ("C: arena_alloc 64 B", "Arena", arena_ns, "malloc+free (batch)", malloc_batch),
    ]
    if cymem is not None:
        rows.append(("C: 1000 x 64 B alloc, then free all", "Pool", batch, "cymem.Pool", cymem))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats (a smoke run)")
    args = parser.parse_args()
    repeat, rounds = (3, 20) if args.quick else (15, 500)
    rows = []
    for case, ours, ours_ns, peer, peer_ns in python_cases(repeat) + c_cases(rounds):
        ratio = f"{peer_ns / ours_ns:.2f}x" if peer_ns else "n/a"
        rows.append(
            [case, ours, f"{ours_ns:.1f}", peer, f"{peer_ns:.1f}" if peer_ns else "n/a", ratio]
        )
    print(
        f"coreallocs core benchmark - Python {platform.python_version()}, numpy {np.__version__}, "
        f"{platform.machine()}, {os.cpu_count()} CPUs; ns per operation (median)"
    )
    print(table(["case", "coreallocs", "ns/op", "peer", "peer ns/op", "peer/ours"], rows))


if __name__ == "__main__":
    main()
