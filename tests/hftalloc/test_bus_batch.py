"""Batch dispatch: publish_many/commit_many and batch subscribers, on every core."""

from __future__ import annotations

import asyncio
import copy
import gc
import pickle

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from reference_core import BUS_CORES, ReferenceBus, core_id

from hftalloc import (
    BusClosed,
    BusFull,
    DispatchDepthExceeded,
    MessageBus,
    MessageReleased,
    MessageStateError,
    SizeTooLarge,
    WouldBlock,
)
from hftalloc.bus import MessageBatch


@pytest.fixture(params=BUS_CORES, ids=core_id)
def Bus(request):
    return request.param


def drained(bus) -> bool:
    stats = bus.stats()
    return bus.allocator.in_use == 0 and stats.deferred == 0 and stats.retained == 0


def payloads(n: int, size: int = 8) -> list[bytes]:
    return [bytes([i % 256]) * size for i in range(n)]


class Recorder:
    """A batch subscriber that copies what it receives."""

    def __init__(self) -> None:
        self.batches: list[list[tuple[str, int, bytes]]] = []

    def __call__(self, batch) -> None:
        self.batches.append([(m.topic, m.seq, m.tobytes()) for m in batch])

    @property
    def sizes(self) -> list[int]:
        return [len(b) for b in self.batches]

    @property
    def data(self) -> list[bytes]:
        return [d for b in self.batches for _, _, d in b]


# -- delivery ---------------------------------------------------------------------------------
def test_publish_many_reaches_per_message_and_batch_subscribers(Bus):
    bus = Bus(blocks_per_class=16)
    singles: list[bytes] = []
    rec = Recorder()
    bus.subscribe("md.q", lambda m: singles.append(m.tobytes()))
    bus.subscribe("md.q", rec, batch=True)
    data = payloads(5)
    assert bus.publish_many("md.q", data) == 5
    assert singles == data
    assert rec.sizes == [5] and rec.data == data
    seqs = [seq for _, seq, _ in rec.batches[0]]
    assert seqs == sorted(seqs) and len(set(seqs)) == 5
    stats = bus.stats()
    assert (stats.published, stats.delivered, stats.errors) == (5, 10, 0)
    topic = stats.topics["md.q"]
    assert (topic.published, topic.delivered) == (5, 10)
    assert bus.latency.count == 10
    assert drained(bus)


def test_a_single_publish_is_a_batch_of_one(Bus):
    bus = Bus()
    rec = Recorder()
    bus.subscribe("md.q", rec, batch=True)
    bus.publish("md.q", b"one")
    with bus.claim("md.q", 3) as msg:
        msg.buffer[:] = b"two"
    assert rec.sizes == [1, 1] and rec.data == [b"one", b"two"]
    assert bus.stats().delivered == 2
    assert drained(bus)


def test_wildcard_batch_subscribers_get_batches_per_topic(Bus):
    bus = Bus()
    rec, other = Recorder(), Recorder()
    bus.subscribe("md.>", rec, batch=True)
    bus.subscribe("md.*.x", other, batch=True)
    bus.publish_many("md.a.x", payloads(3))
    bus.publish_many("md.b", payloads(2))
    assert [{t for t, _, _ in b} for b in rec.batches] == [{"md.a.x"}, {"md.b"}]
    assert rec.sizes == [3, 2] and other.sizes == [3]
    assert drained(bus)


def test_payloads_may_be_any_iterable_of_buffers(Bus):
    bus = Bus()
    rec = Recorder()
    bus.subscribe("t", rec, batch=True)
    arr = np.arange(4, dtype=np.uint8)
    assert bus.publish_many("t", (bytes([i]) for i in range(3))) == 3
    assert bus.publish_many("t", [bytearray(b"ab"), memoryview(b"cd"), arr, b""]) == 4
    assert rec.data == [b"\0", b"\1", b"\2", b"ab", b"cd", arr.tobytes(), b""]
    assert bus.publish_many("t", []) == 0 and rec.sizes == [3, 4]
    with pytest.raises(TypeError):
        bus.publish_many("t", 42)
    assert drained(bus)


