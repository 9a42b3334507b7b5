"""MessageBus in sync mode, run against every available core (pure Python and Cython)."""

from __future__ import annotations

import gc
import logging
import struct
import time

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from reference_core import BUS_CORES, core_id

from coreallocs import BlocksStillLive, InvalidSize, PoolExhausted, SizeTooLarge
from hftalloc import (
    BufferStillExported,
    BusClosed,
    BusFull,
    InvalidTopic,
    MessageAllocator,
    MessageBus,
    MessageReleased,
    MessageStateError,
    NotRetained,
    NotSubscribed,
)

CORES = BUS_CORES


@pytest.fixture(params=CORES, ids=core_id)
def Bus(request):
    return request.param


def drained(bus) -> bool:
    """Every block is back in the pool and nothing is held back."""
    stats = bus.stats()
    return bus.allocator.in_use == 0 and stats.deferred == 0 and stats.retained == 0


def expected_class(size: int) -> int:
    return max(64, 1 << (max(size, 1) - 1).bit_length())


# -- routing to size classes ---------------------------------------------------------------
@pytest.mark.parametrize(
    ("size", "cls"),
    [(0, 64), (1, 64), (63, 64), (64, 64), (65, 128), (128, 128), (129, 256), (4096, 4096),
     (4097, 8192), (8191, 8192), (8192, 8192)],
)
def test_publish_routes_payload_to_its_size_class(Bus, size, cls):
    bus = Bus(blocks_per_class=2)
    seen = []
    bus.subscribe("t.size", lambda m: seen.append((m.size_class, len(m), m.payload.nbytes)))
    bus.publish("t.size", bytes(size))
    assert seen == [(cls, size, size)]
    pools = {p.block_size: p for p in bus.stats().pools}
    assert pools[cls].allocations == 1 and pools[cls].in_use == 0
    assert sum(p.allocations for p in pools.values()) == 1
    assert drained(bus)


def test_size_above_largest_class_raises_and_is_counted(Bus):
    bus = Bus(blocks_per_class=2)
    bus.subscribe("t.big", lambda m: None)
    with pytest.raises(SizeTooLarge):
        bus.publish("t.big", bytes(8193))
    with pytest.raises(SizeTooLarge):
        bus.claim("t.big", 8193)
    assert bus.stats().topics["t.big"].rejected == 2
    assert bus.published == 0 and drained(bus)


def test_oversize_system_policy_serves_large_messages(Bus):
    bus = Bus(MessageAllocator(2, oversize="system"))
    got = []
    bus.subscribe("t.big", lambda m: got.append(bytes(m.payload)))
    data = bytes(range(256)) * 40
    bus.publish("t.big", data)
    assert got == [data]
    assert bus.allocator.stats.fallback_allocations == 1 and drained(bus)


@given(st.integers(min_value=0, max_value=8192))
def test_any_size_lands_in_next_power_of_two(size):
    for Bus in CORES:
        bus = Bus(blocks_per_class=1)
        seen = []
        bus.subscribe("t.x", lambda m, seen=seen: seen.append(m.size_class))
        with bus.claim("t.x", size) as msg:
            assert len(msg.buffer) == size
        assert seen == [expected_class(size)]
        assert bus.allocator.size_class(max(size, 1)) == expected_class(size)
        assert bus.allocator.in_use == 0


# -- topics and wildcards ----------------------------------------------------------------------
def test_wildcard_subscriptions_receive_matching_topics(Bus):
    bus = Bus()
    got: dict[str, list[str]] = {}
    for pattern in ("md.quote.AAPL", "md.*.AAPL", "md.>", "*.*.*", "md.quote.*", "ord.>"):
        bus.subscribe(pattern, lambda m, p=pattern: got.setdefault(p, []).append(m.topic))
    for topic in ("md.quote.AAPL", "md.trade.AAPL", "md.quote.MSFT", "md.book", "ord.new"):
        bus.publish(topic, b"x")
    assert got == {
        "md.quote.AAPL": ["md.quote.AAPL"],
        "md.*.AAPL": ["md.quote.AAPL", "md.trade.AAPL"],
        "md.>": ["md.quote.AAPL", "md.trade.AAPL", "md.quote.MSFT", "md.book"],
        "*.*.*": ["md.quote.AAPL", "md.trade.AAPL", "md.quote.MSFT"],
        "md.quote.*": ["md.quote.AAPL", "md.quote.MSFT"],
        "ord.>": ["ord.new"],
    }
    assert drained(bus)


