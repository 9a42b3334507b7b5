"""MessageAllocator routing, topic patterns and the HDR latency histogram."""

from __future__ import annotations

import math

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from coreallocs import BlocksStillLive, InvalidSize, PoolExhausted, SizeTooLarge
from hftalloc import Histogram, InvalidTopic, MessageAllocator, matches
from hftalloc.histogram import MAX_VALUE, NUM_BUCKETS, bucket_bounds, bucket_index
from hftalloc.topics import split_pattern, validate_topic


# -- MessageAllocator ------------------------------------------------------------------------
def test_default_classes_are_64_bytes_to_8_kib():
    alloc = MessageAllocator(4)
    assert alloc.class_sizes == (64, 128, 256, 512, 1024, 2048, 4096, 8192)
    assert (alloc.num_classes, alloc.min_size, alloc.max_size) == (8, 64, 8192)


@pytest.mark.parametrize(("size", "cls"), [(1, 64), (63, 64), (64, 64), (65, 128), (8191, 8192),
                                           (8192, 8192)])
def test_boundaries_route_to_the_right_class(size, cls):
    alloc = MessageAllocator(2)
    assert alloc.size_class(size) == cls
    with alloc.allocate(size) as block:
        assert (block.reserved, len(block)) == (cls, size)
    assert alloc.in_use == 0


def test_above_the_largest_class_policies():
    with pytest.raises(SizeTooLarge):
        MessageAllocator(2).allocate(8193)
    assert MessageAllocator(2).size_class(8193) is None
    alloc = MessageAllocator(2, oversize="system")
    block = alloc.allocate(8193)
    assert (block.kind, len(block), alloc.stats.fallback_allocations) == ("system", 8193, 1)
    block.release()
    assert alloc.in_use == 0


def test_class_count_and_minimum_are_configurable():
    alloc = MessageAllocator(2, min_size=32, num_classes=4)
    assert alloc.class_sizes == (32, 64, 128, 256)
    with pytest.raises(SizeTooLarge):
        alloc.allocate(257)


@pytest.mark.parametrize(("kwargs", "error"), [
    ({"oversize": "grow"}, ValueError), ({"num_classes": 0}, InvalidSize),
    ({"num_classes": True}, TypeError), ({"min_size": 48}, InvalidSize),
    ({"blocks_per_class": 0}, InvalidSize),
])
def test_bad_configuration_is_refused(kwargs, error):
    with pytest.raises(error):
        MessageAllocator(**{"blocks_per_class": 2, **kwargs})


def test_capacity_per_class_is_fixed_and_reported():
    alloc = MessageAllocator(3)
    blocks = [alloc.allocate(100) for _ in range(3)]
    assert alloc.try_allocate(100) is None
    with pytest.raises(PoolExhausted):
        alloc.allocate(128)
    assert alloc.allocate(64).reserved == 64  # other classes are independent
    stats = {s.block_size: s for s in alloc.class_stats()}
    assert (stats[128].in_use, stats[128].high_water, stats[128].capacity) == (3, 3, 3)
    assert stats[128].failures == 2
    assert "[128]" in alloc.report()
    with pytest.raises(BlocksStillLive):
        alloc.close()
    for block in blocks:
        block.release()
    alloc.close()
    assert alloc.closed


@given(st.integers(1, 8192))
def test_every_size_maps_to_the_next_power_of_two(size):
    alloc = MessageAllocator(1)
    expected = max(64, 1 << (size - 1).bit_length())
    assert alloc.size_class(size) == expected
    with alloc.allocate(size) as block:
        assert block.reserved == expected


# -- topics ------------------------------------------------------------------------------------
@pytest.mark.parametrize(("pattern", "topic", "expected"), [
    ("md.quote.AAPL", "md.quote.AAPL", True),
    ("md.*.AAPL", "md.trade.AAPL", True),
    ("md.*.AAPL", "md.trade.MSFT", False),
    ("md.*", "md.trade.AAPL", False),
    ("md.>", "md.trade.AAPL", True),
    ("md.>", "md", False),
    (">", "anything.at.all", True),
    ("*", "one", True),
    ("*", "one.two", False),
    ("md.quote", "md.quote.AAPL", False),
])
def test_pattern_matching_table(pattern, topic, expected):
    assert matches(pattern, topic) is expected