def test_a_bad_item_stops_the_batch_after_delivering_what_came_before(Bus):
    bus = Bus()
    rec = Recorder()
    bus.subscribe("t", rec, batch=True)
    with pytest.raises(TypeError):
        bus.publish_many("t", [b"a", b"b", "text", b"c"])
    assert rec.data == [b"a", b"b"] and bus.published == 2
    with pytest.raises(SizeTooLarge):
        bus.publish_many("t", [b"x", bytes(1 << 20)])
    assert rec.data[-1] == b"x" and bus.rejected == 1
    assert drained(bus)


def test_unrouted_publish_many_is_counted_without_blocks(Bus):
    bus = Bus(blocks_per_class=1)
    assert bus.publish_many("nobody.home", payloads(5)) == 5
    assert bus.published == 5 and bus.allocator.in_use == 0
    with pytest.raises(TypeError):
        bus.publish_many("nobody.home", [b"ok", 3])


def test_unsubscribed_batch_subscriber_gets_nothing(Bus):
    bus = Bus()
    rec = Recorder()
    sub = bus.subscribe("t", rec, batch=True)
    assert sub.batch and "batch" in repr(sub)
    bus.publish_many("t", payloads(2))
    sub.unsubscribe()
    bus.publish_many("t", payloads(2))
    assert rec.sizes == [2]
    with pytest.raises(TypeError):
        bus.subscribe("t", rec, batch=1)


# -- lifetimes --------------------------------------------------------------------------------
def test_messages_kept_without_retain_are_released_retained_ones_live(Bus):
    bus = Bus(blocks_per_class=8)
    kept, held = [], []

    def handler(batch):
        kept.extend(batch)
        held.extend(m.retain() for m in batch[::2])

    bus.subscribe("t", handler, batch=True)
    data = payloads(5)
    bus.publish_many("t", data)
    for i, msg in enumerate(kept):
        if i % 2:
            with pytest.raises(MessageReleased):
                msg.payload  # noqa: B018
            with pytest.raises(MessageReleased):
                msg.tobytes()
        else:
            assert msg.tobytes() == data[i] and msg.live
    assert bus.retained == 3 and bus.allocator.in_use == 3
    # the blocks of retained messages are not reused while they live
    bus.publish_many("t", payloads(8, 8)[::-1][:4])
    assert [m.tobytes() for m in held[:3]] == data[::2]
    for msg in held:
        msg.release()
    kept.clear()
    assert drained(bus)


def test_a_batch_kept_past_the_call_is_over(Bus):
    bus = Bus()
    kept = []

    def handler(batch):
        assert batch.live and len(batch) == 3 and bool(batch)
        assert batch[0] in batch and batch[-1].seq > batch[0].seq
        assert isinstance(batch[0:2], tuple) and len(batch[0:2]) == 2
        with pytest.raises(IndexError):
            batch[3]
        kept.append(batch)
        kept.append(iter(batch))

    bus.subscribe("t", handler, batch=True)
    bus.publish_many("t", payloads(3))
    batch, it = kept
    assert not batch.live and "over" in repr(batch)
    for access in (lambda: len(batch), lambda: batch[0], lambda: list(batch),
                   lambda: next(it), lambda: bool(batch), lambda: batch[0:1],
                   lambda: None in batch):
        with pytest.raises(MessageReleased, match="retain"):
            access()
    bus.publish_many("t", payloads(3))  # a kept batch object is never reused
    assert kept[2] is not batch and not kept[2].live
    assert drained(bus)


def test_batch_objects_cannot_be_made_copied_or_pickled(Bus):
    bus = Bus()
    errors = []

    def handler(batch):
        for op in (copy.copy, copy.deepcopy, pickle.dumps):
            try:
                op(batch)
            except TypeError as exc:
                errors.append(str(exc))

    bus.subscribe("t", handler, batch=True)
    bus.publish("t", b"x")
    assert len(errors) == 3
    if Bus is MessageBus:
        assert all("cannot be copied or pickled" in e for e in errors)
        with pytest.raises(TypeError):
            MessageBatch()
        blank = MessageBatch.__new__(MessageBatch)
        with pytest.raises(MessageStateError):
            len(blank)
        assert "not initialised" in repr(blank)
    assert drained(bus)