def test_subscribe_and_unsubscribe_update_cached_topics(Bus):
    bus = Bus()
    got = []
    bus.publish("md.quote.AAPL", b"a")  # topic resolved and cached with no subscriber
    sub = bus.subscribe("md.*.AAPL", lambda m: got.append(m.tobytes()))
    bus.publish("md.quote.AAPL", b"b")
    sub.unsubscribe()
    bus.publish("md.quote.AAPL", b"c")
    assert got == [b"b"]
    with pytest.raises(NotSubscribed):
        bus.unsubscribe(sub)
    assert bus.stats().topics["md.quote.AAPL"].published == 3
    assert drained(bus)


def test_delivery_follows_subscription_order(Bus):
    bus = Bus()
    order = []
    bus.subscribe("a.>", lambda m: order.append("wild"))
    bus.subscribe("a.b", lambda m: order.append("exact"))
    bus.subscribe("*.b", lambda m: order.append("star"))
    bus.publish("a.b", b"x")
    assert order == ["wild", "exact", "star"]


@pytest.mark.parametrize("topic", ["", "a..b", ".a", "a.", "a.*", "a.>", 3])
def test_invalid_topics_are_rejected(Bus, topic):
    bus = Bus()
    with pytest.raises((InvalidTopic, TypeError)):
        bus.publish(topic, b"x")


@pytest.mark.parametrize("pattern", ["", "a.>.b", "a*", "a.b>", "..", None])
def test_invalid_patterns_are_rejected(Bus, pattern):
    bus = Bus()
    with pytest.raises(InvalidTopic):
        bus.subscribe(pattern, print)


# -- zero copy and message lifetime ------------------------------------------------------------
def test_subscribers_get_a_read_only_view_of_the_payload(Bus):
    bus = Bus()
    checks = []

    def sub(msg):
        view = msg.payload
        checks.append((view.readonly, bytes(view), msg.topic, msg.nbytes))
        with pytest.raises(TypeError):
            view[0] = 1
        with pytest.raises((TypeError, BufferError)):
            struct.pack_into("B", view, 0, 1)
        with pytest.raises(MessageStateError):
            msg.buffer  # noqa: B018

    bus.subscribe("t.ro", sub)
    bus.subscribe("t.ro", sub)
    bus.publish("t.ro", bytearray(b"hello"))
    assert checks == [(True, b"hello", "t.ro", 5)] * 2
    assert drained(bus)



def test_payload_by_any_spelling_of_its_name_is_the_same_view(Bus):
    """`msg.payload`, getattr() with a name built at run time (not interned) and the
    class's property give the same object, and a released message refuses all three."""
    bus = Bus()
    seen = []

    def sub(msg):
        first = msg.payload
        name = "".join(["pay", "load"])
        seen.append((first is msg.payload, first is getattr(msg, name),
                     first is type(msg).payload.__get__(msg), bytes(first)))
        with pytest.raises(AttributeError):
            getattr(msg, "pay" + "loads")
        kept.append(msg)

    kept = []
    bus.subscribe("t.a", sub)
    bus.publish("t.a", b"abc")
    assert seen == [(True, True, True, b"abc")]
    (msg,) = kept
    for read in (lambda m: m.payload, lambda m: getattr(m, "".join(["pay", "load"]))):
        with pytest.raises(MessageReleased):
            read(msg)
    assert msg.seq == 1 and msg.topic == "t.a" and not msg.live