segments = st.lists(st.text(alphabet="abcXYZ019_-", min_size=1, max_size=4), min_size=1,
                    max_size=5)


@given(segments, st.data())
def test_generated_patterns_match_their_topic(parts, data):
    topic = ".".join(parts)
    stars = [data.draw(st.booleans()) for _ in parts]
    pattern = [("*" if star else part) for part, star in zip(parts, stars, strict=True)]
    assert matches(".".join(pattern), topic)
    cut = data.draw(st.integers(0, len(parts) - 1))
    assert matches(".".join([*pattern[:cut], ">"]), topic)
    assert not matches(".".join([*pattern, "extra"]), topic)
    changed = data.draw(st.integers(0, len(parts) - 1))
    assume(not stars[changed])
    pattern[changed] = parts[changed] + "q"
    assert not matches(".".join(pattern), topic)


@pytest.mark.parametrize("bad", ["", "a..b", "a.", "a.>.b", "a*", "a.b>"])
def test_bad_patterns(bad):
    with pytest.raises(InvalidTopic):
        split_pattern(bad)


def test_topics_cannot_contain_wildcards():
    assert validate_topic("md.quote.AAPL") == "md.quote.AAPL"
    for bad in ("md.*", "md.>", "md.a*", "", None):
        with pytest.raises(InvalidTopic):
            validate_topic(bad)


# -- histogram -----------------------------------------------------------------------------------
def test_buckets_tile_the_value_range():
    previous = -1
    for index in range(NUM_BUCKETS):
        low, high = bucket_bounds(index)
        assert low == previous + 1 and high >= low
        assert bucket_index(low) == index == bucket_index(high)
        assert (high - low + 1) <= max(1, low // 128)  # relative resolution 1/128
        previous = high
    assert previous == MAX_VALUE and bucket_index(MAX_VALUE * 4) == NUM_BUCKETS - 1


values = st.lists(st.integers(0, 10**12), min_size=1, max_size=300)


@given(values, st.sampled_from([0, 1, 50, 90, 99, 99.9, 100]))
def test_percentiles_are_within_bucket_resolution(samples, q):
    hist = Histogram()
    hist.record_many(samples)
    ordered = sorted(samples)
    exact = ordered[max(1, math.ceil(q / 100 * len(ordered))) - 1]
    got = hist.percentile(q)
    assert exact <= got <= exact + exact // 128 + 1
    assert (hist.count, hist.min, hist.max) == (len(samples), ordered[0], ordered[-1])
    assert hist.mean == pytest.approx(sum(samples) / len(samples))
    summary = hist.summary()
    assert summary.p50 <= summary.p90 <= summary.p99 <= summary.p999 <= summary.max


@given(values, values)
def test_merge_equals_recording_everything(a, b):
    left, right, both = Histogram(), Histogram(), Histogram()
    left.record_many(a)
    right.record_many(b)
    both.record_many(a + b)
    left.merge(right)
    assert left.counts == both.counts


@given(st.lists(st.integers(-5, 2**50), max_size=50))
def test_compiled_recorder_matches_python(samples):
    from hftalloc._bus import _histogram_record

    py, c = Histogram(), Histogram()
    for value in samples:
        py.record(max(0, value))
        _histogram_record(c.counts, value)
    assert py.counts == c.counts


def test_empty_histogram_and_bad_queries():
    hist = Histogram()
    assert hist.percentile(99) == 0 and hist.summary().count == 0 and hist.min == 0
    assert hist.summary().format() == "no samples"
    with pytest.raises(ValueError):
        hist.percentile(101)
    with pytest.raises(ValueError):
        hist.record(-1)
    hist.record(5)
    hist.reset()
    assert hist.count == 0