def test_a_retained_view_of_a_batch_message_defers_its_block(Bus):
    bus = Bus(blocks_per_class=2)
    views = []
    bus.subscribe("t", lambda batch: views.append(batch[0].payload[:]), batch=True)
    bus.publish_many("t", [b"aa", b"bb"])
    assert bytes(views[0]) == b"aa" and bus.stats().deferred == 1
    views.clear()
    gc.collect()
    assert drained(bus)


# -- full pools: the policy applies per message --------------------------------------------------
def test_the_pool_running_out_mid_batch_delivers_it_in_pieces(Bus):
    bus = Bus(blocks_per_class=4)
    rec = Recorder()
    singles = []
    bus.subscribe("t", lambda m: singles.append(m.tobytes()))
    bus.subscribe("t", rec, batch=True)
    data = payloads(10)
    assert bus.publish_many("t", data) == 10
    assert rec.sizes == [4, 4, 2] and rec.data == data and singles == data
    assert bus.stats().dropped == 0 and drained(bus)


def test_a_subscriber_added_during_a_partial_delivery_gets_the_rest_of_the_batch(Bus):
    bus = Bus(blocks_per_class=4)
    rec = Recorder()
    singles: list[bytes] = []

    def on_batch(batch):
        rec(batch)
        if len(rec.batches) == 1:  # the first piece: the pool ran out after 4
            bus.subscribe("t", lambda m: singles.append(m.tobytes()))

    bus.subscribe("t", on_batch, batch=True)
    data = payloads(10)
    assert bus.publish_many("t", data) == 10
    assert rec.sizes == [4, 4, 2] and rec.data == data and singles == data[4:]
    assert drained(bus)


@pytest.mark.parametrize("policy", ["drop", "raise"])
def test_exact_counters_when_retained_messages_fill_the_pool(Bus, policy):
    bus = Bus(blocks_per_class=4, policy=policy)
    held = []
    rec = Recorder()
    bus.subscribe("t", lambda batch: held.extend(m.retain() for m in batch), batch=True)
    bus.subscribe("t", rec, batch=True)
    if policy == "drop":
        assert bus.publish_many("t", payloads(10)) == 4
    else:
        with pytest.raises(BusFull, match="6 of 10 messages") as refused:
            bus.publish_many("t", payloads(10))
        assert refused.value.refused == 6
    stats = bus.stats()
    assert stats.published == 4 and rec.sizes == [4]
    assert (stats.dropped, stats.rejected) == ((6, 0) if policy == "drop" else (0, 6))
    assert stats.topics["t"].published + stats.dropped + stats.rejected == 10
    for msg in held:
        msg.release()
    assert drained(bus)


def test_a_bus_closed_by_a_subscriber_mid_batch_says_how_many_were_published(Bus):
    bus = Bus(blocks_per_class=16)
    seen = []

    def close_after_two(msg):
        seen.append(bytes(msg.payload))
        if len(seen) == 2:
            bus.close()

    bus.subscribe("t", close_after_two)
    with pytest.raises(BusClosed, match="during publish_many") as closed:
        bus.publish_many("t", payloads(5))
    assert closed.value.published == 2 and seen == payloads(5)[:2]


def test_block_policy_publish_many_needs_the_awaiting_call():
    async def main():
        bus = MessageBus(mode="async", policy="block", blocks_per_class=2)
        held = []
        bus.subscribe("t", lambda batch: held.extend(m.retain() for m in batch), batch=True)
        with pytest.raises(WouldBlock, match="apublish_many") as refused:
            bus.publish_many("t", payloads(3))
        assert (bus.published, bus.rejected, refused.value.refused) == (2, 1, 1)
        await bus.join()
        for m in held:
            m.release()
        await bus.aclose()

    asyncio.run(main())


@pytest.mark.parametrize("cls", BUS_CORES, ids=core_id)
def test_apublish_many_waits_for_blocks_under_the_block_policy(cls):
    async def main():
        bus = cls(mode="async", policy="block", blocks_per_class=4)
        rec = Recorder()
        bus.subscribe("t", rec, batch=True)
        data = payloads(11)
        assert await bus.apublish_many("t", data) == 11
        await bus.join()
        assert rec.data == data and max(rec.sizes) <= 4 and bus.blocked >= 1
        assert (bus.published, bus.dropped, bus.rejected) == (11, 0, 0)
        await bus.aclose()

    asyncio.run(main())