def test_claim_encodes_in_place_then_commits_on_exit(Bus):
    bus = Bus()
    got = []
    bus.subscribe("t.claim", lambda m: got.append(struct.unpack_from("<qd", m.payload)))
    with bus.claim("t.claim", 16) as msg:
        assert msg.state == "claimed"
        struct.pack_into("<qd", msg.buffer, 0, -7, 2.5)
    assert got == [(-7, 2.5)]
    assert msg.state == "released" and drained(bus)
    with pytest.raises(MessageReleased):
        msg.payload  # noqa: B018


def test_claim_exception_aborts_and_counts(Bus):
    bus = Bus()
    got = []
    bus.subscribe("t.claim", got.append)
    with pytest.raises(RuntimeError), bus.claim("t.claim", 8) as msg:
        msg.buffer[:2] = b"ab"
        raise RuntimeError("encoder failed")
    assert got == [] and bus.aborted == 1 and bus.published == 0
    assert drained(bus)


def test_commit_with_a_live_writable_view_is_refused(Bus):
    bus = Bus()
    bus.subscribe("t.claim", lambda m: None)
    msg = bus.claim("t.claim", 8)
    kept = msg.buffer[2:]
    with pytest.raises(BufferStillExported):
        msg.commit()
    del kept
    writer = msg.buffer
    assert msg.commit() == 1
    with pytest.raises(ValueError):  # the claim's own view dies at commit: no late writes
        writer[0] = 1
    assert drained(bus)


def test_commit_failure_inside_with_aborts_without_recycling_the_block(Bus):
    bus = Bus(blocks_per_class=1)
    bus.subscribe("t.claim", lambda m: None)
    with pytest.raises(BufferStillExported), bus.claim("t.claim", 8) as msg:
        msg.buffer[:] = b"12345678"
        kept = msg.buffer[:4]
    assert bus.aborted == 1 and bus.leaked_views == 1
    assert bus.allocator.in_use == 1  # held back: the view still points at it
    assert bytes(kept) == b"1234"
    del kept
    assert drained(bus)


def test_message_refs_return_every_block(Bus):
    bus = Bus(blocks_per_class=4)
    kept = []

    def keeper(msg):
        kept.append(msg.retain())

    bus.subscribe("t.a", keeper)
    bus.subscribe("t.a", lambda m: None)
    for i in range(3):
        bus.publish("t.a", bytes([i]) * 10)
    assert bus.allocator.in_use == 3 and bus.stats().retained == 3
    assert [m.tobytes() for m in kept] == [bytes([i]) * 10 for i in range(3)]
    kept[0].retain()
    kept[0].release()
    assert bus.allocator.in_use == 3
    for msg in kept:
        msg.release()
    assert drained(bus)
    with pytest.raises(NotRetained):
        kept[0].release()
    with pytest.raises(MessageReleased):
        kept[0].payload  # noqa: B018


def test_release_without_retain_is_refused(Bus):
    bus = Bus()
    errors = []

    def sub(msg):
        try:
            msg.release()
        except NotRetained as exc:
            errors.append(exc)

    bus.subscribe("t.a", sub)
    bus.publish("t.a", b"x")
    assert len(errors) == 1 and drained(bus)


def test_a_message_kept_without_retain_is_dead_and_never_reused(Bus):
    bus = Bus(blocks_per_class=2)
    kept = []
    bus.subscribe("t.a", kept.append)
    bus.publish("t.a", b"first")
    first = kept[0]
    assert first.live is False
    for i in range(50):  # the slot is reused many times; the kept object must not change
        bus.publish("t.a", bytes([i]) * 5)
    assert first.seq == 1 and first.topic == "t.a" and first.live is False
    with pytest.raises(MessageReleased):
        first.payload  # noqa: B018
    with pytest.raises(MessageReleased):
        first.tobytes()
    # the compiled core's messages export their bytes directly; released ones refuse
    with pytest.raises(MessageReleased if Bus is MessageBus else TypeError):
        memoryview(first)
    assert len({id(m) for m in kept}) == len(kept)  # kept messages are distinct objects


