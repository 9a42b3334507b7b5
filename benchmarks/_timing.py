"""Tiny shared timing helpers for the benchmark scripts (median of repeats, ns per op)."""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable


def ns_per_op(fn: Callable[[], object], ops: int, repeat: int = 7) -> float:
    """Median nanoseconds per operation of `fn()`, which performs `ops` operations."""
    fn()  # warm up
    samples = []
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        for _ in range(repeat):
            t0 = time.perf_counter_ns()
            fn()
            samples.append((time.perf_counter_ns() - t0) / ops)
    finally:
        if gc_was_enabled:
            gc.enable()
    return statistics.median(samples)


def table(headers: list[str], rows: list[list[str]]) -> str:
    """A GitHub-flavoured markdown table."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    out = [line(headers), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += [line(r) for r in rows]
    return "\n".join(out)
