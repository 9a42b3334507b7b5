"""The cyclic garbage collector, paced by frames.

With ``GameLoop(gc="auto")`` CPython collects whenever its allocation counters say
so, inside whichever frame that happens to be; a full collection over a few
hundred thousand live objects then takes tens of milliseconds: a visible hitch.
With ``gc="frame"`` a :class:`FrameGC` runs the collector instead:

- automatic collection is off while the loop runs;
- every frame, in its slack time (after render and swap, before the next frame is
  due), the young generation is collected: its cost follows what the frame
  allocated, not what the game holds;
- the middle generation when CPython's own counter asks for it (threshold 1) and its
  measured cost fits the frame's budget (``budget`` seconds, and never more than the
  time left before the next frame); the old generation when the objects promoted
  into it since the last full collection pass ``full_ratio`` of those that survived
  it (CPython's rule) and its estimated cost fits the budget. At most one of these
  two per frame.
- a full collection otherwise runs only when the game asks (``collect_full()``, at a
  level load) or when the promoted objects pass ``max_pending``: it then runs in the
  slack anyway, is counted in ``forced_full`` and warned about (:class:`GCPressureWarning`),
  so garbage never grows without bound silently;
- ``freeze()`` (``gc.freeze()`` after a full collection) moves everything alive after
  loading to the permanent generation, which no collection traverses.

Every collection, whoever starts it, is timed through ``gc.callbacks`` and counted
as in-frame or slack. ``end()`` restores what ``begin()`` found: enabled flag and
thresholds, and it unfreezes what it froze (only when nothing was frozen before:
the interpreter cannot unfreeze part of the permanent generation; otherwise the
objects stay frozen and ``frozen_kept`` says so).
"""

from __future__ import annotations

import gc
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from coreallocs.uncopyable import Uncopyable

__all__ = ["FrameGC", "GCMode", "GCPressureWarning", "GCTotals"]

GCMode = Literal["auto", "frame"]
GC_MODES: tuple[str, ...] = ("auto", "frame")

# a full collection's cost before one was measured: seconds per object it examines
_DEFAULT_FULL_COST = 60e-9


class GCPressureWarning(RuntimeWarning):
    """The frame GC policy had to run a full collection that did not fit its budget."""


@dataclass(slots=True)
class GCTotals:
    """Collector figures of a loop run (all runs of a loop added up)."""

    collections: list[int] = field(default_factory=lambda: [0, 0, 0])  # per generation
    in_frame: list[int] = field(default_factory=lambda: [0, 0, 0])  # of which inside frames
    pause_in_frames: float = 0.0  # seconds of collection inside frames
    pause_in_slack: float = 0.0  # seconds of collection between frames
    pause_at_freeze: float = 0.0  # seconds of the full collections freeze() runs (load time)
    collected: int = 0  # objects the collections freed
    uncollectable: int = 0
    requested_full: int = 0  # collect_full() calls served
    forced_full: int = 0  # full collections forced by max_pending
    frozen: int = 0  # objects this loop moved to the permanent generation (last freeze)
    frozen_kept: int = 0  # of them, left frozen at the end (objects were frozen before)
    longest_pause: float = 0.0  # the longest collection in or between frames (not at freeze)

    def __copy__(self) -> GCTotals:
        """A snapshot: the copy shares no per-generation list with the live totals."""
        return replace(self, collections=list(self.collections), in_frame=list(self.in_frame))

    def as_dict(self) -> dict[str, Any]:
        return {
            "gc_collections_gen0": self.collections[0],
            "gc_collections_gen1": self.collections[1],
            "gc_collections_gen2": self.collections[2],
            "gc_full_in_frames": self.in_frame[2],
            "gc_ms_in_frames": self.pause_in_frames * 1e3,
            "gc_ms_in_slack": self.pause_in_slack * 1e3,
            "gc_ms_at_freeze": self.pause_at_freeze * 1e3,
            "gc_longest_pause_ms": self.longest_pause * 1e3,
            "gc_collected": self.collected,
            "gc_forced_full": self.forced_full,
            "gc_requested_full": self.requested_full,
            "gc_frozen": self.frozen,
        }


