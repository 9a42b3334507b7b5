"""Soak: the trading and game demos' cores run for a while; RSS stays flat, pools end at zero.

Each run lasts ``SOAK_SECONDS`` (default 2 s, e.g. ``SOAK_SECONDS=60`` for the long run).
RSS is sampled throughout; after a warm-up (the first 40 % of the run) it may not grow by
more than a fixed allowance (``SOAK_RSS_SLACK_MIB``, default 4 MiB), so a leak of even a
few bytes per message or per frame shows up, and more clearly the longer the run. At
shutdown every pool must be back to zero blocks in use and the allocators must close.
"""

from __future__ import annotations

import asyncio
import gc
import importlib.util
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
SECONDS = float(os.environ.get("SOAK_SECONDS", "2"))
SLACK = float(os.environ.get("SOAK_RSS_SLACK_MIB", "4")) * 2**20
WARMUP = 0.4
PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096

pytestmark = [
    pytest.mark.timeout(max(120, int(SECONDS * 6) + 60)),
    pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="needs /proc for RSS"),
]


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


def load_example(name: str) -> ModuleType:
    path = ROOT / "examples" / f"{name}.py"
    if not path.exists():
        pytest.skip(f"examples/{name}.py is not there yet")
    spec = importlib.util.spec_from_file_location(f"soak_{name}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


class RssTrace:
    """RSS samples over a timed run; checks the growth after warm-up."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.start = time.perf_counter()
        self.samples: list[tuple[float, int]] = []
        self.next = 0.0

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def running(self) -> bool:
        now = self.elapsed()
        if now >= self.next:
            self.samples.append((now, rss()))
            self.next = now + self.seconds / 50
        return now < self.seconds

    def assert_flat(self, what: str) -> None:
        self.samples.append((self.elapsed(), rss()))
        warm = [r for t, r in self.samples if t <= self.seconds * WARMUP]
        after = [r for t, r in self.samples if t > self.seconds * WARMUP]
        assert warm and after, "too few RSS samples"
        growth = max(after) - warm[-1]
        mib = [f"{r / 2**20:.1f}" for _, r in self.samples[:: max(1, len(self.samples) // 10)]]
        assert growth <= SLACK, (
            f"{what}: RSS grew by {growth / 2**20:.2f} MiB after warm-up "
            f"(allowed {SLACK / 2**20:.1f} MiB); samples (MiB): {', '.join(mib)}")


# -- trading demo ------------------------------------------------------------------------------

def assert_bus_drained(bus: Any) -> None:
    stats = bus.stats()
    assert stats.published > 1000
    assert (stats.dropped, stats.rejected, stats.errors) == (0, 0, 0)
    assert (stats.retained, stats.deferred, stats.queued) == (0, 0, 0)
    assert all(pool.in_use == 0 for pool in stats.pools)
    assert sum(pool.allocations for pool in stats.pools) == sum(
        pool.releases for pool in stats.pools)
    bus.close()  # raises BlocksStillLive if anything still owned a block
    assert bus.allocator.closed and bus.allocator.in_use == 0


def test_trading_demo_sync_soak() -> None:
    demo_module = load_example("trading_demo")
    args = demo_module.parse_args(["--rate", "0", "--quiet", "--mode", "sync"])
    demo = demo_module.build(args)
    step: Callable[[], None] = demo.feed.step
    trace = RssTrace(SECONDS)
    while trace.running():
        for _ in range(512):
            step()
    trace.assert_flat("trading demo (sync bus)")
    assert demo.strategy.orders > 0 and demo.gateway.fills > 0
    assert_bus_drained(demo.bus)


def test_trading_demo_async_soak() -> None:
    demo_module = load_example("trading_demo")
    args = demo_module.parse_args(["--rate", "0", "--quiet", "--mode", "async"])
    demo = demo_module.build(args)
    bus = demo.bus

    async def run() -> RssTrace:
        await bus.start()
        trace = RssTrace(SECONDS)
        while trace.running():
            for _ in range(64):
                demo.feed.step()
            await asyncio.sleep(0)  # let the drain task dispatch the burst
        await bus.join()
        trace.assert_flat("trading demo (async bus)")
        assert_bus_drained(bus)
        await bus.aclose()
        return trace

    with asyncio.Runner(loop_factory=demo_module.loop_factory()) as runner:
        runner.run(run())


# -- game demo ---------------------------------------------------------------------------------

def test_game_demo_soak() -> None:
    game = load_example("game_demo")
    from framealloc import FixedStepClock, FrameAllocator, GameLoop

    allocator = FrameAllocator(2 << 20, name="soak")
    sim = game.FrameSim(2000, allocator, seed=1)
    loop = GameLoop(sim.update, sim.render, allocator=allocator, dt=game.DT,
                    clock=FixedStepClock(game.DT), history=256)
    trace = RssTrace(SECONDS)
    frames = 0
    while trace.running():
        assert loop.step()
        frames += 1
    trace.assert_flat("game demo (frame allocator)")
    stats = allocator.stats
    assert frames > 10 and stats.frame == frames
    assert (stats.overflows, stats.heap_fallbacks, stats.leaks) == (0, 0, 0)
    # shutdown: drop the simulation; nothing may still reference frame or persistent memory
    del loop, sim
    gc.collect()
    for _ in range(allocator.buffers):
        allocator.swap()  # strict leak policy: raises if any frame array were still alive
    assert all(not b.arena.exported_blocks() for b in allocator._buffers)
    assert allocator.persistent.in_use == 0
    allocator.close()
    allocator.persistent.close()  # BlocksStillLive if a persistent block were still live
