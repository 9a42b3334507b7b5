"""Hypothesis state machines for the message bus and the frame allocator.

Random interleavings of publish / claim+commit / abort, subscribe / unsubscribe,
retain / release / double release, payload views kept past the callback, exhaustion
under both policies, close; and for frames: arrays, zeros, blocks, views, releases,
swaps under the strict and detach leak policies. After every step: every retained
message, kept view and live frame array still holds the bytes last written, dead
handles refuse use with their specific exception, live memory never overlaps, and the
counters equal the model's. (test_core_stateful.py does the same for Pool, Slab, Arena.)
Long run: HYPOTHESIS_PROFILE=long.
"""

from __future__ import annotations

import gc
import itertools
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule
from reference_core import BUS_CORES

from coreallocs import BlocksStillLive, DoubleRelease, UseAfterRelease

hft = pytest.importorskip("hftalloc")
framealloc = pytest.importorskip("framealloc")

BusFull, BusClosed, MessageReleased, NotRetained, NotSubscribed, SizeTooLarge = (
    hft.BusFull, hft.BusClosed, hft.MessageReleased, hft.NotRetained, hft.NotSubscribed,
    hft.SizeTooLarge)
FrameLeakError, StaleFrameError = framealloc.FrameLeakError, framealloc.StaleFrameError

CURSORS = [False] + ([True] if framealloc.compiled_cursor_available() else [])

TOPICS = ["md.a", "md.b", "ord.a"]
PATTERNS = ["md.a", "md.*", "md.>", "*.a", ">", "ord.a"]
BEHAVIOURS = ["read", "retain", "retain", "keep_view", "keep_view", "fail", "keep_dead"]
SIZES = [0, 1, 64, 65, 200, 8192, 8193]  # mostly the 64 B class: exhaustion comes quickly
PER_CLASS = 2


def size_class(n: int) -> int:
    return max(64, 1 << (max(n, 1) - 1).bit_length())


def matches(pattern: str, topic: str) -> bool:
    pat, parts = pattern.split("."), topic.split(".")
    for i, want in enumerate(pat):
        if want == ">":
            return len(parts) > i
        if i >= len(parts) or want not in ("*", parts[i]):
            return False
    return len(parts) == len(pat)


@dataclass
class Sent:
    """A committed message as the model sees it."""

    content: bytes
    cls: int
    msg: Any = None  # captured only by retaining / watching subscribers
    refs: int = 0
    watched: bool = False  # a subscriber kept the message object without retaining it
    views: list[Any] = field(default_factory=list)  # payload views kept past the callback