class FrameGC(Uncopyable):
    """Collector bookkeeping (both modes) and pacing (``mode="frame"``) for one loop.

    ``begin()`` / ``end()`` bracket a run; ``in_frame`` tells the collection callback
    whether a collection lands inside a frame; ``slack(seconds)`` runs the frame
    policy's collections; ``take_frame_pauses()`` returns and resets the pause time
    of the current frame (in-frame, slack) and the oldest generation collected in its
    slack.
    """

    def __init__(
        self,
        mode: GCMode = "auto",
        *,
        budget: float = 0.002,
        full_ratio: float = 0.25,
        max_pending: int = 100_000,
        timer: Callable[[], float] = time.perf_counter,
    ) -> None:
        if mode not in GC_MODES:
            raise ValueError(f"gc must be one of {GC_MODES}, got {mode!r}")
        if not budget >= 0:
            raise ValueError(f"gc_budget must be >= 0 seconds, got {budget}")
        if not full_ratio > 0:
            raise ValueError(f"full_ratio must be positive, got {full_ratio}")
        if isinstance(max_pending, bool) or not isinstance(max_pending, int) or max_pending < 1:
            raise ValueError(f"gc_max_pending must be a positive int, got {max_pending!r}")
        self.mode: GCMode = mode
        self.budget = float(budget)
        self.full_ratio = float(full_ratio)
        self.max_pending = max_pending
        self.timer = timer
        self.totals = GCTotals()
        self.in_frame = True
        self.running = False
        self.freeze_requested = False
        self._full_requested = False
        self._frame_pause = 0.0
        self._slack_pause = 0.0
        self._slack_generation = -1
        self._started: float | None = None
        self._loading = False
        self._saved: tuple[bool, tuple[int, ...]] | None = None
        self._foreign_frozen = 0  # frozen by someone else when this run started
        self._we_froze = False
        self._pending = 0  # objects promoted to the old generation since the last full one
        self._long_lived = 0  # objects the last full collection left in the old generation
        self._mid_cost = 0.0  # seconds, the last middle-generation collection
        self._full_cost = _DEFAULT_FULL_COST  # seconds per object of a full collection

    # -- a run ----------------------------------------------------------------------
    def begin(self) -> None:
        """A run starts: time every collection; ``frame`` mode turns automatic collection off."""
        if self.running:
            return
        self._saved = (gc.isenabled(), gc.get_threshold())
        self._foreign_frozen = gc.get_freeze_count()
        self._we_froze = False
        self.running = True
        self.in_frame = True
        gc.callbacks.append(self._on_collection)
        if self.mode == "frame":
            gc.disable()
            self._long_lived = len(gc.get_objects(2))
            self._pending = 0
        if self.freeze_requested:
            self.freeze()
        self.take_frame_pauses()  # (a load-time collection is no frame's pause)

    def end(self) -> None:
        """A run ends (normally or not): restore the collector as begin() found it."""
        if not self.running:
            return
        self.running = False
        try:
            if self._we_froze:
                if self._foreign_frozen == 0:
                    gc.unfreeze()
                else:
                    self.totals.frozen_kept = self.totals.frozen
            saved = self._saved
            if saved is not None:
                enabled, thresholds = saved
                gc.set_threshold(*thresholds)
                if enabled:
                    gc.enable()
                else:
                    gc.disable()
        finally:
            try:
                gc.callbacks.remove(self._on_collection)
            except ValueError:  # the game removed it itself
                pass
            self._saved = None

    # -- what the game asks -----------------------------------------------------------
    def freeze(self) -> int:
        """Full collection, then ``gc.freeze()``: what is alive now is never traversed again.

        Inside a run it happens at once; otherwise at the start of every run. Returns
        the objects this call moved to the permanent generation (0 when deferred).
        """
        self.freeze_requested = True
        if not self.running:
            return 0
        was_in_frame = self.in_frame
        self.in_frame = False
        self._loading = True  # a load-time collection: counted apart
        try:
            gc.collect()
        finally:
            self.in_frame = was_in_frame
            self._loading = False
        before = gc.get_freeze_count()
        gc.freeze()
        moved = gc.get_freeze_count() - before
        self._we_froze = True
        self.totals.frozen = gc.get_freeze_count() - self._foreign_frozen
        self._long_lived = 0
        self._pending = 0
        return moved

    def collect_full(self) -> None:
        """A full collection: in this frame's slack during a run, else at once."""
        if self.running and self.mode == "frame":
            self._full_requested = True
            return
        gc.collect()
        self.totals.requested_full += 1

    # -- the frame policy -------------------------------------------------------------
    def slack(self, available: float) -> None:
        """Collections between frames: young always, then at most one older generation
        if it fits ``min(budget, available)`` seconds (or is requested or forced)."""
        if self.mode != "frame" or not self.running:
            return
        start = self.timer()
        if self._full_requested:
            self._full_requested = False
            self._full()
            self.totals.requested_full += 1
            return
        if gc.get_count()[0] > 0:
            gc.collect(0)
        budget = min(self.budget, available) - (self.timer() - start)
        threshold1 = max(1, self._saved[1][1] if self._saved and len(self._saved[1]) > 1 else 10)
        full_due = self._pending > max(1000, self.full_ratio * self._long_lived)
        if full_due:
            estimate = self._full_cost * (self._long_lived + self._pending)
            if estimate <= budget:
                self._full()
                return
            if self._pending > self.max_pending:
                self.totals.forced_full += 1
                warnings.warn(
                    f"framealloc GC policy: {self._pending} objects reached the old "
                    f"generation since the last full collection (max {self.max_pending}); "
                    f"running a full collection (~{estimate * 1e3:.1f} ms) that does not fit "
                    f"the {budget * 1e3:.2f} ms budget. freeze() after loading keeps "
                    f"long-lived objects out of it.", GCPressureWarning, stacklevel=2)
                self._full()
                return
        if gc.get_count()[1] >= threshold1 and (
                self._mid_cost <= budget or gc.get_count()[1] >= 4 * threshold1):
            self._middle()

    def _middle(self) -> None:
        young = len(gc.get_objects(1)) + len(gc.get_objects(0))
        collected = self.totals.collected
        start = self.timer()
        gc.collect(1)
        self._mid_cost = self.timer() - start
        self._pending += max(0, young - (self.totals.collected - collected))

    def _full(self) -> None:
        start = self.timer()
        examined = self._long_lived + self._pending
        gc.collect(2)
        took = self.timer() - start
        if examined > 0:
            self._full_cost = max(took / examined, 1e-9)
        self._long_lived = len(gc.get_objects(2))
        self._pending = 0

    # -- timing every collection ------------------------------------------------------
    def _on_collection(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = self.timer()
            return
        started = self._started
        if started is None:
            return
        self._started = None
        took = self.timer() - started
        totals = self.totals
        generation = min(max(int(info.get("generation", 2)), 0), 2)
        totals.collections[generation] += 1
        totals.collected += int(info.get("collected", 0))
        totals.uncollectable += int(info.get("uncollectable", 0))
        if self._loading:
            totals.pause_at_freeze += took
            return
        totals.longest_pause = max(totals.longest_pause, took)
        if self.in_frame:
            totals.in_frame[generation] += 1
            totals.pause_in_frames += took
            self._frame_pause += took
        else:
            totals.pause_in_slack += took
            self._slack_pause += took
            self._slack_generation = max(self._slack_generation, generation)

    def take_frame_pauses(self) -> tuple[float, float, int]:
        """(in-frame seconds, slack seconds, oldest generation collected in the slack or
        -1) of the collections since the last call."""
        pauses = (self._frame_pause, self._slack_pause, self._slack_generation)
        self._frame_pause = self._slack_pause = 0.0
        self._slack_generation = -1
        return pauses
