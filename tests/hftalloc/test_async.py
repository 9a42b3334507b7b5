"""MessageBus in asyncio mode, on plain asyncio and on uvloop, against every core."""

from __future__ import annotations

import asyncio

import pytest
from reference_core import BUS_CORES, core_id

from coreallocs import BlocksStillLive
from hftalloc import (
    BusFull,
    WouldBlock,
    loop_factory,
)
from hftalloc.errors import BusError

pytestmark = pytest.mark.timeout(30)

CORES = BUS_CORES
LOOPS = ["asyncio"]
try:
    import uvloop

    LOOPS.append("uvloop")
except ImportError:  # uvloop is optional: the bus works on plain asyncio
    uvloop = None


@pytest.fixture(params=CORES, ids=core_id)
def Bus(request):
    return request.param


@pytest.fixture(params=LOOPS)
def run(request):
    """Run a coroutine to completion on the selected event loop (bounded in time)."""

    def runner(coro, timeout=10.0):
        with asyncio.Runner(loop_factory=loop_factory(request.param == "uvloop")) as r:
            return r.run(asyncio.wait_for(coro, timeout))

    runner.loop_name = request.param
    return runner


def drained(bus) -> bool:
    stats = bus.stats()
    return bus.allocator.in_use == 0 and stats.deferred == 0 and stats.retained == 0


def test_the_selected_loop_is_really_used(run):
    async def main():
        return type(asyncio.get_running_loop()).__module__

    module = run(main())
    assert module.startswith("uvloop") == (run.loop_name == "uvloop")


def test_publish_is_queued_then_dispatched_by_the_drain_task(Bus, run):
    async def main():
        bus = Bus(mode="async")
        got = []
        bus.subscribe("md.*", lambda m: got.append((m.seq, m.tobytes())))
        for i in range(1000):
            bus.publish(f"md.{i % 3}", i.to_bytes(4, "little"))
        assert got == [] and bus.queued == 1000  # nothing runs until the loop gets control
        await bus.join()
        assert got == [(i + 1, i.to_bytes(4, "little")) for i in range(1000)]
        assert drained(bus) and bus.stats().latency.count == 1000
        await bus.aclose()
        assert bus.closed

    run(main())


def test_coroutine_subscribers_keep_the_message_until_they_finish(Bus, run):
    async def main():
        bus = Bus(mode="async")
        got = []

        async def slow(msg):
            await asyncio.sleep(0.001)
            got.append(("slow", msg.tobytes(), bus.allocator.in_use >= 1))

        bus.subscribe("t.a", slow)
        bus.subscribe("t.a", lambda m: got.append(("sync", m.tobytes(), True)))
        async with bus:
            for i in range(5):
                bus.publish("t.a", bytes([i]) * 3)
            await bus.join()
        assert sorted(got) == sorted([("slow", bytes([i]) * 3, True) for i in range(5)]
                                     + [("sync", bytes([i]) * 3, True) for i in range(5)])
        assert [g[1] for g in got if g[0] == "slow"] == [bytes([i]) * 3 for i in range(5)]
        assert bus.delivered == 10 and drained(bus)

    run(main())


def test_coroutine_subscribers_need_async_mode(Bus):
    async def handler(msg):
        pass

    with pytest.raises(TypeError):
        Bus().subscribe("t.a", handler)


def test_block_policy_waits_for_free_blocks(Bus, run):
    async def main():
        bus = Bus(mode="async", policy="block", blocks_per_class=4)
        got = []
        bus.subscribe("t.a", lambda m: got.append(int.from_bytes(m.payload, "little")))
        for i in range(100):  # 25x the class capacity, without ever yielding explicitly
            assert await bus.apublish("t.a", i.to_bytes(2, "little")) == i + 1
        await bus.join()
        stats = bus.stats()
        assert got == list(range(100))
        assert stats.blocked > 0 and stats.dropped == 0 and stats.rejected == 0
        pools = {p.block_size: p for p in stats.pools}
        assert pools[64].high_water == 4
        assert drained(bus)
        await bus.aclose()

    run(main())


def test_block_policy_claim_and_plain_publish(Bus, run):
    async def main():
        bus = Bus(mode="async", policy="block", blocks_per_class=2)
        got = []
        bus.subscribe("t.a", lambda m: got.append(m.tobytes()))
        bus.publish("t.a", b"1")
        bus.publish("t.a", b"2")
        with pytest.raises(WouldBlock):  # non-awaiting calls cannot wait
            bus.publish("t.a", b"3")
        msg = await bus.aclaim("t.a", 1)  # waits until the drain task frees a block
        msg.buffer[0] = ord("4")
        msg.commit()
        await bus.join()
        assert got == [b"1", b"2", b"4"]
        assert bus.stats().topics["t.a"].rejected == 1 and drained(bus)

    run(main())


