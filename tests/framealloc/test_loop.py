"""GameLoop: fixed-step accumulator arithmetic, frame skip, swaps, stats, windows."""

from __future__ import annotations

import numpy as np
import pytest

from framealloc import (
    FixedStepClock,
    Frame,
    FrameAllocator,
    FrameLeakError,
    GameLoop,
    ManualClock,
)


class Recorder:
    """Callbacks that log what they receive; optionally burn simulated time."""

    def __init__(self, clock: ManualClock | None = None, work: float = 0.0) -> None:
        self.updates: list[tuple[float, int, float]] = []
        self.renders: list[tuple[float, int]] = []
        self.clock, self.work = clock, work

    def update(self, dt: float, frame: Frame) -> None:
        self.updates.append((dt, frame.number, frame.time))

    def render(self, alpha: float, frame: Frame) -> None:
        self.renders.append((alpha, frame.number))
        if self.clock is not None:
            self.clock.advance(self.work)


def make_loop(rec: Recorder, clock: ManualClock, **kw: object) -> GameLoop:
    return GameLoop(rec.update, rec.render, allocator=FrameAllocator(4096), clock=clock,
                    timer=clock, **kw)  # type: ignore[arg-type]


def test_accumulator_runs_whole_steps_and_carries_the_remainder() -> None:
    clock, rec = ManualClock(), Recorder()
    loop = make_loop(rec, clock, dt=0.25)
    loop.step()  # the first frame only starts the clock
    assert rec.updates == [] and rec.renders == [(0.0, 0)]
    clock.advance(0.625)  # 2.5 steps
    loop.step()
    assert [u[0] for u in rec.updates] == [0.25, 0.25]
    assert loop.accumulator == pytest.approx(0.125)
    assert rec.renders[-1] == (pytest.approx(0.5), 1)
    clock.advance(0.125)  # completes the half step carried over
    loop.step()
    assert len(rec.updates) == 3
    assert rec.renders[-1][0] == pytest.approx(0.0)
    assert [u[2] for u in rec.updates] == [0.0, 0.25, 0.5]  # simulated time before each update


@pytest.mark.parametrize(("elapsed", "max_updates", "ran", "dropped"), [
    (1.0, 3, 3, 7),
    (1.05, 4, 4, 6),
    (0.3, 5, 3, 0),
    (0.5, 5, 5, 0),
    (0.55, 5, 5, 0),
])
def test_max_updates_caps_the_catch_up_and_drops_the_backlog(
    elapsed: float, max_updates: int, ran: int, dropped: int
) -> None:
    clock, rec = ManualClock(), Recorder()
    loop = make_loop(rec, clock, dt=0.1, max_updates=max_updates)
    loop.step()
    clock.advance(elapsed)
    loop.step()
    assert len(rec.updates) == ran
    assert loop.stats.dropped_updates == dropped
    assert 0.0 <= loop.accumulator < 0.1
    assert 0.0 <= loop.alpha < 1.0
    remainder = elapsed - (ran + dropped) * 0.1
    assert loop.accumulator == pytest.approx(remainder, abs=1e-9)


def test_fixed_step_clock_gives_exactly_one_update_per_frame() -> None:
    rec = Recorder()
    loop = GameLoop(rec.update, rec.render, allocator=FrameAllocator(1024), dt=1 / 60,
                    clock=FixedStepClock(1 / 60))
    stats = loop.run(1000)
    assert stats.frames == 1000 and stats.updates == 1000
    assert stats.dropped_updates == 0
    assert [u[1] for u in rec.updates] == list(range(1000))
    assert rec.updates[-1][2] == pytest.approx(999 / 60)


def test_a_clock_going_backwards_adds_no_time() -> None:
    clock, rec = ManualClock(10.0), Recorder()
    loop = make_loop(rec, clock, dt=0.1)
    loop.step()
    clock.now = 5.0
    loop.step()
    assert rec.updates == [] and loop.accumulator == 0.0


def test_frames_swap_automatically_and_last_frame_is_readable() -> None:
    seen: list[float] = []
    state: dict[str, np.ndarray] = {}

    def update(dt: float, frame: Frame) -> None:
        if "pos" in state:
            seen.append(float(state["pos"][0]))  # written by the previous frame
        new = frame.array(4)
        new[:] = frame.number * 10.0
        state["pos"] = new  # the old one (frame k-1) is dropped before frame k+1 starts

    alloc = FrameAllocator(4096)
    loop = GameLoop(update, allocator=alloc, dt=0.5, clock=FixedStepClock(0.5))
    loop.run(6)
    assert alloc.frame == 6 and loop.frame.number == 6
    assert seen == [0.0, 10.0, 20.0, 30.0, 40.0]


def test_keeping_frame_arrays_too_long_is_caught_by_the_loop() -> None:
    kept: list[np.ndarray] = []
    loop = GameLoop(lambda dt, f: kept.append(f.array(2)), allocator=FrameAllocator(4096),
                    dt=1.0, clock=FixedStepClock(1.0))
    with pytest.raises(FrameLeakError) as info:
        loop.run(5)
    assert info.value.frame == 0
    assert loop.stats.frames == 1  # frame 1 could not end: the swap into frame 2 refused
    assert loop.allocator.frame == 1