class BusMachine(RuleBasedStateMachine):
    """MessageBus (sync mode) against a model of blocks, references and counters."""

    @initialize(core=st.sampled_from(BUS_CORES), policy=st.sampled_from(["raise", "drop"]),
                first=st.sampled_from(BEHAVIOURS))
    def make_bus(self, core: Any, policy: str, first: str) -> None:
        self.bus = core(blocks_per_class=PER_CLASS, policy=policy,
                        on_error=lambda exc, msg, sub: None)
        self.policy = policy
        self.subs: dict[int, tuple[Any, str, str]] = {}  # id -> (subscription, pattern, how)
        self.sent: list[Sent] = []  # messages whose block is still held
        self.dead: list[tuple[Any, bytes]] = []  # message objects that must stay dead
        self.closed = False
        self.counter = 0
        self.expected = dict(published=0, delivered=0, dropped=0, rejected=0, errors=0,
                             aborted=0)
        self.current: Sent | None = None
        self.subscribe(">", first)  # start with a listener on everything

    # -- helpers ----------------------------------------------------------------------------
    def _payload(self, n: int) -> bytes:
        self.counter += 1
        return bytes((self.counter * 7 + i) % 256 for i in range(n))

    def _held(self, cls: int | None = None) -> int:
        return sum(1 for s in self.sent if (s.refs or s.views) and cls in (None, s.cls))

    def _routed(self, topic: str) -> bool:
        return any(matches(pattern, topic) for _, pattern, _ in self.subs.values())

    def _subscriber(self, how: str) -> Any:
        def callback(msg: Any) -> None:
            sent = self.current
            assert sent is not None and msg.tobytes() == sent.content
            if how == "retain":
                sent.msg = msg.retain()
                sent.refs += 1
            elif how == "keep_view":
                sent.views.append(msg.payload[:])
            elif how == "keep_dead":
                sent.msg, sent.watched = msg, True
            elif how == "fail":
                raise RuntimeError("subscriber failure (expected by the model)")
        return callback

    def _dispatch(self, topic: str, content: bytes, send: Any) -> None:
        """Run `send()` (a publish or commit on a routed topic) and update the model."""
        listeners = [how for _, pattern, how in self.subs.values() if matches(pattern, topic)]
        self.current = sent = Sent(content, size_class(len(content)))
        send()
        self.current = None
        self.expected["published"] += 1
        self.expected["delivered"] += sum(how != "fail" for how in listeners)
        self.expected["errors"] += listeners.count("fail")
        if sent.watched and not sent.refs:
            self.dead.append((sent.msg, content))
        self.sent.append(sent)

    # -- rules ---------------------------------------------------------------------------
    @precondition(lambda self: not self.closed)
    @rule(pattern=st.sampled_from(PATTERNS), how=st.sampled_from(BEHAVIOURS))
    def subscribe(self, pattern: str, how: str) -> None:
        sub = self.bus.subscribe(pattern, self._subscriber(how))
        self.subs[sub.id] = (sub, pattern, how)

    @precondition(lambda self: self.subs)
    @rule(data=st.data())
    def unsubscribe(self, data: st.DataObject) -> None:
        key = data.draw(st.sampled_from(sorted(self.subs)))
        sub = self.subs.pop(key)[0]
        self.bus.unsubscribe(sub)
        with pytest.raises(NotSubscribed):
            self.bus.unsubscribe(sub)

    @rule(topic=st.sampled_from(TOPICS), n=st.sampled_from(SIZES))
    def publish(self, topic: str, n: int) -> None:
        content = self._payload(n)
        if self.closed:
            with pytest.raises(BusClosed):
                self.bus.publish(topic, content)
            return
        if not self._routed(topic):  # nobody listens: counted, no block taken
            self.bus.publish(topic, content)
            self.expected["published"] += 1
            return
        if n > 8192:
            with pytest.raises(SizeTooLarge):
                self.bus.publish(topic, content)
            self.expected["rejected"] += 1
            return
        if self._held(size_class(n)) >= PER_CLASS:
            if self.policy == "drop":
                assert self.bus.publish(topic, content) is None
                self.expected["dropped"] += 1
            else:
                with pytest.raises(BusFull):
                    self.bus.publish(topic, content)
                self.expected["rejected"] += 1
            return
        self._dispatch(topic, content, lambda: self.bus.publish(topic, content))

    @precondition(lambda self: not self.closed)
    @rule(topic=st.sampled_from(TOPICS), n=st.sampled_from(SIZES[:-1]), commit=st.booleans())
    def claim_then_commit_or_abort(self, topic: str, n: int, commit: bool) -> None:
        if self._held(size_class(n)) >= PER_CLASS:
            return  # exhaustion is exercised by publish
        msg = self.bus.claim(topic, n)
        content = self._payload(n)
        msg.buffer[:] = content
        if not commit:
            msg.abort()
            self.expected["aborted"] += 1
            self.dead.append((msg, content))
        elif not self._routed(topic):
            msg.commit()
            self.expected["published"] += 1
            self.dead.append((msg, content))
        else:
            self._dispatch(topic, content, msg.commit)

    @precondition(lambda self: any(s.refs for s in self.sent))
    @rule(data=st.data())
    def release_retained(self, data: st.DataObject) -> None:
        sent = data.draw(st.sampled_from([s for s in self.sent if s.refs]))
        assert sent.msg.tobytes() == sent.content
        sent.msg.release()
        sent.refs -= 1
        if not sent.refs:
            with pytest.raises(NotRetained):
                sent.msg.release()  # one release too many
            self.dead.append((sent.msg, sent.content))

    @precondition(lambda self: any(s.views for s in self.sent))
    @rule(data=st.data())
    def drop_view(self, data: st.DataObject) -> None:
        sent = data.draw(st.sampled_from([s for s in self.sent if s.views]))
        view = sent.views.pop()
        assert bytes(view) == sent.content
        view.release()

    @precondition(lambda self: not self.closed and self.expected["published"] >= 4)
    @rule()
    def close(self) -> None:
        if self._held():  # refused, but the bus stays closed to new messages
            with pytest.raises(BlocksStillLive):
                self.bus.close()
        else:
            self.bus.close()
        self.closed = True

    @precondition(lambda self: self.closed and not self._held())
    @rule()
    def close_again_once_everything_is_back(self) -> None:
        self.bus.close()
        assert self.bus.allocator.closed and self.bus.allocator.in_use == 0

    # -- invariants ----------------------------------------------------------------------
    @invariant()
    def kept_data_is_intact_and_dead_messages_refuse_use(self) -> None:
        for sent in self.sent:
            for view in sent.views:
                assert bytes(view) == sent.content
            if sent.refs:
                assert sent.msg.tobytes() == sent.content
        for msg, _ in self.dead[-6:]:
            with pytest.raises(MessageReleased):
                msg.tobytes()
            with pytest.raises(MessageReleased):
                msg.payload  # noqa: B018

    @invariant()
    def counters_and_pools_match_the_model(self) -> None:
        self.sent = [s for s in self.sent if s.refs or s.views]
        s = self.bus.stats()  # (sweeps blocks whose leaked views are gone)
        got = dict(published=s.published, delivered=s.delivered, dropped=s.dropped,
                   rejected=s.rejected, errors=s.errors, aborted=s.aborted)
        assert got == self.expected
        assert s.retained == sum(1 for x in self.sent if x.refs)
        assert self.bus.allocator.in_use == len(self.sent)
        for pool in s.pools:
            assert pool.in_use == sum(1 for x in self.sent if x.cls == pool.block_size)

    def teardown(self) -> None:
        for sent in self.sent:
            sent.views.clear()
        self.sent.clear()
        self.dead.clear()
        gc.collect()