@pytest.mark.parametrize("cls", BUS_CORES, ids=core_id)
def test_apublish_many_timeout_counts_every_message_left(cls):
    async def main():
        bus = cls(mode="async", policy="block", blocks_per_class=2)
        held = []
        bus.subscribe("t", lambda batch: held.extend(m.retain() for m in batch), batch=True)
        with pytest.raises(BusFull):
            await bus.apublish_many("t", payloads(5), timeout=0.01)
        await bus.join()
        assert (bus.published, bus.rejected) == (2, 3)
        for m in held:
            m.release()
        await bus.aclose()

    asyncio.run(main())


# -- errors and re-entrancy --------------------------------------------------------------------
def test_a_failing_batch_subscriber_reaches_the_error_hook_once(Bus):
    seen = []
    bus = Bus(on_error=lambda exc, obj, sub: seen.append((type(exc), len(obj), sub.batch)))
    rec = Recorder()

    def bad(batch):
        raise ValueError("no")

    bus.subscribe("t", bad, batch=True)
    bus.subscribe("t", rec, batch=True)
    assert bus.publish_many("t", payloads(3)) == 3
    assert seen == [(ValueError, 3, True)] and rec.sizes == [3]
    stats = bus.stats()
    assert (stats.errors, stats.delivered) == (3, 3) and stats.topics["t"].errors == 3
    assert drained(bus)


def test_a_base_exception_in_a_batch_subscriber_propagates_and_frees_everything(Bus):
    bus = Bus()

    def interrupt(batch):
        raise KeyboardInterrupt

    bus.subscribe("t", interrupt, batch=True)
    with pytest.raises(KeyboardInterrupt):
        bus.publish_many("t", payloads(4))
    with pytest.raises(KeyboardInterrupt):
        bus.publish("t", b"x")
    assert drained(bus)


def test_a_batch_subscriber_publishing_is_bounded_by_max_depth(Bus):
    errors = []
    bus = Bus(max_depth=3, on_error=lambda exc, obj, sub: errors.append(type(exc)))
    depth = {"n": 0}
    rec = Recorder()

    def again(batch):
        depth["n"] += 1
        bus.publish_many("t", [m.tobytes() for m in batch])

    bus.subscribe("t", again, batch=True)
    bus.subscribe("t", rec, batch=True)
    bus.publish_many("t", payloads(2))
    assert depth["n"] == 3 and errors == [DispatchDepthExceeded]
    stats = bus.stats()
    assert stats.published == 6 and stats.rejected == 2 and rec.sizes == [2, 2, 2]
    assert drained(bus)


def test_a_per_message_subscriber_publishing_a_batch_mid_batch(Bus):
    bus = Bus(blocks_per_class=8)
    rec = Recorder()
    bus.subscribe("outer", lambda m: bus.publish_many("inner", [m.tobytes()] * 2))
    bus.subscribe("outer", rec, batch=True)
    bus.subscribe("inner", rec, batch=True)
    bus.publish_many("outer", [b"a", b"b"])
    assert rec.sizes == [2, 2, 2]
    assert [{t for t, _, _ in b} for b in rec.batches] == [{"inner"}, {"inner"}, {"outer"}]
    assert drained(bus)


# -- claim + commit_many ------------------------------------------------------------------------
def test_commit_many_publishes_claimed_messages_as_one_batch(Bus):
    bus = Bus()
    rec = Recorder()
    singles = []
    bus.subscribe("t", rec, batch=True)
    bus.subscribe("t", lambda m: singles.append(m.tobytes()))
    msgs = []
    for i in range(3):
        msg = bus.claim("t", 2)
        msg.buffer[:] = bytes([i, i])
        msgs.append(msg)
    assert bus.commit_many(msgs) == 3 and bus.commit_many([]) == 0
    assert rec.sizes == [3] and rec.data == singles == [b"\0\0", b"\1\1", b"\2\2"]
    assert drained(bus)