def test_stats_record_frame_times_bytes_and_allocations() -> None:
    clock = ManualClock()
    works = iter([0.001, 0.003, 0.002, 0.010, 0.001])

    def update(dt: float, frame: Frame) -> None:
        frame.array(frame.number + 1)  # (k+1) * 8 bytes, 1 allocation
        frame.array(2)  # 16 bytes

    def render(alpha: float, frame: Frame) -> None:
        clock.advance(next(works))

    loop = GameLoop(update, render, allocator=FrameAllocator(4096), dt=0.001,
                    clock=FixedStepClock(0.001), timer=clock)
    stats = loop.run(5)
    assert stats.series("frame_time") == pytest.approx([0.001, 0.003, 0.002, 0.010, 0.001])
    assert list(stats.series("allocations")) == [2] * 5
    expected = [((k + 1) * 8 + 15) // 16 * 16 + 16 for k in range(5)]
    assert expected == [32, 32, 48, 48, 64]
    assert list(stats.series("bytes")) == expected
    assert stats.high_water == max(expected)
    summary = stats.summary()
    assert summary["frame_ms_p50"] == pytest.approx(2.0)
    assert summary["frame_ms_max"] == pytest.approx(10.0)
    assert summary["allocations_per_frame"] == 2.0
    text = stats.report()
    assert "frame_ms_p99" in text and "high_water_bytes" in text


def test_stats_count_overflows_and_heap_fallbacks() -> None:
    def update(dt: float, frame: Frame) -> None:
        frame.array(1000)  # 8000 B never fits in 1 KiB

    loop = GameLoop(update, allocator=FrameAllocator(1024, on_overflow="heap"), dt=1.0,
                    clock=FixedStepClock(1.0))
    stats = loop.run(3)
    assert stats.overflows == 3 and stats.heap_fallbacks == 3


class FakeWindow:
    def __init__(self, frames: int) -> None:
        self.left, self.polls, self.presents = frames, 0, 0

    def poll(self) -> bool:
        self.polls += 1
        self.left -= 1
        return self.left >= 0

    def present(self) -> None:
        self.presents += 1


def test_window_closing_ends_the_run() -> None:
    window, rec = FakeWindow(3), Recorder()
    loop = GameLoop(rec.update, rec.render, allocator=FrameAllocator(1024), window=window,
                    clock=FixedStepClock(1 / 60))
    stats = loop.run()
    assert stats.frames == 3 and window.presents == 3 and len(rec.renders) == 3


def test_target_fps_sleeps_the_spare_time() -> None:
    clock, slept = ManualClock(), []
    rec = Recorder(clock, work=0.004)

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        clock.advance(seconds)

    loop = GameLoop(rec.update, rec.render, allocator=FrameAllocator(1024), clock=clock,
                    timer=clock, target_fps=100, sleep=sleep)
    stats = loop.run(3)
    assert slept == pytest.approx([0.006] * 3)
    assert stats.series("interval")[1:] == pytest.approx([0.01, 0.01]) and stats.hitches == 0


def test_a_frame_later_than_two_periods_is_a_hitch() -> None:
    clock = ManualClock()
    works = iter([0.004, 0.025, 0.004, 0.004])

    def render(alpha: float, frame: Frame) -> None:
        clock.advance(next(works))

    loop = GameLoop(lambda dt, f: None, render, allocator=FrameAllocator(1024), clock=clock,
                    timer=clock, target_fps=100, sleep=clock.advance)
    stats = loop.run(4)
    assert stats.hitches == 1 and stats.summary()["hitches"] == 1


def test_stop_from_a_callback_ends_after_that_frame() -> None:
    def update(dt: float, frame: Frame) -> None:
        if frame.number == 4:
            loop.stop()

    loop = GameLoop(update, allocator=FrameAllocator(1024), dt=0.1, clock=FixedStepClock(0.1))
    stats = loop.run(100)
    assert stats.frames == 5


@pytest.mark.parametrize("kw", [{"dt": 0}, {"dt": -1.0}, {"max_updates": 0},
                                {"target_fps": 0}])
def test_rejects_bad_settings(kw: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        GameLoop(lambda dt, f: None, **kw)  # type: ignore[arg-type]


def test_default_allocator_and_gc_count() -> None:
    loop = GameLoop(lambda dt, f: f.zeros(3), clock=FixedStepClock(1 / 60))
    stats = loop.run(10)
    assert loop.allocator.frame == 10
    assert stats.gc_collections >= 0 and stats.summary()["frames"] == 10


def test_gc_collections_count_only_while_the_loop_runs() -> None:
    import gc

    def update(dt: float, frame: Frame) -> None:
        if frame.number % 5 == 0:
            gc.collect()

    loop = GameLoop(update, clock=FixedStepClock(1 / 60))
    was_enabled = gc.isenabled()
    gc.disable()  # only the explicit collections happen
    try:
        assert loop.run(10).gc_collections == 2  # frames 0 and 5
        for _ in range(3):
            gc.collect()  # between runs (another mode of a comparison): not counted
        assert loop.run(10).gc_collections == 4  # frames 10 and 15
    finally:
        if was_enabled:
            gc.enable()
