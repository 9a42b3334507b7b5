"""Publish timestamps and latency: the compiled core's tick clock against perf_counter_ns.

The compiled core stamps messages with a cheap tick clock (the TSC when the kernel uses
it as its clocksource) and converts to CLOCK_MONOTONIC ns only when ``publish_ns`` is
read; the pure-Python core uses perf_counter_ns directly. Both must give the same
observable behaviour.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import textwrap
import time

import pytest
from reference_core import BUS_CORES, core_id

CORES = BUS_CORES


@pytest.fixture(params=CORES, ids=core_id)
def Bus(request):
    return request.param


def test_publish_ns_lies_between_the_surrounding_perf_counter_reads(Bus):
    bus = Bus(blocks_per_class=64)
    stamps = []
    bus.subscribe("t.a", lambda m: stamps.append(m.publish_ns))
    pc = time.perf_counter_ns
    bad = []
    for i in range(5000):
        t0 = pc()
        bus.publish("t.a", b"x")
        t1 = pc()
        if not t0 <= stamps[-1] <= t1:
            bad.append((i, t0, stamps[-1], t1))
        if i == 2500:
            time.sleep(0.15)  # long enough for the compiled core to re-anchor its clock
    assert bad == []
    assert all(a <= b for a, b in itertools.pairwise(stamps))


def test_publish_ns_read_after_publish_returns_and_later(Bus):
    """Read once the subscriber is gone (retained messages) and again much later: the
    value is fixed at the first read and still between the surrounding clock reads."""
    bus = Bus(blocks_per_class=256)
    kept = []
    bus.subscribe("t.a", lambda m: kept.append(m.retain()))
    pc = time.perf_counter_ns
    windows = []
    for _ in range(200):
        t0 = pc()
        bus.publish("t.a", b"y")
        windows.append((t0, pc()))
    first = [m.publish_ns for m in kept]
    for (t0, t1), ns in zip(windows, first, strict=True):
        assert t0 <= ns <= t1
    assert first == sorted(first)
    time.sleep(0.12)
    assert [m.publish_ns for m in kept] == first
    for m in kept:
        m.release()
    assert bus.allocator.in_use == 0


def test_claimed_and_aborted_messages_have_no_publish_time(Bus):
    bus = Bus()
    bus.subscribe("t.a", lambda m: None)
    msg = bus.claim("t.a", 8)
    assert msg.publish_ns == 0
    msg.abort()
    assert msg.publish_ns == 0
    with bus.claim("t.a", 8) as msg:
        assert msg.publish_ns == 0
    assert msg.publish_ns > 0 and msg.seq == 1


def test_latency_histogram_is_in_nanoseconds(Bus):
    """The second subscriber's latency includes the first one's 2 ms sleep: the recorded
    value must be at least that and at most the whole publish call."""
    bus = Bus()
    bus.subscribe("t.a", lambda m: time.sleep(0.002))
    bus.subscribe("t.a", lambda m: None)
    t0 = time.perf_counter_ns()
    bus.publish("t.a", b"z")
    elapsed = time.perf_counter_ns() - t0
    lat = bus.stats().latency
    assert lat.count == 2
    assert 2_000_000 <= lat.max <= elapsed
    assert lat.p50 <= elapsed


def test_tick_clock_is_described_and_converts_to_perf_counter_ns():
    from hftalloc import _bus as fc

    info = fc.clock_info()
    assert fc.CLOCK == info["clock"] in ("tsc", "monotonic")
    if fc.CLOCK == "monotonic":
        assert info["ns_per_tick"] == 1.0
    else:
        assert fc._kernel_clocksource() == "tsc"
        assert 0.01 < info["ns_per_tick"] < 100.0
    pc = time.perf_counter_ns
    for pause in (0.0, 0.003, 0.0, 0.12, 0.0):
        time.sleep(pause)
        t0 = pc()
        ticks = fc._ticks()
        t1 = pc()
        assert t0 <= fc._ticks_to_ns_py(ticks) <= t1
    if fc.CLOCK == "tsc":
        assert fc.clock_info()["resyncs"] >= 1  # the 120 ms pause forced a re-anchor
    # tick differences: rounded, never negative, scaled by the calibrated rate
    assert fc._elapsed_ns(0) == 0 and fc._elapsed_ns(-5) == 0
    rate = fc.clock_info()["ns_per_tick"]
    assert fc._elapsed_ns(10**9) == round(10**9 * rate)
    assert fc._elapsed_ns(2**62) == min(round(2**62 * rate), 2**63 - 1)



def test_old_ticks_convert_between_the_anchors_around_them():
    """A stamp converted long after it was taken (a retained message whose publish_ns is
    read late) is interpolated between kept anchors: still inside its bracket."""
    from hftalloc import _bus as fc

    pc = time.perf_counter_ns
    old = []
    for _ in range(3):
        t0 = pc()
        ticks = fc._ticks()
        old.append((t0, ticks, pc()))
        for _ in range(4):  # conversions of fresh ticks renew the anchors meanwhile
            time.sleep(0.03)
            fc._ticks_to_ns_py(fc._ticks())
    for t0, ticks, t1 in old:
        assert t0 <= fc._ticks_to_ns_py(ticks) <= t1
    if fc.CLOCK == "tsc":
        assert fc.clock_info()["anchors_kept"] >= 3


def test_anchor_table_stays_bounded_and_keeps_old_history_covered():
    from hftalloc import _bus as fc

    pc = time.perf_counter_ns
    old = []
    for i in range(300):
        if i % 60 == 0:
            t0 = pc()
            ticks = fc._ticks()
            old.append((t0, ticks, pc()))
            time.sleep(0.002)
        fc._clock_resync()
    info = fc.clock_info()
    if fc.CLOCK == "tsc":
        assert 2 <= info["anchors_kept"] <= 64
    for t0, ticks, t1 in old:
        assert t0 <= fc._ticks_to_ns_py(ticks) <= t1
    t0 = pc()
    ticks = fc._ticks()
    t1 = pc()
    assert t0 <= fc._ticks_to_ns_py(ticks) <= t1

def _run(env_clock: str, code: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, HFTALLOC_CLOCK=env_clock)
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env,
                          capture_output=True, text=True, timeout=120)


FALLBACK_CHECK = """
    import time
    from hftalloc import MessageBus
    from hftalloc import _bus as fc
    print(fc.CLOCK, fc.clock_info()["ns_per_tick"])
    bus = MessageBus()
    stamps = []
    bus.subscribe("t.a", lambda m: stamps.append(m.publish_ns))
    for _ in range(2000):
        t0 = time.perf_counter_ns()
        bus.publish("t.a", b"x")
        t1 = time.perf_counter_ns()
        assert t0 <= stamps[-1] <= t1, (t0, stamps[-1], t1)
    assert stamps == sorted(stamps)
    assert bus.stats().latency.count == 2000
    t0 = time.perf_counter_ns()
    ticks = fc._ticks()
    assert t0 <= ticks == fc._ticks_to_ns_py(ticks) <= time.perf_counter_ns()
    print("ok")
"""


def test_monotonic_fallback_forced_by_environment():
    done = _run("monotonic", FALLBACK_CHECK)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["monotonic", "1.0", "ok"]


def test_unknown_clock_setting_warns_and_uses_auto():
    done = _run("sundial", """
        import warnings
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            from hftalloc import _bus as fc
        print(fc.CLOCK, [str(w.message) for w in caught])
    """)
    assert done.returncode == 0, done.stderr
    assert "HFTALLOC_CLOCK='sundial'" in done.stdout
    from hftalloc import _bus as fc

    if os.environ.get("HFTALLOC_CLOCK", "auto") in ("auto", "tsc", ""):
        assert done.stdout.split()[0] == fc.CLOCK  # the same choice as "auto"