TestBusMachine = BusMachine.TestCase


# -- frame allocator ---------------------------------------------------------------------------

FRAME_SIZE = 64 * 1024
MAX_PER_FRAME = 30  # x at most 512 B: never near the frame size (overflow: bad-input tests)


@dataclass
class Kept:
    """A frame allocation the model keeps alive: a numpy array, a block, or a block's view."""

    frame: int
    content: bytes
    array: Any = None
    block: Any = None
    view: Any = None
    released: bool = False
    detached: bool = False  # its buffer was reset under it with on_leak="detach"

    def exports(self) -> bool:
        """Does it reference frame memory? (empty arrays are not frame memory)"""
        return (self.array is not None and self.array.nbytes > 0) or self.view is not None

    def held(self) -> bool:
        return self.array is not None or self.view is not None

    def span(self) -> tuple[int, int] | None:
        if self.array is not None and self.array.nbytes:
            return self.array.ctypes.data, self.array.ctypes.data + self.array.nbytes
        if self.block is not None and not self.released and self.block.live:
            return self.block.address, self.block.address + len(self.block)
        return None


class FrameMachine(RuleBasedStateMachine):
    """FrameAllocator: arrays/blocks/views across swaps vs a model of frame lifetimes."""

    @initialize(compiled=st.sampled_from(CURSORS), buffers=st.sampled_from([1, 2, 3]),
                on_leak=st.sampled_from(["strict", "detach"]), debug=st.booleans())
    def make_allocator(self, compiled: bool, buffers: int, on_leak: str, debug: bool) -> None:
        self.frames = framealloc.FrameAllocator(FRAME_SIZE, buffers=buffers, on_leak=on_leak,
                                                debug=debug, compiled=compiled, prefault=False)
        self.buffers, self.on_leak = buffers, on_leak
        self.frame = 0
        self.count = 0  # allocations of the current frame
        self.leaks = 0
        self.kept: list[Kept] = []
        self.counter = 0

    def _pattern(self, n: int) -> bytes:
        self.counter += 1
        return bytes((self.counter * 13 + i) % 251 for i in range(n))

    def _expired(self, frame: int) -> bool:
        """Has the buffer of `frame` been reset since (its handles are stale)?"""
        return frame <= self.frame - self.buffers

    # -- rules ---------------------------------------------------------------------------
    @precondition(lambda self: self.count < MAX_PER_FRAME)
    @rule(n=st.integers(0, 64), dtype=st.sampled_from(["u1", "f4", "f8", "i2"]),
          zeros=st.booleans(), keep=st.booleans(), align=st.sampled_from([16, 16, 32, 64, 128]))
    def new_array(self, n: int, dtype: str, zeros: bool, keep: bool, align: int) -> None:
        arr = (self.frames.zeros if zeros else self.frames.array)(n, dtype, align)
        self.count += 1
        assert arr.shape == (n,) and arr.dtype == np.dtype(dtype)
        assert arr.flags.writeable and arr.flags.c_contiguous
        if arr.nbytes:  # (recycled array objects included: fresh memory, aligned)
            assert arr.ctypes.data % align == 0
        raw = arr.view(np.uint8)
        if zeros:
            assert not raw.any()
        content = self._pattern(arr.nbytes)
        raw[:] = np.frombuffer(content, np.uint8)
        if keep:
            self.kept.append(Kept(self.frame, content, array=arr))

    @precondition(lambda self: self.count + 4 <= MAX_PER_FRAME)
    @rule(k=st.integers(0, 4), n=st.integers(0, 64), dtype=st.sampled_from(["u1", "f8"]),
          keep=st.booleans())
    def new_arrays(self, k: int, n: int, dtype: str, keep: bool) -> None:
        batch = self.frames.arrays(k, n, dtype)
        self.count += k
        assert len(batch) == k
        for arr in batch:
            assert arr.shape == (n,) and arr.dtype == np.dtype(dtype)
            content = self._pattern(arr.nbytes)
            arr.view(np.uint8)[:] = np.frombuffer(content, np.uint8)
            if keep:
                self.kept.append(Kept(self.frame, content, array=arr))

    @precondition(lambda self: any(k.array is not None and k.array.nbytes for k in self.kept))
    @rule(data=st.data(), how=st.sampled_from(["shape", "dtype", "readonly"]))
    def alter_kept_array(self, data: st.DataObject, how: str) -> None:
        """Change a held array in place (the cursor may later see it free in its table)."""
        kept = data.draw(st.sampled_from([k for k in self.kept
                                          if k.array is not None and k.array.nbytes]))
        arr = kept.array
        if how == "shape":
            arr.shape = (1, arr.size)
        elif how == "dtype":
            arr.dtype = np.uint8
        else:
            arr.flags.writeable = False

    @precondition(lambda self: self.count < MAX_PER_FRAME)
    @rule(size=st.integers(1, 512), align=st.sampled_from([1, 8, 16, 64, 256]))
    def new_block(self, size: int, align: int) -> None:
        blk = self.frames.allocate(size, align)
        self.count += 1
        assert len(blk) == size and blk.address % align == 0
        content = self._pattern(size)
        memoryview(blk)[:] = content
        self.kept.append(Kept(self.frame, content, block=blk))

    @precondition(lambda self: any(k.block is not None and k.view is None and not k.released
                                   and not self._expired(k.frame) for k in self.kept))
    @rule(data=st.data())
    def view_block(self, data: st.DataObject) -> None:
        kept = data.draw(st.sampled_from([k for k in self.kept if k.block is not None
                                          and k.view is None and not k.released
                                          and not self._expired(k.frame)]))
        kept.view = memoryview(kept.block)

    @precondition(lambda self: any(k.held() for k in self.kept))
    @rule(data=st.data())
    def drop_array_or_view(self, data: st.DataObject) -> None:
        kept = data.draw(st.sampled_from([k for k in self.kept if k.held()]))
        if kept.view is not None:
            kept.view.release()
            kept.view = None
        else:
            kept.array = None

    @precondition(lambda self: any(k.block is not None and k.view is None and not k.released
                                   for k in self.kept))
    @rule(data=st.data())
    def release_block(self, data: st.DataObject) -> None:
        kept = data.draw(st.sampled_from([k for k in self.kept if k.block is not None
                                          and k.view is None and not k.released]))
        if self._expired(kept.frame):
            with pytest.raises(StaleFrameError):
                kept.block.release()
            return
        kept.block.release()
        kept.released = True
        with pytest.raises(DoubleRelease):
            kept.block.release()

    @rule()
    def swap(self) -> None:
        # the buffer to reset served frame self.frame + 1 - buffers
        target = self.frame + 1 - self.buffers
        leaking = [k for k in self.kept if k.frame == target and k.exports() and not k.detached]
        if leaking and self.on_leak == "strict":
            with pytest.raises(FrameLeakError):
                self.frames.swap()
            return
        assert self.frames.swap() == self.frame + 1
        self.frame += 1
        self.count = 0
        if leaking:
            self.leaks += 1
            for k in leaking:
                k.detached = True

    # -- invariants ----------------------------------------------------------------------
    @invariant()
    def live_data_is_intact_and_stale_handles_refuse_use(self) -> None:
        for k in self.kept:
            if k.array is not None:
                assert k.array.tobytes() == k.content  # arrays are never reset under
            if k.view is not None:
                assert k.view.tobytes() == k.content
            if k.block is None:
                continue
            if k.released:
                with pytest.raises(UseAfterRelease):
                    k.block.tobytes()
            elif self._expired(k.frame):
                with pytest.raises(StaleFrameError):
                    k.block.tobytes()
            else:
                assert k.block.tobytes() == k.content

    @invariant()
    def live_memory_never_overlaps(self) -> None:
        spans = sorted(s for s in (k.span() for k in self.kept) if s is not None)
        for (_, end), (start, _) in itertools.pairwise(spans):
            assert end <= start

    @invariant()
    def counters_match_the_model(self) -> None:
        s = self.frames.stats
        assert (s.frame, s.allocations, s.leaks) == (self.frame, self.count, self.leaks)
        assert s.bytes_used <= FRAME_SIZE and s.overflows == 0

    def teardown(self) -> None:
        self.kept.clear()
        gc.collect()


TestFrameMachine = FrameMachine.TestCase


@pytest.mark.parametrize("compiled", CURSORS, ids=lambda c: "compiled" if c else "python")
def test_refused_single_buffer_swaps_do_not_eat_the_frame(compiled: bool) -> None:
    frames = framealloc.FrameAllocator(64 * 1024, buffers=1, compiled=compiled, prefault=False)
    kept = frames.array(48, "u1")
    for _ in range(40):
        with pytest.raises(FrameLeakError):
            frames.swap()
        frames.array(8, "u1")
    assert kept.nbytes == 48 and frames.stats.bytes_used < 4096
