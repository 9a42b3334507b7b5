"""Several Python threads on one allocator at once, with invariants checked afterwards.

Every block is stamped with (thread, sequence) when handed out and verified before it
is released: a block handed out twice would be overwritten by its second owner. A shared
register of live addresses catches the same thing directly. Afterwards the counters must
balance (allocations == releases + in_use, failures == refusals seen) and nothing may be
lost. The switch interval is cut to microseconds so threads interleave inside loops.
test_capi.py covers nogil C threads alone; here they also run against Python threads.
"""

from __future__ import annotations

import gc
import queue
import random
import struct
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import capi_demo
import pytest
from reference_core import BUS_CORES, core_id

from coreallocs import (
    Arena,
    BufferStillExported,
    Pool,
    SlabAllocator,
    StaleHandle,
    UseAfterRelease,
)

STAMP = struct.Struct("<IIQ")  # thread, sequence, address
THREADS = 4
JOIN_TIMEOUT = 60


@contextmanager
def fast_switching() -> Iterator[None]:
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        yield
    finally:
        sys.setswitchinterval(old)


def run_threads(target: Callable[..., None], args: list[tuple[Any, ...]]) -> list[BaseException]:
    """Run target(*a) for each a in its own thread; return the exceptions they raised."""
    errors: list[BaseException] = []
    start_together = threading.Barrier(len(args))

    def guarded(*a: Any) -> None:
        try:
            start_together.wait(JOIN_TIMEOUT)
            target(*a)
        except BaseException as exc:  # reported to the test thread
            errors.append(exc)

    threads = [threading.Thread(target=guarded, args=a) for a in args]
    with fast_switching():
        for t in threads:
            t.start()
        for t in threads:
            t.join(JOIN_TIMEOUT)
    assert not any(t.is_alive() for t in threads), "a worker thread hung"
    return errors