def test_commit_many_commits_nothing_when_one_message_cannot_be(Bus):
    bus = Bus()
    rec = Recorder()
    bus.subscribe(">", rec, batch=True)
    a, b, c = bus.claim("t", 1), bus.claim("t", 1), bus.claim("u", 1)
    with pytest.raises(ValueError, match="one topic"):
        bus.commit_many([a, c])
    with pytest.raises(MessageStateError):
        bus.commit_many([a, a])
    with pytest.raises(MessageStateError):
        bus.commit_many([a, b"not a message"])
    view = b.buffer[:]
    with pytest.raises(Exception, match="still alive"):
        bus.commit_many([a, b])
    del view
    assert (a.state, b.state) == ("claimed", "claimed") and rec.sizes == []
    assert bus.commit_many([a, b]) == 2 and rec.sizes == [2]
    with pytest.raises(MessageStateError):
        bus.commit_many([a])
    c.abort()
    assert drained(bus)


def test_publish_many_at_stamps_each_message(Bus):
    bus = Bus()
    got = []
    bus.subscribe("t", lambda batch: got.extend(m.publish_ns for m in batch), batch=True)
    bus.publish_many_at("t", [b"a", b"b", b"c"], [100, 0, 300])
    assert got[0] == 100 and got[2] == 300 and got[1] > 300
    with pytest.raises(ValueError):
        bus.publish_many_at("t", [b"a"], [1, 2])
    with pytest.raises(TypeError):
        bus.publish_many_at("t", [b"a"], [1.5])
    assert drained(bus)


# -- async mode -------------------------------------------------------------------------------
@pytest.mark.parametrize("cls", BUS_CORES, ids=core_id)
def test_async_batches_reach_sync_and_coroutine_subscribers(cls):
    async def main():
        bus = cls(mode="async", batch=4)
        sync_rec = Recorder()
        async_sizes, singles = [], []
        errors = []
        bus.on_error = lambda exc, obj, sub: errors.append(type(exc))

        async def on_batch(batch):
            await asyncio.sleep(0)
            async_sizes.append([m.tobytes() for m in batch])

        async def on_msg(msg):
            singles.append(msg.tobytes())

        async def bad(batch):
            raise RuntimeError

        bus.subscribe("t", sync_rec, batch=True)
        bus.subscribe("t", on_batch, batch=True)
        bus.subscribe("t", on_msg)
        bus.subscribe("t", bad, batch=True)
        data = payloads(6)
        bus.publish_many("t", data)
        bus.publish("t", b"single")
        await bus.join()
        assert sync_rec.sizes == [4, 2, 1]  # the drain step (batch=4) cuts the first batch
        assert [len(b) for b in async_sizes] == [4, 2, 1]
        assert [d for b in async_sizes for d in b] == singles == [*data, b"single"]
        assert errors == [RuntimeError] * 3
        stats = bus.stats()
        assert stats.published == 7 and stats.delivered == 21 and stats.errors == 7
        assert drained(bus)
        await bus.aclose()

    asyncio.run(main())


@pytest.mark.parametrize("cls", BUS_CORES, ids=core_id)
def test_async_commit_many_is_one_batch_and_drain_checks_its_batches(cls):
    async def main():
        bus = cls(mode="async")
        rec = Recorder()
        bus.subscribe("t", rec, batch=True)
        msgs = [bus.claim("t", 1) for _ in range(3)]
        for m in msgs:
            m.buffer[:] = b"z"
        assert bus.commit_many(msgs) == 3
        await bus.join()
        assert rec.sizes == [3]
        core = bus._core
        for call in (core.finish_batch, core.async_batch_subscribers, core.record_batch_latency,
                     lambda b: core.count_batch_delivery(b, True)):
            with pytest.raises(MessageStateError):
                call(object())
        await bus.aclose()

    asyncio.run(main())


def test_reference_and_compiled_batches_have_the_same_interface():
    from reference_core import MessageBatch as ModelBatch

    public = {n for n in dir(MessageBatch) if not n.startswith("_")}
    assert public == {n for n in dir(ModelBatch) if not n.startswith("_")} == {"live", "topic"}


# -- random sequences against the reference model -------------------------------------------------
TOPICS = ["a.x", "a.y", "b"]
PATTERNS = ["a.x", "a.*", ">", "b"]
# subscriber kinds: per message, a batch read whole, a batch read in part (out of order,
# by index and by slice: the rest of its messages are never looked at)
KINDS = ["msg", "batch", "sparse"]
OPS = st.lists(st.one_of(
    st.tuples(st.just("sub"), st.integers(0, 3), st.sampled_from(KINDS), st.booleans()),
    st.tuples(st.just("unsub"), st.integers(0, 20)),
    st.tuples(st.just("pub"), st.integers(0, 2), st.integers(0, 100)),
    st.tuples(st.just("many"), st.integers(0, 2), st.lists(st.integers(0, 100), max_size=7)),
    st.tuples(st.just("commit_many"), st.integers(0, 2), st.integers(0, 4)),
    st.tuples(st.just("release"), st.integers(0, 20)),
), max_size=30)


