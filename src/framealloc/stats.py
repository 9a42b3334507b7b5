"""Statistics: a frame allocator snapshot and the per-frame history of a game loop."""

from __future__ import annotations

import gc
from dataclasses import asdict, dataclass

import numpy as np

__all__ = ["FrameAllocatorStats", "LoopStats", "gc_collections"]


@dataclass(frozen=True, slots=True)
class FrameAllocatorStats:
    """A snapshot of a :class:`~framealloc.FrameAllocator`.

    ``bytes_used`` / ``allocations`` describe the current frame so far; ``high_water``
    is the most bytes any frame used (current one included). ``overflows`` counts
    requests that did not fit in their frame, ``heap_fallbacks`` those of them served
    from the heap instead of raising. ``leaks`` counts swaps that found a frame still
    referenced and detached it (policies ``warn``/``detach``).
    """

    frame: int
    buffers: int
    frame_size: int
    bytes_used: int
    allocations: int
    last_frame_bytes: int
    last_frame_allocations: int
    high_water: int
    total_allocations: int
    overflows: int
    heap_fallbacks: int
    heap_bytes: int
    leaks: int

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def gc_collections() -> int:
    """Garbage-collector runs so far, all generations together."""
    return sum(s["collections"] for s in gc.get_stats())


_FIELDS = ("frame_time", "bytes", "allocations", "updates")


class LoopStats:
    """Per-frame figures of a game loop, kept for the last `history` frames.

    Each frame records its duration (seconds), the bytes and number of frame
    allocations it made and the fixed updates it ran. Totals (frames, overflows,
    dropped updates, high water, ...) cover the whole run. Recording writes into
    preallocated numpy arrays: no per-frame Python objects.
    """

    def __init__(self, history: int = 100_000) -> None:
        if history <= 0:
            raise ValueError(f"history must be positive, got {history}")
        self.history = history
        self._data = {name: np.zeros(history, np.float64) for name in _FIELDS}
        self.frames = 0
        self.updates = 0
        self.dropped_updates = 0
        self.high_water = 0
        self.overflows = 0
        self.heap_fallbacks = 0
        self.leaks = 0
        self.gc_collections = 0  # collections while this loop ran (its run() calls)
        self._gc_mark = gc_collections()

    def record(self, frame_time: float, nbytes: int, allocations: int, updates: int) -> None:
        """Add one frame's figures."""
        i = self.frames % self.history
        data = self._data
        data["frame_time"][i] = frame_time
        data["bytes"][i] = nbytes
        data["allocations"][i] = allocations
        data["updates"][i] = updates
        self.frames += 1
        self.updates += updates
        if nbytes > self.high_water:
            self.high_water = nbytes

    def begin(self) -> None:
        """A run starts: collections from now on count (not those between runs)."""
        self._gc_mark = gc_collections()

    def finish(self) -> None:
        """A run ends: add the GC collections since begin() (or since creation)."""
        now = gc_collections()
        self.gc_collections += now - self._gc_mark
        self._gc_mark = now

    def series(self, name: str) -> np.ndarray:
        """The recorded values of `name` (frame_time, bytes, allocations, updates), oldest first."""
        values = self._data[name]
        n = min(self.frames, self.history)
        if self.frames <= self.history:
            return values[:n].copy()
        i = self.frames % self.history
        return np.concatenate([values[i:], values[:i]])

    def percentile(self, q: float, name: str = "frame_time") -> float:
        """The q-th percentile (0..100) of `name` over the kept frames (nan when empty)."""
        values = self.series(name)
        return float(np.percentile(values, q)) if len(values) else float("nan")

    def summary(self) -> dict[str, float]:
        """Frame time p50/p90/p99/max (ms), mean bytes and allocations per frame, totals."""
        times = self.series("frame_time") * 1e3
        empty = len(times) == 0

        def pct(q: float) -> float:
            return float("nan") if empty else float(np.percentile(times, q))

        return {
            "frames": self.frames,
            "frame_ms_p50": pct(50),
            "frame_ms_p90": pct(90),
            "frame_ms_p99": pct(99),
            "frame_ms_max": float("nan") if empty else float(times.max()),
            "bytes_per_frame": float("nan") if empty else float(self.series("bytes").mean()),
            "allocations_per_frame": (
                float("nan") if empty else float(self.series("allocations").mean())
            ),
            "high_water_bytes": self.high_water,
            "updates": self.updates,
            "dropped_updates": self.dropped_updates,
            "overflows": self.overflows,
            "heap_fallbacks": self.heap_fallbacks,
            "leaks": self.leaks,
            "gc_collections": self.gc_collections,
        }

    def report(self) -> str:
        """The summary as an aligned two-column text table."""
        rows = []
        for key, value in self.summary().items():
            if isinstance(value, float):
                text = f"{value:.3f}" if "ms" in key else f"{value:.1f}"
            else:
                text = str(value)
            rows.append((key, text))
        width = max(len(k) for k, _ in rows)
        vwidth = max(len(v) for _, v in rows)
        lines = [f"{'metric'.ljust(width)}  {'value'.rjust(vwidth)}",
                 f"{'-' * width}  {'-' * vwidth}"]
        lines += [f"{k.ljust(width)}  {v.rjust(vwidth)}" for k, v in rows]
        return "\n".join(lines)
