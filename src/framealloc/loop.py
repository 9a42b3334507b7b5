"""GameLoop: fixed-timestep updates, variable-rate rendering, automatic frame swaps, a
frame-paced cyclic GC (``gc="frame"``, see :mod:`framealloc.gcpolicy`)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Protocol

import numpy as np

from coreallocs.uncopyable import Uncopyable
from framealloc.allocator import FrameAllocator
from framealloc.gcpolicy import FrameGC, GCMode, GCTotals
from framealloc.stats import LoopStats

__all__ = ["Frame", "GameLoop", "Window"]

# a fixed step counts as due when the accumulator is within this fraction of dt
# (clock readings are floats: k * dt rarely subtracts back to exactly dt)
_STEP_TOLERANCE = 1e-9


class Window(Protocol):
    """What the loop needs from a window: event polling and presenting a frame."""

    def poll(self) -> bool:
        """Handle pending events; False once the user asked to quit."""
        ...

    def present(self) -> None:
        """Show what render() drew."""
        ...


class Frame(Uncopyable):
    """What the callbacks receive: frame number, simulated time and frame memory.

    One object is reused for the whole run (read its fields, do not keep it).
    ``array`` / ``arrays`` / ``zeros`` / ``copy`` allocate in the current frame;
    ``objects(cls)`` gives the frame-scoped object pool of a record class (see
    :class:`~framealloc.FrameObjects`); ``persistent`` is the allocator's persistent area.
    """

    __slots__ = ("allocator", "array", "arrays", "copy", "dt", "number", "objects",
                 "persistent", "time", "updates", "zeros")

    def __init__(self, allocator: FrameAllocator, dt: float) -> None:
        self.allocator = allocator
        self.array = allocator.array
        self.arrays = allocator.arrays
        self.zeros = allocator.zeros
        self.copy = allocator.copy
        self.objects = allocator.objects
        self.persistent = allocator.persistent
        self.dt = dt
        self.number = allocator.frame  # the frame being built
        self.time = 0.0  # simulated time: fixed updates run so far * dt
        self.updates = 0  # fixed updates run in this frame so far


UpdateFn = Callable[[float, Frame], object]
RenderFn = Callable[[float, Frame], object]


class GameLoop(Uncopyable):
    """The classic accumulator loop, swapping frame buffers after each rendered frame.

    Each frame: read `clock`, add the elapsed time to the accumulator, run
    ``update(dt, frame)`` while a whole `dt` is available (at most `max_updates`
    times: the backlog beyond that is dropped and counted, so a slow machine does
    not spiral), call ``render(alpha, frame)`` with ``alpha = accumulator / dt`` in
    [0, 1) for interpolation, present the window if any, then ``allocator.swap()``.
    The frame-scoped records of the frame are settled right after it, in the slack
    (``allocator.settle_objects()``: nothing runs in between), then the collector's
    slack work runs.

    `clock` drives the simulation (default ``time.perf_counter``; use
    :class:`~framealloc.FixedStepClock` for a deterministic headless run, or
    :class:`~framealloc.ManualClock` in tests); `timer` measures the frame times
    recorded in :attr:`stats`. With `target_fps` the loop sleeps to pace frames
    (absolute deadlines: frame ``k`` is due ``k / target_fps`` after the first).

    `gc`: ``"auto"`` leaves CPython's collector as it is; ``"frame"`` paces it by
    frames (:mod:`framealloc.gcpolicy`): automatic collection off during ``run()``,
    young collections in the slack after each frame, older ones within `gc_budget`
    seconds of it, full ones only on ``collect_full()`` or past `gc_max_pending`
    promoted objects. ``freeze()`` after loading keeps what is alive out of every
    collection. Both modes time every collection (in-frame / slack) into
    :attr:`stats`; ``run()`` restores the collector's state when it returns or raises.
    Not copyable or picklable.
    """

    def __init__(
        self,
        update: UpdateFn,
        render: RenderFn | None = None,
        *,
        allocator: FrameAllocator | None = None,
        dt: float = 1 / 60,
        max_updates: int = 5,
        clock: Callable[[], float] = time.perf_counter,
        timer: Callable[[], float] = time.perf_counter,
        window: Window | None = None,
        target_fps: float | None = None,
        history: int = 100_000,
        sleep: Callable[[float], object] = time.sleep,
        gc: GCMode = "auto",
        gc_budget: float = 0.002,
        gc_max_pending: int = 100_000,
    ) -> None:
        if "stats" in self.__dict__:
            raise TypeError("GameLoop.__init__ was already called on this object")
        if not dt > 0:
            raise ValueError(f"dt must be positive, got {dt}")
        if max_updates < 1:
            raise ValueError(f"max_updates must be at least 1, got {max_updates}")
        if target_fps is not None and not target_fps > 0:
            raise ValueError(f"target_fps must be positive, got {target_fps}")
        self.update = update
        self.render = render
        self.allocator = allocator if allocator is not None else FrameAllocator()
        self.dt = float(dt)
        self.max_updates = int(max_updates)
        self.clock = clock
        self.timer = timer
        self.window = window
        self.target_fps = target_fps
        self.sleep = sleep
        self.stats = LoopStats(history)
        self.gc = FrameGC(gc, budget=gc_budget, max_pending=gc_max_pending, timer=timer)
        self.stats.gc = self.gc.totals
        self.frame = Frame(self.allocator, self.dt)
        self.accumulator = 0.0
        self.alpha = 0.0
        self._last: float | None = None
        self._due: float | None = None  # when the next frame is due (target_fps)
        self._presented: float | None = None  # when the last frame was presented
        self._running = False
        self._base_overflows = self.allocator.overflows
        self._base_fallbacks = self.allocator.heap_fallbacks
        self._base_leaks = self.allocator.leaks
        self._base_detached = self.allocator.objects_detached

    def step(self) -> bool:
        """Run one frame; False when the window asked to quit (nothing was run then)."""
        if self.window is not None and not self.window.poll():
            return False
        gcp = self.gc
        gcp.in_frame = True
        started = self.timer()
        if self._last is None:
            self._last = self.clock()
        now = self.clock()
        self.accumulator += max(0.0, now - self._last)
        self._last = now
        frame, dt = self.frame, self.dt
        due = dt * (1.0 - _STEP_TOLERANCE)
        frame.updates = 0
        while self.accumulator >= due and frame.updates < self.max_updates:
            self.update(dt, frame)
            self.accumulator -= dt
            frame.updates += 1
            frame.time += dt
        if self.accumulator >= due:  # over max_updates: drop the backlog, counted
            dropped = int(self.accumulator / dt + _STEP_TOLERANCE)
            self.accumulator -= dropped * dt
            self.stats.dropped_updates += dropped
        self.accumulator = max(0.0, self.accumulator)
        self.alpha = min(self.accumulator / dt, np.nextafter(1.0, 0.0))
        if self.render is not None:
            self.render(self.alpha, frame)
        if self.window is not None:
            self.window.present()
        presented = self.timer()
        alloc = self.allocator
        nbytes, count = alloc.bytes_used, alloc.allocations
        alloc.swap(settle_objects=False)
        frame.number = alloc.frame
        finished = self.timer()
        gcp.in_frame = False
        # -- slack: the frame's records, collections, then pacing -------------------------
        alloc.settle_objects()
        settled = self.timer()
        period = None if self.target_fps is None else 1.0 / self.target_fps
        if period is not None:
            if self._due is None or finished > self._due + period:  # first frame, or late
                self._due = started + period
            available = self._due - settled
        else:
            available = gcp.budget
        gcp.slack(available)
        stats = self.stats
        stats.overflows = alloc.overflows - self._base_overflows
        stats.heap_fallbacks = alloc.heap_fallbacks - self._base_fallbacks
        stats.leaks = alloc.leaks - self._base_leaks
        stats.objects_detached = alloc.objects_detached - self._base_detached
        interval = float("nan") if self._presented is None else presented - self._presented
        self._presented = presented
        in_frame, in_slack, slack_generation = gcp.take_frame_pauses()
        stats.record(finished - started, nbytes, count, frame.updates, gc_frame=in_frame,
                     gc_slack=in_slack, gc_slack_generation=slack_generation,
                     settle=settled - finished, interval=interval, period=period)
        if period is not None and self._due is not None:
            spare = self._due - self.timer()
            if spare > 0:
                self.sleep(spare)
            self._due += period
        return True

    def run(self, frames: int | None = None) -> LoopStats:
        """Run `frames` frames (or until stop() / the window closes); return the stats."""
        self._running = True
        done = 0
        self._due = self._presented = None
        self.stats.begin()
        self.gc.begin()
        try:
            while self._running and (frames is None or done < frames):
                if not self.step():
                    break
                done += 1
        finally:
            self._running = False
            self.gc.end()
            self.stats.finish()
        return self.stats

    def stop(self) -> None:
        """Make run() return after the current frame."""
        self._running = False

    def reset_stats(self) -> LoopStats:
        """Fresh statistics from now on (after a warm-up, say); returns them."""
        self.stats = LoopStats(self.stats.history)
        self.gc.totals = self.stats.gc = GCTotals()
        self._base_overflows = self.allocator.overflows
        self._base_fallbacks = self.allocator.heap_fallbacks
        self._base_leaks = self.allocator.leaks
        self._base_detached = self.allocator.objects_detached
        return self.stats

    def freeze(self) -> int:
        """After loading: full collection, then ``gc.freeze()`` (see :class:`FrameGC`).

        During run() at once, otherwise at the start of each run; ``run()`` unfreezes
        what it froze when it ends. Returns the objects frozen now (0 when deferred).
        """
        return self.gc.freeze()

    def collect_full(self) -> None:
        """A full collection, e.g. at a level load: with ``gc="frame"`` in this frame's
        slack (after render), counted in ``stats.gc.requested_full``."""
        self.gc.collect_full()