def test_a_payload_view_kept_without_retain_is_invalidated(Bus):
    bus = Bus()
    views = []
    bus.subscribe("t.a", lambda m: views.append(m.payload))
    bus.publish("t.a", b"abc")
    bus.publish("t.a", b"xyz")
    for view in views:
        with pytest.raises(ValueError):
            view[0]
    assert drained(bus)


@pytest.mark.parametrize("how", ["slice", "numpy", "memoryview"])
def test_leaked_view_defers_the_block_until_it_is_dropped(Bus, how):
    bus = Bus(blocks_per_class=1)
    leaks = []

    def leaky(msg):
        if how == "slice":
            leaks.append(msg.payload[1:])
        elif how == "numpy":
            leaks.append(np.frombuffer(msg.payload, dtype=np.uint8))
        else:
            leaks.append(memoryview(msg.payload))

    sub = bus.subscribe("t.a", leaky)
    bus.subscribe("t.a", lambda m: None)
    bus.publish("t.a", b"secret")
    stats = bus.stats()
    assert stats.leaked_views == 1 and stats.deferred == 1
    assert bus.allocator.in_use == 1
    sub.unsubscribe()
    # the only block of the class is held: the next message cannot take it
    with pytest.raises(BusFull):
        bus.publish("t.a", b"other!")
    assert bytes(leaks[0]).endswith(b"ecret")  # still the original bytes, never overwritten
    leaks.clear()
    assert bus.publish("t.a", b"again!") is not None  # swept on demand, block recycled
    assert drained(bus)


# -- back-pressure policies --------------------------------------------------------------------
def test_raise_policy_refuses_when_class_is_full(Bus):
    bus = Bus(blocks_per_class=2)
    kept = []
    bus.subscribe("t.a", lambda m: kept.append(m.retain()))
    bus.publish("t.a", b"1")
    bus.publish("t.a", b"2")
    with pytest.raises(BusFull) as info:
        bus.publish("t.a", b"3")
    assert isinstance(info.value, PoolExhausted) and isinstance(info.value, MemoryError)
    assert "64 B" in str(info.value)
    assert bus.publish("t.a", bytes(100)) is not None  # other classes are unaffected
    topic = bus.stats().topics["t.a"]
    assert (topic.published, topic.rejected, topic.dropped) == (3, 1, 0)
    for m in kept:
        m.release()
    assert drained(bus)


def test_drop_policy_counts_per_topic(Bus):
    bus = Bus(blocks_per_class=2, policy="drop")
    kept = []
    bus.subscribe("t.>", lambda m: kept.append(m.retain()))
    results = [bus.publish("t.a", b"x") for _ in range(3)] + [bus.publish("t.b", b"y")]
    assert results[:2] == [1, 2] and results[2:] == [None, None]
    assert bus.claim("t.b", 10) is None
    stats = bus.stats()
    assert (stats.topics["t.a"].dropped, stats.topics["t.b"].dropped, stats.dropped) == (1, 2, 3)
    assert stats.published + stats.dropped == 5
    for m in kept:
        m.release()
    assert drained(bus)


def test_block_policy_needs_async_mode(Bus):
    with pytest.raises(ValueError, match="async"):
        Bus(policy="block")
    with pytest.raises(ValueError):
        Bus(policy="wait")
    with pytest.raises(ValueError):
        Bus(mode="threads")


# -- failing subscribers -----------------------------------------------------------------------
def test_raising_subscriber_does_not_stop_the_others(Bus):
    reports = []
    bus = Bus(on_error=lambda exc, msg, sub: reports.append((type(exc), msg.tobytes(), sub)))
    got = []
    bus.subscribe("t.a", lambda m: got.append(("first", m.tobytes())))
    bad = bus.subscribe("t.>", lambda m: 1 / 0)
    bus.subscribe("t.a", lambda m: got.append(("last", m.tobytes())))
    bus.publish("t.a", b"m1")
    bus.publish("t.a", b"m2")
    assert got == [("first", b"m1"), ("last", b"m1"), ("first", b"m2"), ("last", b"m2")]
    assert reports == [(ZeroDivisionError, b"m1", bad), (ZeroDivisionError, b"m2", bad)]
    topic = bus.stats().topics["t.a"]
    assert (topic.errors, topic.delivered, bus.errors) == (2, 4, 2)
    assert drained(bus)


