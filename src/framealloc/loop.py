"""GameLoop: fixed-timestep updates, variable-rate rendering, automatic frame swaps."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Protocol

import numpy as np

from framealloc.allocator import FrameAllocator
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


class Frame:
    """What the callbacks receive: frame number, simulated time and frame memory.

    One object is reused for the whole run (read its fields, do not keep it).
    ``array`` / ``arrays`` / ``zeros`` / ``copy`` allocate in the current frame; ``persistent``
    is the allocator's persistent area.
    """

    __slots__ = ("allocator", "array", "arrays", "copy", "dt", "number", "persistent", "time",
                 "updates", "zeros")

    def __init__(self, allocator: FrameAllocator, dt: float) -> None:
        self.allocator = allocator
        self.array = allocator.array
        self.arrays = allocator.arrays
        self.zeros = allocator.zeros
        self.copy = allocator.copy
        self.persistent = allocator.persistent
        self.dt = dt
        self.number = allocator.frame  # the frame being built
        self.time = 0.0  # simulated time: fixed updates run so far * dt
        self.updates = 0  # fixed updates run in this frame so far


UpdateFn = Callable[[float, Frame], object]
RenderFn = Callable[[float, Frame], object]


class GameLoop:
    """The classic accumulator loop, swapping frame buffers after each rendered frame.

    Each frame: read `clock`, add the elapsed time to the accumulator, run
    ``update(dt, frame)`` while a whole `dt` is available (at most `max_updates`
    times: the backlog beyond that is dropped and counted, so a slow machine does
    not spiral), call ``render(alpha, frame)`` with ``alpha = accumulator / dt`` in
    [0, 1) for interpolation, present the window if any, then ``allocator.swap()``.

    `clock` drives the simulation (default ``time.perf_counter``; use
    :class:`~framealloc.FixedStepClock` for a deterministic headless run, or
    :class:`~framealloc.ManualClock` in tests); `timer` measures the frame times
    recorded in :attr:`stats`. With `target_fps` the loop sleeps to pace frames.
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
    ) -> None:
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
        self.frame = Frame(self.allocator, self.dt)
        self.accumulator = 0.0
        self.alpha = 0.0
        self._last: float | None = None
        self._running = False
        self._base_overflows = self.allocator.overflows
        self._base_fallbacks = self.allocator.heap_fallbacks
        self._base_leaks = self.allocator.leaks

    def step(self) -> bool:
        """Run one frame; False when the window asked to quit (nothing was run then)."""
        if self.window is not None and not self.window.poll():
            return False
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
        alloc = self.allocator
        nbytes, count = alloc.bytes_used, alloc.allocations
        alloc.swap()
        frame.number = alloc.frame
        stats = self.stats
        stats.overflows = alloc.overflows - self._base_overflows
        stats.heap_fallbacks = alloc.heap_fallbacks - self._base_fallbacks
        stats.leaks = alloc.leaks - self._base_leaks
        elapsed = self.timer() - started
        stats.record(elapsed, nbytes, count, frame.updates)
        if self.target_fps is not None:
            spare = 1.0 / self.target_fps - elapsed
            if spare > 0:
                self.sleep(spare)
        return True

    def run(self, frames: int | None = None) -> LoopStats:
        """Run `frames` frames (or until stop() / the window closes); return the stats."""
        self._running = True
        done = 0
        self.stats.begin()
        try:
            while self._running and (frames is None or done < frames):
                if not self.step():
                    break
                done += 1
        finally:
            self._running = False
            self.stats.finish()
        return self.stats

    def stop(self) -> None:
        """Make run() return after the current frame."""
        self._running = False
