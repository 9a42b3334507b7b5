"""Hypothesis state machines: random allocate/write/read/release/reset sequences vs a model.

Invariants after every step: live blocks never overlap, each live block still holds the
pattern last written to it, stats equal the model's, every illegal step raised its error.
Run longer with HYPOTHESIS_PROFILE=long.
"""

import itertools

import numpy as np
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from coreallocs import (
    Arena,
    ArenaOverflow,
    BufferStillExported,
    DoubleRelease,
    Pool,
    PoolExhausted,
    SlabAllocator,
    StaleHandle,
    UseAfterRelease,
)


class _BlocksModel(RuleBasedStateMachine):
    """Shared bookkeeping: live blocks with their expected bytes, dead handles, views."""

    def __init__(self):
        super().__init__()
        self.live = {}  # key (allocation number) -> (block, expected bytes)
        self.dead = []
        self.views = {}  # key -> memoryview
        self.counter = 0
        self.serial = 0

    def _pattern(self, size):
        self.counter += 1
        return bytes((self.counter + i) % 251 for i in range(size))

    def _adopt(self, blk):
        pattern = self._pattern(len(blk))
        memoryview(blk)[:] = pattern
        self.serial += 1
        self.live[self.serial] = (blk, pattern)

    def _some_live(self, data):
        return data.draw(st.sampled_from(sorted(self.live)))

    @invariant()
    def live_blocks_hold_their_pattern_and_never_overlap(self):
        spans = []
        for blk, pattern in self.live.values():
            assert blk.live
            assert blk.tobytes() == pattern
            spans.append((blk.address, blk.address + len(blk)))
        spans.sort()
        for (_, end), (start, _) in itertools.pairwise(spans):
            assert end <= start

    @invariant()
    def dead_handles_refuse_use(self):
        for blk in self.dead[-5:]:
            assert not blk.live
            try:
                blk.tobytes()
            except UseAfterRelease:
                pass
            else:
                raise AssertionError("a dead handle returned data")


class PoolMachine(_BlocksModel):
    CAPACITY = 6

    def __init__(self):
        super().__init__()
        self.pool = Pool(24, self.CAPACITY, align=8)
        self.allocs = self.releases = self.failures = 0
        self.high_water = 0

    @rule()
    def allocate(self):
        if len(self.live) == self.CAPACITY:
            try:
                self.pool.allocate()
            except PoolExhausted:
                self.failures += 1
                return
            raise AssertionError("allocate succeeded on a full pool")
        self._adopt(self.pool.allocate())
        self.allocs += 1
        self.high_water = max(self.high_water, len(self.live))

    @precondition(lambda self: self.live)
    @rule(data=st.data())
    def rewrite(self, data):
        key = self._some_live(data)
        blk, _ = self.live[key]
        pattern = self._pattern(len(blk))
        memoryview(blk)[:] = pattern
        self.live[key] = (blk, pattern)

    @precondition(lambda self: self.live)
    @rule(data=st.data())
    def export_view(self, data):
        key = self._some_live(data)
        self.views.setdefault(key, memoryview(self.live[key][0]))

    @precondition(lambda self: self.views)
    @rule(data=st.data())
    def drop_view(self, data):
        key = data.draw(st.sampled_from(sorted(self.views)))
        self.views.pop(key).release()

    @precondition(lambda self: self.live)
    @rule(data=st.data(), via_pool=st.booleans())
    def release(self, data, via_pool):
        key = self._some_live(data)
        blk, _ = self.live[key]
        if key in self.views:
            try:
                self.pool.release(blk) if via_pool else blk.release()
            except BufferStillExported:
                return
            raise AssertionError("released a block with an exported view")
        self.pool.release(blk) if via_pool else blk.release()
        del self.live[key]
        self.dead.append(blk)
        self.releases += 1

    @precondition(lambda self: self.dead)
    @rule(data=st.data())
    def double_release(self, data):
        blk = data.draw(st.sampled_from(self.dead))
        try:
            blk.release()
        except DoubleRelease:
            return
        raise AssertionError("double release was accepted")

    @invariant()
    def stats_match_model(self):
        s = self.pool.stats
        assert s.in_use == len(self.live)
        assert (s.allocations, s.releases, s.failures) == (
            self.allocs,
            self.releases,
            self.failures,
        )
        assert s.high_water == self.high_water
        assert s.bytes_requested == 24 * len(self.live)

    def teardown(self):
        for view in self.views.values():
            view.release()