def test_failing_error_hook_is_counted_and_default_hook_logs(Bus, caplog):
    def bad_hook(exc, msg, sub):
        raise RuntimeError("hook broke")

    bus = Bus(on_error=bad_hook)
    bus.subscribe("t.a", lambda m: 1 / 0)
    got = []
    bus.subscribe("t.a", got.append)
    with caplog.at_level(logging.ERROR, logger="hftalloc.bus"):
        bus.publish("t.a", b"x")
    assert bus.hook_errors == 1 and len(got) == 1
    plain = Bus()
    plain.subscribe("t.a", lambda m: 1 / 0)
    caplog.clear()
    with caplog.at_level(logging.ERROR, logger="hftalloc.bus"):
        plain.publish("t.a", b"x")
    assert "ZeroDivisionError" in caplog.text and plain.errors == 1



def test_subscriber_error_reaches_the_hook_with_its_traceback(Bus):
    seen = []
    bus = Bus(on_error=lambda exc, msg, sub: seen.append(exc))

    def broken(msg):
        raise ValueError(f"bad {msg.seq}")

    bus.subscribe("t.a", broken)
    bus.publish("t.a", b"x")
    (exc,) = seen
    assert str(exc) == "bad 1"
    names = []
    tb = exc.__traceback__
    while tb is not None:
        names.append(tb.tb_frame.f_code.co_name)
        tb = tb.tb_next
    assert names[-1] == "broken"
    assert drained(bus)


def test_base_exception_in_subscriber_propagates_and_frees_the_message(Bus):
    """Only Exception goes to the error hook; KeyboardInterrupt & co. leave publish()."""
    reports = []
    bus = Bus(on_error=lambda exc, msg, sub: reports.append(exc))
    got = []
    bus.subscribe("t.a", lambda m: got.append(m.seq))

    def interrupt(msg):
        raise KeyboardInterrupt

    sub = bus.subscribe("t.a", interrupt)
    with pytest.raises(KeyboardInterrupt):
        bus.publish("t.a", b"x")
    assert got == [1] and reports == [] and bus.errors == 0
    assert bus.stats().published == 1
    assert drained(bus)
    sub.unsubscribe()
    assert bus.publish("t.a", b"y") == 2 and got == [1, 2]
    assert drained(bus)

# -- statistics, sequence numbers, timestamps --------------------------------------------------
def test_stats_count_topics_pools_and_latency(Bus):
    bus = Bus(blocks_per_class=8)
    kept = []
    bus.subscribe("md.>", lambda m: None)
    bus.subscribe("md.quote.*", lambda m: kept.append(m.retain()) if len(m) > 64 else None)
    for i in range(10):
        bus.publish("md.quote.A", bytes(100 if i < 3 else 10))
    bus.publish("md.trade.A", b"t")
    stats = bus.stats()
    assert stats.topics["md.quote.A"].published == 10
    assert stats.topics["md.quote.A"].delivered == 20
    assert stats.topics["md.trade.A"].delivered == 1
    assert stats.latency.count == 21 == stats.delivered
    lat = stats.latency
    assert 0 <= lat.p50 <= lat.p90 <= lat.p99 <= lat.p999 <= lat.max
    pools = {p.block_size: p for p in stats.pools}
    assert (pools[128].in_use, pools[128].high_water) == (3, 3)
    assert (pools[64].in_use, pools[64].high_water) == (0, 1)
    text = stats.report()
    assert "md.quote.A" in text and "p99.9" in text and "[128]" in text
    for m in kept:
        m.release()
    assert drained(bus)