@dataclass
class Register:
    """Addresses currently handed out, across all threads."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    live: dict[int, tuple[int, int]] = field(default_factory=dict)
    taken: int = 0
    refused: int = 0
    returned: int = 0

    def take(self, address: int, owner: tuple[int, int]) -> None:
        with self.lock:
            assert address not in self.live, f"{address:#x} to {owner} and {self.live[address]}"
            self.live[address] = owner
            self.taken += 1

    def give(self, address: int) -> None:
        with self.lock:
            del self.live[address]
            self.returned += 1

    def refuse(self) -> None:
        with self.lock:
            self.refused += 1


def stamp(blk: Any, thread: int, seq: int) -> None:
    STAMP.pack_into(blk, 0, thread, seq, blk.address)
    if len(blk) > STAMP.size:
        memoryview(blk)[STAMP.size:] = bytes([(thread * 31 + seq) % 256]) * (len(blk) - STAMP.size)


def verify(blk: Any, thread: int, seq: int) -> None:
    data = blk.tobytes()
    assert STAMP.unpack_from(data) == (thread, seq, blk.address), "overwritten by another owner"
    tail = data[STAMP.size:]
    assert tail == bytes([(thread * 31 + seq) % 256]) * len(tail)


def churn(allocate: Callable[[], Any], register: Register, thread: int, rounds: int,
          batch: int, seed: int) -> None:
    """Allocate a batch, stamp, verify, release in random order; repeat."""
    rng = random.Random(seed)
    seq = 0
    for _ in range(rounds):
        held = []
        for _ in range(rng.randint(1, batch)):
            blk = allocate()
            if blk is None:
                register.refuse()
                continue
            seq += 1
            register.take(blk.address, (thread, seq))
            stamp(blk, thread, seq)
            held.append((blk, seq))
        rng.shuffle(held)
        for blk, s in held:
            verify(blk, thread, s)
            register.give(blk.address)
            blk.release()


def check_balanced(stats: Any, register: Register) -> None:
    assert register.live == {}
    assert stats.in_use == 0
    assert stats.allocations == stats.releases == register.taken == register.returned
    assert stats.failures == register.refused
    assert stats.bytes_requested == 0


# -- Pool / SlabAllocator from Python threads --------------------------------------------------

def hold_together(allocate: Callable[[], Any], register: Register, thread: int, count: int,
                  together: threading.Barrier) -> None:
    """Take ``count`` blocks, wait until every thread holds its own, then give them back:
    the threads overlap for certain, whatever the scheduler does."""
    held = []
    for seq in range(count):
        blk = allocate()
        if blk is None:
            register.refuse()
            continue
        mark = 1_000_000 + seq  # above every sequence number churn() uses
        register.take(blk.address, (thread, mark))
        stamp(blk, thread, mark)
        held.append((blk, mark))
    together.wait(JOIN_TIMEOUT)
    for blk, seq in held:
        verify(blk, thread, seq)
        register.give(blk.address)
        blk.release()


@pytest.mark.parametrize("grow", [False, True])
def test_threads_share_one_pool_without_handing_a_block_out_twice(grow: bool) -> None:
    pool = Pool(40, 12, grow=grow)  # fewer blocks than threads x batch: contention + refusals
    register = Register()
    together = threading.Barrier(THREADS)

    def overlap_then_churn(thread: int) -> None:
        hold_together(pool.try_allocate, register, thread, 3, together)  # 4 x 3 = capacity
        churn(pool.try_allocate, register, thread, 150, 10, thread)

    errors = run_threads(overlap_then_churn, [(t,) for t in range(THREADS)])
    assert errors == []
    check_balanced(pool.stats, register)
    assert pool.stats.high_water <= pool.capacity
    assert pool.stats.high_water > 10 or register.refused  # the threads really overlapped
    if not grow:
        assert pool.capacity == 12


def test_threads_share_one_slab_allocator_across_classes_and_fallback() -> None:
    slab = SlabAllocator(16, 512, 8, grow=False, fallback="system")
    register = Register()
    sizes = [16, 24, 100, 128, 300, 512, 513, 2000]  # 513 and 2000 use the system fallback

    def worker(thread: int) -> None:
        rng = random.Random(thread)
        churn(lambda: slab.try_allocate(rng.choice(sizes)), register, thread, 120, 12, thread)

    assert run_threads(worker, [(t,) for t in range(THREADS)]) == []
    check_balanced(slab.stats, register)
    assert slab.in_use == 0
    assert sum(r.in_use for r in slab.class_stats()) == 0


def test_blocks_released_by_another_thread_than_their_allocator() -> None:
    pool = Pool(32, 16)  # small: producers wait for consumers to give blocks back
    handoff: queue.Queue[Any] = queue.Queue()
    per_producer = 300
    seen: list[tuple[int, int]] = []
    waits = [0]

    def producer(thread: int) -> None:
        for seq in range(per_producer):
            blk = pool.try_allocate()
            while blk is None:
                waits[0] += 1
                threading.Event().wait(0.0001)
                blk = pool.try_allocate()
            stamp(blk, thread, seq)
            handoff.put((blk, thread, seq))

    def consumer() -> None:
        while (item := handoff.get(timeout=JOIN_TIMEOUT)) is not None:
            blk, thread, seq = item
            verify(blk, thread, seq)
            seen.append((thread, seq))
            blk.release()

    consumers = [threading.Thread(target=consumer) for _ in range(2)]
    with fast_switching():
        for c in consumers:
            c.start()
        errors = run_threads(producer, [(t,) for t in range(2)])
        for _ in consumers:
            handoff.put(None)
        for c in consumers:
            c.join(JOIN_TIMEOUT)
    assert errors == [] and not any(c.is_alive() for c in consumers)
    assert sorted(seen) == [(t, s) for t in range(2) for s in range(per_producer)]
    s = pool.stats
    assert s.in_use == 0 and s.allocations == s.releases == 2 * per_producer
    assert s.failures == waits[0]


def test_gc_safety_net_from_several_threads_balances_the_pool() -> None:
    pool = Pool(16, 256)
    created = [0] * THREADS

    def worker(thread: int) -> None:
        rng = random.Random(thread)
        for _ in range(200):
            blocks = [pool.try_allocate() for _ in range(rng.randint(1, 8))]
            created[thread] += sum(b is not None for b in blocks)
            keep = blocks[: rng.randint(0, len(blocks))]
            for b in keep:
                if b is not None:
                    b.release()
            del blocks, keep  # the rest go back through the dealloc safety net
            if rng.random() < 0.05:
                gc.collect()

    assert run_threads(worker, [(t,) for t in range(THREADS)]) == []
    gc.collect()
    s = pool.stats
    assert s.in_use == 0 and s.allocations == s.releases == sum(created)


# -- Python threads and nogil C threads on the same pool ---------------------------------------

@pytest.mark.parametrize("make", [lambda: Pool(64, 96), lambda: SlabAllocator(blocks_per_class=96)])
def test_python_threads_and_nogil_c_threads_share_an_allocator(make: Callable[[], Any]) -> None:
    capi = capi_demo.load()
    allocator = make()
    register = Register()
    c_errors: list[int] = []
    is_pool = isinstance(allocator, Pool)
    allocate = allocator.try_allocate if is_pool else (lambda: allocator.try_allocate(64))

    def c_worker(tag: int) -> None:
        c_errors.append(capi.hammer(allocator, 200, 16, 100 + tag))

    def py_worker(thread: int) -> None:
        churn(allocate, register, thread, 150, 8, thread)

    args = [(c_worker, t) for t in range(2)] + [(py_worker, t) for t in range(2)]
    assert run_threads(lambda fn, t: fn(t), args) == []
    assert c_errors == [0, 0]
    s = allocator.stats
    assert s.in_use == 0 and register.live == {}
    assert s.allocations == s.releases
    # every attempt is accounted for: C attempts = C successes + C refusals (NULL)
    c_attempts = 2 * 200 * 16
    c_successes = s.allocations - register.taken
    assert 0 <= c_successes <= c_attempts
    assert s.failures == register.refused + (c_attempts - c_successes)


# -- Arena: threads never read memory a reset gave to someone else -----------------------------

def test_arena_threads_and_concurrent_resets_never_read_stale_data() -> None:
    arena = Arena(64 * 1024)
    stale_seen = [0] * THREADS
    refused_resets = [0]
    writers_left = [THREADS - 1]
    lock = threading.Lock()

    def writer(thread: int) -> None:
        rng = random.Random(thread)
        try:
            seq = -1
            deadline = time.monotonic() + JOIN_TIMEOUT / 2
            # at least 600 rounds, and on until the resetter has reset a few times
            while (seq := seq + 1) < 600 or (arena.stats.resets < 3
                                             and time.monotonic() < deadline):
                blk = arena.try_allocate(rng.randint(STAMP.size, 200), align=rng.choice([1, 8, 64]))
                if blk is None:
                    continue
                try:
                    stamp(blk, thread, seq)
                    verify(blk, thread, seq)  # StaleHandle if a reset came in between
                except StaleHandle:
                    stale_seen[thread] += 1
                    with pytest.raises(UseAfterRelease):
                        blk.tobytes()
        finally:
            with lock:
                writers_left[0] -= 1

    def resetter(_: int) -> None:
        while writers_left[0]:
            try:
                arena.reset()
            except BufferStillExported:  # a writer's memoryview is alive: refused, retried
                refused_resets[0] += 1
            threading.Event().wait(0.0002)

    args = [(writer, t) for t in range(THREADS - 1)] + [(resetter, 0)]
    assert run_threads(lambda fn, t: fn(t), args) == []
    assert arena.exported_blocks() == []
    arena.reset()
    assert arena.used == 0 and arena.stats.resets > 1


# -- MessageBus: publishers on several threads, messages released on another ------------------

@pytest.mark.parametrize("Bus", BUS_CORES, ids=core_id)
def test_bus_publishers_on_several_threads_lose_nothing(Bus: Any) -> None:
    bus = Bus(blocks_per_class=32, policy="drop")
    seen: list[tuple[int, int, int]] = []
    retained: queue.Queue[Any] = queue.Queue()
    per_thread = 400

    def subscriber(msg: Any) -> None:
        thread, seq = struct.unpack_from("<II", msg.payload)
        tail = bytes(msg.payload[8:])
        assert tail == bytes([thread]) * (seq % 300), "payload overwritten"
        seen.append((thread, seq, msg.seq))
        if seq % 7 == 0:  # keep some messages; another thread releases them
            retained.put((msg.retain(), msg.tobytes()))

    def publisher(thread: int) -> None:
        for seq in range(per_thread):
            payload = struct.pack("<II", thread, seq) + bytes([thread]) * (seq % 300)
            bus.publish(f"md.t{thread}", payload)

    def releaser() -> None:
        while (item := retained.get(timeout=JOIN_TIMEOUT)) is not None:
            msg, content = item
            assert msg.tobytes() == content, "retained message changed"
            msg.release()

    bus.subscribe("md.>", subscriber)
    release_thread = threading.Thread(target=releaser)
    with fast_switching():
        release_thread.start()
        errors = run_threads(publisher, [(t,) for t in range(THREADS)])
        retained.put(None)
        release_thread.join(JOIN_TIMEOUT)
    assert errors == [] and not release_thread.is_alive()
    s = bus.stats()
    attempts = THREADS * per_thread
    assert s.published + s.dropped == attempts  # nothing disappears without a count
    assert s.errors == 0  # the subscriber's own checks (the bus contains its exceptions)
    assert s.delivered == s.published == len(seen)
    assert len({bus_seq for _, _, bus_seq in seen}) == len(seen)  # sequence numbers unique
    assert s.retained == 0 and s.deferred == 0 and bus.allocator.in_use == 0
    bus.close()


# -- stats never hold an allocator's lock across Python code ---------------------------------

_STATS_RACE = """
import sys, threading
from coreallocs import Arena, Pool, SlabAllocator
sys.setswitchinterval(1e-6)
for alloc, take in ((Arena(1 << 16), lambda a: a.try_allocate(16)),
                    (Pool(64, 64), lambda a: a.try_allocate()),
                    (SlabAllocator(blocks_per_class=64), lambda a: a.try_allocate(64))):
    def reader():
        for _ in range(20000):
            alloc.stats
    def taker():
        for _ in range(20000):
            blk = take(alloc)
            if blk is not None and not isinstance(alloc, Arena):
                blk.release()
            elif isinstance(alloc, Arena) and blk is None:
                alloc.reset()
    threads = [threading.Thread(target=f) for f in (reader, reader, taker, taker)]
    for t in threads: t.start()
    for t in threads: t.join()
print("ok")
"""


def test_stats_and_allocations_on_threads_never_deadlock() -> None:
    # were stats to hold the spin lock across Python code, a thread switch inside it would
    # leave an allocating thread spinning with the GIL and the reader waiting for it: the
    # child would hang
    import subprocess
    done = subprocess.run([sys.executable, "-c", _STATS_RACE], capture_output=True, text=True,
                          timeout=240, check=False)
    assert (done.returncode, done.stdout.strip()) == (0, "ok"), done.stderr[-2000:]