def test_block_policy_timeout_raises_and_counts(Bus, run):
    async def main():
        bus = Bus(mode="async", policy="block", blocks_per_class=1)
        kept = []
        bus.subscribe("t.a", lambda m: kept.append(m.retain()))
        await bus.apublish("t.a", b"held")
        await bus.join()
        with pytest.raises(BusFull):
            await bus.apublish("t.a", b"never", timeout=0.05)
        assert bus.stats().topics["t.a"].rejected == 1
        kept[0].release()
        assert await bus.apublish("t.a", b"now", timeout=1) == 2
        await bus.join()
        kept.pop().release()
        assert drained(bus)

    run(main())


def test_a_retained_message_released_later_wakes_a_blocked_publisher(Bus, run):
    async def main():
        bus = Bus(mode="async", policy="block", blocks_per_class=1)
        kept = []
        bus.subscribe("t.a", lambda m: kept.append(m.retain()))
        await bus.apublish("t.a", b"a")
        await bus.join()
        waiter = asyncio.create_task(bus.apublish("t.a", b"b"))
        await asyncio.sleep(0.01)
        assert not waiter.done()
        kept.pop().release()
        assert await waiter == 2
        await bus.join()
        kept.pop().release()
        assert drained(bus)

    run(main())


def test_drop_policy_in_async_mode_counts_everything(Bus, run):
    async def main():
        bus = Bus(mode="async", policy="drop", blocks_per_class=8)
        got = []
        bus.subscribe("t.a", lambda m: got.append(m.seq))
        results = [bus.publish("t.a", b"x") for _ in range(20)]  # no yield: the pool fills
        await bus.join()
        stats = bus.stats()
        assert results.count(None) == 12 == stats.dropped == stats.topics["t.a"].dropped
        assert len(got) == 8 == stats.published and drained(bus)

    run(main())


def test_raising_subscribers_in_async_mode(Bus, run):
    async def main():
        errors = []
        bus = Bus(mode="async", on_error=lambda e, m, s: errors.append((type(e).__name__, m.seq)))
        got = []

        async def bad_async(msg):
            raise KeyError(msg.seq)

        bus.subscribe("t.a", lambda m: 1 / 0)
        bus.subscribe("t.a", bad_async)
        bus.subscribe("t.a", lambda m: got.append(m.seq))
        for _ in range(3):
            bus.publish("t.a", b"x")
        await bus.join()
        assert got == [1, 2, 3]
        assert sorted(errors) == sorted([("ZeroDivisionError", i) for i in (1, 2, 3)]
                                        + [("KeyError", i) for i in (1, 2, 3)])
        assert bus.stats().topics["t.a"].errors == 6 and drained(bus)

    run(main())


def test_messages_published_before_the_loop_runs_are_delivered(Bus, run):
    bus = Bus(mode="async")
    got = []
    bus.subscribe("t.a", lambda m: got.append(m.tobytes()))
    bus.publish("t.a", b"early")  # no running loop: stays queued
    assert bus.queued == 1

    async def main():
        await bus.join()
        await bus.aclose()

    run(main())
    assert got == [b"early"] and bus.closed


def test_close_with_queued_messages_is_refused(Bus):
    bus = Bus(mode="async")
    bus.subscribe("t.a", lambda m: None)
    bus.publish("t.a", b"x")
    with pytest.raises(BlocksStillLive):
        bus.close()


def test_async_only_calls_on_a_sync_bus(Bus, run):
    bus = Bus()

    async def main():
        with pytest.raises(BusError):
            await bus.join()
        with pytest.raises(BusError):
            await bus.start()

    run(main())


def test_subscriber_publishing_in_async_mode(Bus, run):
    async def main():
        bus = Bus(mode="async", batch=4)
        got = []
        bus.subscribe("in.x", lambda m: bus.publish("out.x", m.payload))
        bus.subscribe("out.x", lambda m: got.append(m.tobytes()))
        for i in range(50):
            bus.publish("in.x", bytes([i]))
        await bus.join()
        assert got == [bytes([i]) for i in range(50)] and drained(bus)

    run(main())