def test_sequence_numbers_and_publish_timestamps(Bus):
    bus = Bus()
    seen = []
    bus.subscribe("t.>", lambda m: seen.append((m.seq, m.publish_ns, time.perf_counter_ns())))
    before = time.perf_counter_ns()
    seqs = [bus.publish(f"t.{i % 3}", b"x") for i in range(5)]
    after = time.perf_counter_ns()
    assert seqs == [1, 2, 3, 4, 5] == [s for s, _, _ in seen]
    for _, published, delivered in seen:
        assert before <= published <= delivered <= after


def test_published_bytearray_can_be_resized_afterwards_whatever_the_outcome(Bus):
    """publish() holds the source buffer only while it copies: every outcome (delivered,
    unrouted, dropped, refused, too large, closed bus) leaves the bytearray resizable."""
    data = bytearray(b"abc")

    def grow():
        data.extend(b"!")  # BufferError if an export of `data` were still alive
        del data[3:]

    full = Bus(blocks_per_class=1, policy="drop")
    seen, kept = [], []
    full.subscribe("t.a", lambda m: (seen.append(m.tobytes()), kept.append(m.retain())))
    assert full.publish("t.a", data) == 1 and seen == [b"abc"]
    grow()
    assert full.publish("t.a", data) is None  # class full: dropped
    grow()
    assert full.publish("t.none", data) == 2  # no subscriber
    grow()
    refusing = Bus(blocks_per_class=1)
    refusing.subscribe("t.a", lambda m: kept.append(m.retain()))
    refusing.publish("t.a", data)
    with pytest.raises(BusFull):
        refusing.publish("t.a", data)
    grow()
    with pytest.raises(SizeTooLarge):
        refusing.publish("t.a", bytearray(9000))
    closed = Bus()
    closed.close()
    with pytest.raises(BusClosed):
        closed.publish("t.a", data)
    grow()
    assert data == bytearray(b"abc")
    for m in kept:
        m.release()


@pytest.mark.parametrize("data", [b"abc", bytearray(b"abc"), memoryview(b"xabc")[1:],
                                  np.frombuffer(b"abc", dtype=np.uint8)])
def test_publish_accepts_any_contiguous_buffer(Bus, data):
    bus = Bus()
    got = []
    bus.subscribe("t.a", lambda m: got.append(m.tobytes()))
    bus.publish("t.a", data)
    assert got == [b"abc"]


def test_publish_accepts_empty_buffers_of_any_shape(Bus):
    bus = Bus()
    got = []
    bus.subscribe("t.a", lambda m: got.append(m.tobytes()))
    for data in (b"", bytearray(), np.zeros((2, 0), np.uint8), np.zeros((0,), np.float64)):
        bus.publish("t.a", data)
    assert got == [b""] * 4 and drained(bus)


def test_publish_refuses_text_and_strided_buffers(Bus):
    bus = Bus()
    bus.subscribe("t.a", print)
    with pytest.raises(TypeError):
        bus.publish("t.a", "text")
    with pytest.raises((BufferError, TypeError, ValueError)):
        bus.publish("t.a", np.arange(10, dtype=np.uint8)[::2])
    with pytest.raises(TypeError):
        bus.claim("t.a", 2.5)
    with pytest.raises(TypeError):
        bus.claim("t.a", True)
    for bad in (-1, 2**63, 2**70):
        with pytest.raises(InvalidSize):
            bus.claim("t.a", bad)
    for big in (8193, 2**40, 2**63 - 1):
        with pytest.raises(SizeTooLarge):
            bus.claim("t.a", big)
    assert drained(bus)


def test_nested_publish_from_a_subscriber(Bus):
    bus = Bus(blocks_per_class=2)
    got = []

    def forward(msg):
        bus.publish("out.x", msg.payload)  # publish straight from the read-only view

    bus.subscribe("in.x", forward)
    bus.subscribe("out.x", lambda m: got.append(m.tobytes()))
    for i in range(5):
        bus.publish("in.x", bytes([i]) * 3)
    assert got == [bytes([i]) * 3 for i in range(5)]
    assert drained(bus)