def run_ops(cls, policy, ops, blocks=3):
    """Apply ``ops`` to a fresh bus; return everything observable, step by step."""
    bus = cls(blocks_per_class=blocks, policy=policy)
    log, held, subs, trace = [], [], [], []

    def subscriber(sid, retain, kind):
        def on_batch(b):
            log.append((sid, "batch", [(m.topic, m.seq, m.tobytes()) for m in b]))
            if retain:
                held.extend(m.retain() for m in b)

        def on_sparse(b):
            picked = [b[i] for i in range(len(b) - 1, -1, -3)] + list(b[1:3])
            log.append((sid, "sparse", len(b), [(m.topic, m.seq, m.tobytes()) for m in picked]))
            if retain:
                held.extend(m.retain() for m in picked)

        def on_msg(m):
            log.append((sid, "msg", (m.topic, m.seq, m.tobytes())))
            if retain:
                held.append(m.retain())

        return {"msg": on_msg, "batch": on_batch, "sparse": on_sparse}[kind]

    for step, op in enumerate(ops):
        fill = bytes([step % 256])
        try:
            if op[0] == "sub":
                _, p, kind, retain = op
                subs.append(bus.subscribe(PATTERNS[p], subscriber(len(subs), retain, kind),
                                          batch=kind != "msg"))
                result = None
            elif op[0] == "unsub":
                live = [s for s in subs if s.active]
                result = None
                if live:
                    live[op[1] % len(live)].unsubscribe()
            elif op[0] == "pub":
                result = bus.publish(TOPICS[op[1]], fill * op[2])
            elif op[0] == "many":
                result = bus.publish_many(TOPICS[op[1]], [fill * n for n in op[2]])
            elif op[0] == "commit_many":
                msgs = []
                for _ in range(op[2]):
                    try:
                        msg = bus.claim(TOPICS[op[1]], 4)
                    except BusFull:
                        break
                    if msg is None:
                        break
                    msg.buffer[:] = fill * 4
                    msgs.append(msg)
                result = bus.commit_many(msgs)
            else:
                result = None
                if held:
                    held.pop(op[1] % len(held)).release()
        except BusFull as exc:
            result = (type(exc).__name__, str(exc))
        stats = bus.stats()
        trace.append((result, stats.published, stats.delivered, stats.dropped, stats.rejected,
                      stats.errors, stats.retained, bus.allocator.in_use,
                      [m.tobytes() for m in held]))
    for msg in held:
        msg.release()
    assert drained(bus)
    return log, trace


@settings(max_examples=150, deadline=None)
@given(st.sampled_from(["drop", "raise"]), OPS)
def test_random_batch_sequences_match_the_reference_model(policy, ops):
    model = run_ops(ReferenceBus, policy, ops)
    compiled = run_ops(MessageBus, policy, ops)
    assert compiled[1] == model[1]
    assert compiled[0] == model[0]


# big batches: the runs publish_many takes blocks for at once (64 messages) cut by full classes
BIG_OPS = st.lists(st.one_of(
    st.tuples(st.just("sub"), st.integers(0, 3), st.sampled_from(KINDS), st.booleans()),
    st.tuples(st.just("unsub"), st.integers(0, 20)),
    st.tuples(st.just("many"), st.integers(0, 2),
              st.lists(st.sampled_from([0, 1, 8, 33, 64, 65, 300]), max_size=200)),
    st.tuples(st.just("release"), st.integers(0, 200)),
), max_size=12)


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(["drop", "raise"]), BIG_OPS)
def test_random_big_batches_match_the_reference_model(policy, ops):
    model = run_ops(ReferenceBus, policy, ops, blocks=70)
    compiled = run_ops(MessageBus, policy, ops, blocks=70)
    assert compiled[1] == model[1]
    assert compiled[0] == model[0]


