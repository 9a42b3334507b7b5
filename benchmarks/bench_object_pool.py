"""ObjectPool vs building the object fresh (and hand-rolled pools), same run.

    python benchmarks/bench_object_pool.py [--quick]

Each sample times 1000 acquire/use/release cycles (median of repeats, GC paused while
timing). "fresh" builds the object each time and lets it go; "list free list" is the
unguarded, non-thread-safe ``list.pop()/append()`` a user might hand-roll;
"SimpleQueue pool" is the thread-safe hand-rolled alternative. Ratio = other time /
ObjectPool time, so > 1 means ObjectPool is faster.
"""

from __future__ import annotations

import argparse
import os
import platform
import queue
import sys
from collections.abc import Callable
from typing import Any

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from _timing import ns_per_op, table

from coreallocs.object_pool import ObjectPool

N = 1000


class Order:
    __slots__ = ("price", "qty", "side")

    def __init__(self) -> None:
        self.price = 0.0
        self.qty = 0
        self.side = 0


ZERO_4K = bytes(4096)


def zero_4k(buf: bytearray) -> None:
    buf[:] = ZERO_4K


def case(
    factory: Callable[[], Any], reset: Callable[[Any], object] | None, touch: Callable[[Any], None]
) -> dict[str, Callable[[], None]]:
    """The four ways of getting a scratch object, as N-iteration loops."""
    pool = ObjectPool(factory, max_size=8, reset=reset, prefill=1)
    acquire = pool.acquire
    free: list[Any] = [factory()]
    simple: queue.SimpleQueue[Any] = queue.SimpleQueue()
    simple.put(factory())

    def fresh() -> None:
        for _ in range(N):
            obj = factory()
            touch(obj)
            del obj

    def pooled_with() -> None:
        for _ in range(N):
            with acquire() as obj:
                touch(obj)

    def pooled_guard() -> None:
        for _ in range(N):
            guard = acquire()
            touch(guard.value)
            guard.release()

    def list_free_list() -> None:
        pop, append = free.pop, free.append
        for _ in range(N):
            obj = pop() if free else factory()
            touch(obj)
            if reset is not None:
                reset(obj)
            append(obj)

    def simple_queue() -> None:
        get, put = simple.get_nowait, simple.put
        for _ in range(N):
            try:
                obj = get()
            except queue.Empty:
                obj = factory()
            touch(obj)
            if reset is not None:
                reset(obj)
            put(obj)

    return {
        "pool": pooled_with,
        "pool_guard": pooled_guard,
        "fresh": fresh,
        "list": list_free_list,
        "simple": simple_queue,
    }


def set_first(obj: Any) -> None:
    obj[0] = 1


def set_key(obj: dict[str, int]) -> None:
    obj["k"] = 1


def set_price(obj: Order) -> None:
    obj.price = 1.0


Case = tuple[str, Callable[[], Any], Callable[[Any], object] | None, Callable[[Any], None]]
CASES: list[Case] = [
    ("dict (reset=dict.clear)", dict, dict.clear, set_key),
    ("small __slots__ instance (no reset)", Order, None, set_price),
    ("bytearray(4096) (no reset)", lambda: bytearray(4096), None, set_first),
    ("bytearray(4096) (reset zero-fills)", lambda: bytearray(4096), zero_4k, set_first),
    ("numpy.zeros(4096, float64) (no reset)", lambda: np.zeros(4096), None, set_first),
    ("bytearray(1 MiB) (no reset)", lambda: bytearray(1 << 20), None, set_first),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats (smoke run)")
    args = parser.parse_args()
    repeat = 3 if args.quick else 9

    rows = []
    for label, factory, reset, touch in CASES:
        loops = case(factory, reset, touch)
        ns = {name: ns_per_op(fn, N, repeat) for name, fn in loops.items()}
        pool_ns = ns["pool"]
        rows.append(
            [
                label,
                f"{pool_ns:.0f}",
                f"{ns['pool_guard']:.0f}",
                f"{ns['fresh']:.0f}",
                f"{ns['fresh'] / pool_ns:.2f}x",
                f"{ns['list']:.0f}",
                f"{ns['list'] / pool_ns:.2f}x",
                f"{ns['simple']:.0f}",
                f"{ns['simple'] / pool_ns:.2f}x",
            ]
        )
    headers = [
        "object (ns per acquire+use+release)",
        "ObjectPool with",
        "ObjectPool guard",
        "fresh",
        "fresh/pool",
        "list free list",
        "list/pool",
        "SimpleQueue pool",
        "queue/pool",
    ]
    print(f"Python {platform.python_version()} on {platform.machine()}, {os.cpu_count()} CPUs")
    print(f"repeats={repeat}, {N} cycles per sample; ratio > 1: ObjectPool is faster\n")
    print(table(headers, rows))


if __name__ == "__main__":
    main()