def test_close_refuses_while_messages_are_retained(Bus):
    bus = Bus()
    kept = []
    bus.subscribe("t.a", lambda m: kept.append(m.retain()))
    bus.publish("t.a", b"x")
    with pytest.raises(BlocksStillLive):
        bus.close()
    with pytest.raises(BusClosed):
        bus.publish("t.a", b"y")
    kept[0].release()
    bus.close()
    assert bus.closed and bus.allocator.closed


def test_unrouted_topics_are_counted_without_taking_blocks(Bus):
    bus = Bus(blocks_per_class=1)
    for _ in range(10):
        bus.publish("nobody.listens", b"x" * 10)
    assert bus.stats().topics["nobody.listens"].published == 10
    assert sum(p.allocations for p in bus.stats().pools) == 0


# -- randomized lifetime check ---------------------------------------------------------------------
OPS = st.lists(
    st.tuples(st.sampled_from(["publish", "retain", "release", "leak", "unleak", "claim"]),
              st.integers(0, 300)),
    max_size=40,
)


def assert_unchanged(held, leaked):
    """Live data is never overwritten while a message is retained or a view is held."""
    for msg, content in held:
        assert msg.tobytes() == content
    for view, content in leaked:
        assert bytes(view) == content


@given(OPS)
def test_random_lifetimes_never_lose_or_recycle_a_live_block(ops):
    for Bus in CORES:
        run_random_lifetimes(Bus, ops)


def run_random_lifetimes(Bus, ops):
    bus = Bus(blocks_per_class=3, policy="drop")
    held, leaked = [], []
    mode = {"op": None}

    def sub(msg):
        if mode["op"] == "retain":
            held.append((msg.retain(), msg.tobytes()))
        elif mode["op"] == "leak":
            leaked.append((msg.payload[:], msg.tobytes()))

    bus.subscribe("r.*", sub)
    attempts = 0
    for op, n in ops:
        mode["op"] = op
        if op in ("publish", "retain", "leak"):
            attempts += 1
            bus.publish(f"r.{n % 2}", bytes([n % 256]) * (n % 200))
        elif op == "claim":
            attempts += 1
            msg = bus.claim("r.c", n % 100)
            if msg is not None:
                msg.buffer[:] = bytes([n % 256]) * (n % 100)
                msg.commit()
        elif op == "release" and held:
            held.pop(n % len(held))[0].release()
        elif op == "unleak" and leaked:
            leaked.pop(n % len(leaked))
        assert_unchanged(held, leaked)
        stats = bus.stats()
        assert stats.published + stats.dropped == attempts
        assert bus.allocator.in_use == len(held) + stats.deferred
    for msg, _ in held:
        msg.release()
    leaked.clear()
    assert drained(bus)


# -- teardown safety ----------------------------------------------------------------------------
def test_an_abandoned_claim_returns_its_block(Bus):
    bus = Bus(blocks_per_class=1)
    bus.subscribe("t.a", lambda m: None)
    msg = bus.claim("t.a", 10)
    msg.buffer[:3] = b"abc"
    del msg
    gc.collect()
    assert bus.allocator.in_use == 0
    assert bus.publish("t.a", b"next") == 1


def test_dropping_the_bus_keeps_held_memory_valid(Bus):
    bus = Bus(blocks_per_class=2)
    allocator = bus.allocator
    kept, views = [], []
    bus.subscribe("t.a", lambda m: (kept.append(m.retain()), views.append(m.payload[1:])))
    bus.publish("t.a", b"hello")
    del bus
    gc.collect()
    assert kept[0].tobytes() == b"hello" and bytes(views[0]) == b"ello"
    kept.pop().release()
    assert bytes(views[0]) == b"ello"  # still held back by the view
    views.clear()
    gc.collect()
    assert allocator.in_use == 0  # the bus and its deferred message were collected


def test_dropping_an_async_bus_with_queued_messages_frees_them(Bus):
    bus = Bus(mode="async", blocks_per_class=4)
    allocator = bus.allocator
    bus.subscribe("t.a", lambda m: None)
    for _ in range(3):
        bus.publish("t.a", b"queued")
    assert allocator.in_use == 3
    del bus
    gc.collect()
    assert allocator.in_use == 0