class SlabMachine(_BlocksModel):
    def __init__(self):
        super().__init__()
        self.slab = SlabAllocator(
            min_size=8, max_size=256, blocks_per_class=4, grow=False, fallback="system"
        )

    @rule(size=st.integers(1, 600))
    def allocate(self, size):
        klass = max(8, 1 << (size - 1).bit_length())
        in_class = sum(1 for b, _ in self.live.values() if b.reserved == klass and b.kind == "pool")
        if size <= 256 and in_class == 4:
            assert self.slab.try_allocate(size) is None
            return
        blk = self.slab.allocate(size)
        assert len(blk) == size
        assert blk.reserved == (klass if size <= 256 else size)
        assert blk.kind == ("pool" if size <= 256 else "system")
        self._adopt(blk)

    @precondition(lambda self: self.live)
    @rule(data=st.data())
    def release(self, data):
        key = self._some_live(data)
        blk, _ = self.live.pop(key)
        self.slab.release(blk)
        self.dead.append(blk)

    @invariant()
    def stats_match_model(self):
        s = self.slab.stats
        assert s.in_use == len(self.live) == self.slab.in_use
        assert s.bytes_requested == sum(len(b) for b, _ in self.live.values())


class ArenaMachine(_BlocksModel):
    CAPACITY = 512

    def __init__(self):
        super().__init__()
        self.arena = Arena(self.CAPACITY)
        self.offset = 0
        self.marks = []  # (mark, offset, live keys at the time)

    @rule(size=st.integers(1, 100), align_log=st.integers(0, 6))
    def allocate(self, size, align_log):
        align = 1 << align_log
        start = -(-self.offset // align) * align
        if start + size > self.CAPACITY:
            try:
                self.arena.allocate(size, align=align)
            except ArenaOverflow:
                return
            raise AssertionError("arena overflowed silently")
        blk = self.arena.allocate(size, align=align)
        assert blk.offset == start and blk.address % align == 0
        self.offset = start + size
        self._adopt(blk)

    @rule()
    def mark(self):
        self.marks.append((self.arena.mark(), self.offset, set(self.live)))

    @precondition(lambda self: self.marks)
    @rule(data=st.data())
    def rewind(self, data):
        i = data.draw(st.integers(0, len(self.marks) - 1))
        mark, offset, keys = self.marks[i]
        doomed = [k for k in self.live if k not in keys]
        if any(k in self.views for k in doomed):
            try:
                self.arena.rewind(mark)
            except BufferStillExported:
                return
            raise AssertionError("rewound under an exported view")
        self.arena.rewind(mark)
        del self.marks[i + 1 :]
        for k in doomed:
            self.dead.append(self.live.pop(k)[0])
        self.offset = offset

    @precondition(lambda self: self.live)
    @rule(data=st.data())
    def export_view(self, data):
        key = self._some_live(data)
        self.views.setdefault(key, memoryview(self.live[key][0]))

    @precondition(lambda self: self.views)
    @rule(data=st.data())
    def drop_view(self, data):
        key = data.draw(st.sampled_from(sorted(self.views)))
        self.views.pop(key).release()

    @rule(detach=st.booleans())
    def reset(self, detach):
        if self.views and not detach:
            try:
                self.arena.reset()
            except BufferStillExported:
                return
            raise AssertionError("reset under an exported view")
        old_views = list(self.views.items())
        self.arena.reset(on_exported="detach" if detach else "raise")
        for key, view in old_views:  # detached views keep their bytes
            assert bytes(view) == self.live[key][1]
            view.release()
        self.views.clear()
        self.dead.extend(b for b, _ in self.live.values())
        self.live.clear()
        self.marks.clear()
        self.offset = 0

    @precondition(lambda self: self.dead)
    @rule(data=st.data())
    def stale_use_raises(self, data):
        blk = data.draw(st.sampled_from(self.dead))
        try:
            np.frombuffer(blk, dtype=np.uint8)
        except StaleHandle:
            return
        raise AssertionError("a stale arena handle exported memory")

    @invariant()
    def usage_matches_model(self):
        assert self.arena.used == self.offset

    def teardown(self):
        for view in self.views.values():
            view.release()


TestPoolMachine = PoolMachine.TestCase
TestSlabMachine = SlabMachine.TestCase
TestArenaMachine = ArenaMachine.TestCase