def test_a_long_batch_of_mixed_sizes_keeps_its_order_when_classes_fill(Bus):
    bus = Bus(blocks_per_class=50)
    rec = Recorder()
    bus.subscribe("t", rec, batch=True)
    data = [bytes([i % 251]) * (1 + i % 3 * 40) for i in range(400)]   # 1, 41, 81 B
    assert bus.publish_many("t", data) == 400
    assert rec.data == data and sum(rec.sizes) == 400 and max(rec.sizes) <= 150
    seqs = [seq for batch in rec.batches for _t, seq, _d in batch]
    assert seqs == sorted(seqs) and len(set(seqs)) == 400
    stats = bus.stats()
    assert stats.published == stats.delivered == 400 and drained(bus)


def test_messages_a_batch_subscriber_never_reads_keep_exact_counters(Bus):
    bus = Bus(blocks_per_class=300)
    last, seen = [], []

    def newest(batch):
        last.append((len(batch), batch[-1].seq, batch[-1].tobytes()))

    bus.subscribe("t", newest, batch=True)
    bus.subscribe("t", lambda batch: seen.append([m.seq for m in batch[:3]]), batch=True)
    data = payloads(200)
    assert bus.publish_many("t", data) == 200
    first = seen[0][0]
    assert last == [(200, first + 199, data[-1])] and seen == [[first, first + 1, first + 2]]
    stats = bus.stats()
    assert stats.published == 200 and stats.delivered == 400
    assert bus.latency.summary().count == 400
    assert drained(bus)


def test_batch_messages_read_in_any_order_are_the_ones_published(Bus):
    bus = Bus(blocks_per_class=100)
    got, kept = {}, []

    def handler(batch):
        for i in (7, 0, 63, 64, 99, 7, -1):
            msg = batch[i]
            got.setdefault(i % len(batch), (msg.seq, msg.tobytes(), msg.publish_ns))
            assert msg is batch[i] and msg in batch
        kept.append(batch[50].retain())
        kept.append(batch[51])                 # not retained: released with the batch

    bus.subscribe("t", handler, batch=True)
    data = payloads(100, 24)
    stamps = [1000 + i for i in range(100)]
    bus.publish_many_at("t", data, stamps)
    base = got[0][0]
    assert got == {i: (base + i, data[i], stamps[i]) for i in (0, 7, 63, 64, 99)}
    assert kept[0].tobytes() == data[50] and kept[0].seq == base + 50
    with pytest.raises(MessageReleased):
        kept[1].tobytes()
    assert bus.allocator.in_use == 1
    kept.pop(0).release()
    kept.clear()
    assert drained(bus)


def test_a_batch_subscriber_may_stop_iterating_early(Bus):
    bus = Bus(blocks_per_class=80)
    firsts = []

    def handler(batch):
        for msg in batch:
            firsts.append(msg.tobytes())
            break
        assert [m.tobytes() for m in batch[::20]] == payloads(70)[::20]

    bus.subscribe("t", handler, batch=True)
    bus.publish_many("t", payloads(70))
    bus.publish_many("t", payloads(70))
    assert firsts == [payloads(1)[0]] * 2
    assert drained(bus)


def test_subscribers_changing_how_much_they_read_get_every_message_right(Bus):
    bus = Bus(blocks_per_class=64)
    mode, seen = ["all"], []

    def handler(batch):
        if mode[0] == "all":
            seen.extend((m.seq, m.tobytes()) for m in batch)
        else:
            seen.append((batch[-1].seq, batch[-1].tobytes()))

    bus.subscribe("t", handler, batch=True)
    expected, seq = [], 0
    for call in range(200):                 # whole batches, then only the newest, ...
        mode[0] = "all" if (call // 70) % 2 == 0 else "last"
        data = [bytes([call % 256, i]) * 4 for i in range(16)]
        bus.publish_many("t", data)
        seqs = range(seq + 1, seq + 17)
        seq += 16
        if mode[0] == "all":
            expected.extend(zip(seqs, data, strict=True))
        else:
            expected.append((seqs[-1], data[-1]))
        assert drained(bus)
    first = seen[0][0] - 1
    assert [(s - first, d) for s, d in seen] == expected
    assert bus.stats().published == bus.stats().delivered == 3200
