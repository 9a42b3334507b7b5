"""Statistics: a frame allocator snapshot and the per-frame history of a game loop."""

from __future__ import annotations

import copy
import gc
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from framealloc.gcpolicy import GCTotals

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


_FIELDS = ("frame_time", "bytes", "allocations", "updates", "gc_frame", "gc_slack",
           "gc_slack_generation", "settle", "interval")


class LoopStats:
    """Per-frame figures of a game loop, kept for the last `history` frames.

    Each frame records its work time (seconds: updates, render, present, swap), the bytes
    and number of frame allocations it made, the fixed updates it ran, the collector's
    pauses inside the frame (``gc_frame``) and in the slack after it (``gc_slack``), the
    oldest generation collected in that slack (``gc_slack_generation``, -1 for none), the
    time spent settling the frame's records in the slack (``settle``, see
    :meth:`~framealloc.FrameAllocator.settle_objects`), and the interval since the previous
    frame was presented (``interval``, nan for the first). Totals (frames, overflows,
    dropped updates, high water, hitches, ``gc``: a :class:`~framealloc.gcpolicy.GCTotals`)
    cover the whole run. A hitch is a frame presented more than two periods after the
    previous one (with a ``target_fps``). Recording writes into preallocated numpy arrays:
    no per-frame Python objects. Copies (``copy.copy`` / ``deepcopy`` / pickle) are
    independent snapshots.
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
        self.hitches = 0  # frames presented later than twice the period after the previous
        self.objects_detached = 0  # frame-scoped objects still referenced at a swap
        self.gc = GCTotals()
        self._gc_mark = gc_collections()

    def __copy__(self) -> LoopStats:
        return self.__deepcopy__({})

    def __deepcopy__(self, memo: dict[int, Any]) -> LoopStats:
        clone = LoopStats.__new__(LoopStats)
        clone.__dict__.update({k: copy.deepcopy(v, memo) for k, v in self.__dict__.items()})
        return clone

    def record(self, frame_time: float, nbytes: int, allocations: int, updates: int, *,
               gc_frame: float = 0.0, gc_slack: float = 0.0, gc_slack_generation: int = -1,
               settle: float = 0.0, interval: float = float("nan"),
               period: float | None = None) -> None:
        """Add one frame's figures (`period`: the target frame period, for hitches)."""
        i = self.frames % self.history
        data = self._data
        data["frame_time"][i] = frame_time
        data["bytes"][i] = nbytes
        data["allocations"][i] = allocations
        data["updates"][i] = updates
        data["gc_frame"][i] = gc_frame
        data["gc_slack"][i] = gc_slack
        data["gc_slack_generation"][i] = gc_slack_generation
        data["settle"][i] = settle
        data["interval"][i] = interval
        if period is not None and interval > 2 * period:
            self.hitches += 1
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
        """The recorded values of `name` (one of the per-frame fields), oldest first."""
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
        """Frame time p50/p90/p99/p99.9/max (ms), mean bytes and allocations per frame,
        presented-frame interval p50/max, GC pauses and counts, time settling frame
        records in the slack (total and longest), totals."""
        times = self.series("frame_time") * 1e3
        intervals = self.series("interval") * 1e3
        intervals = intervals[~np.isnan(intervals)]
        empty = len(times) == 0

        def pct(q: float, values: np.ndarray = times) -> float:
            return float("nan") if len(values) == 0 else float(np.percentile(values, q))

        return {
            "frames": self.frames,
            "frame_ms_p50": pct(50),
            "frame_ms_p90": pct(90),
            "frame_ms_p99": pct(99),
            "frame_ms_p99.9": pct(99.9),
            "frame_ms_max": float("nan") if empty else float(times.max()),
            "interval_ms_p50": pct(50, intervals),
            "interval_ms_max": float("nan") if len(intervals) == 0 else float(intervals.max()),
            "hitches": self.hitches,
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
            **self.gc.as_dict(),
            "objects_detached": self.objects_detached,
            "objects_settle_ms": float(self.series("settle").sum() * 1e3),
            "objects_settle_ms_max": float("nan") if empty else float(
                self.series("settle").max() * 1e3),
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
