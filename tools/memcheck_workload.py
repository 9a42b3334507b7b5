"""A short, deterministic workload over every public allocator path, for memory checkers.

Meant to run under ``valgrind --tool=memcheck`` (tools/valgrind.sh) or with an ASan build
(tools/sanitize.sh): it allocates, writes, reads back, exports buffers, triggers every
misuse error the core defines, uses the GC safety net, arena detach/rewind, the slab's
system fallback, the nogil C API from threads, and (when present) the message bus and the
frame allocator. Each step checks its result, so a silent stale read fails here too.

``python3 tools/memcheck_workload.py [--rounds N]``; prints ``WORKLOAD OK`` at the end.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np

from coreallocs import (
    AllocatorClosed,
    Arena,
    ArenaOverflow,
    BlocksStillLive,
    BufferStillExported,
    DoubleRelease,
    ForeignBlock,
    InvalidMark,
    Pool,
    PoolExhausted,
    SizeTooLarge,
    SlabAllocator,
    StaleHandle,
    UseAfterRelease,
)


def expect(error: type[BaseException], action: Callable[[], object]) -> None:
    """Run `action` and insist it raises `error`."""
    try:
        action()
    except error:
        return
    raise AssertionError(f"{action} did not raise {error.__name__}")


def stamp(blk: object, seed: int) -> bytes:
    view = memoryview(blk)  # type: ignore[arg-type]
    pattern = bytes((seed + i) % 251 for i in range(len(view)))
    view[:] = pattern
    view.release()
    return pattern


def pool_paths(rounds: int) -> None:
    pool = Pool(40, 8, align=16)
    for r in range(rounds):
        blocks = [pool.allocate() for _ in range(8)]
        patterns = [stamp(b, r * 8 + i) for i, b in enumerate(blocks)]
        expect(PoolExhausted, pool.allocate)
        assert pool.try_allocate() is None
        for blk, pattern in zip(blocks, patterns, strict=True):
            assert blk.tobytes() == pattern
        arr = np.frombuffer(blocks[0], dtype=np.uint8)
        expect(BufferStillExported, blocks[0].release)
        assert arr[0] == patterns[0][0]
        del arr
        dead = blocks.pop()
        dead.release()
        expect(DoubleRelease, dead.release)
        expect(UseAfterRelease, dead.tobytes)
        expect(UseAfterRelease, lambda d=dead: memoryview(d))
        successor = pool.allocate()  # same slot, new generation
        stamp(successor, 99)
        expect(UseAfterRelease, dead.tobytes)
        expect(ForeignBlock, lambda s=successor: Pool(40, 1).release(s))
        blocks.append(successor)
        expect(BlocksStillLive, pool.close)
        del blocks[:4]  # GC safety net returns these
        gc.collect()
        for blk in blocks:
            blk.release()
        assert pool.in_use == 0
    grown = Pool(24, 2, grow=True)
    many = [grown.allocate() for _ in range(9)]
    for i, blk in enumerate(many):
        stamp(blk, i)
    del many, blk
    gc.collect()
    assert grown.in_use == 0
    pool.close()
    expect(AllocatorClosed, pool.allocate)


def slab_paths(rounds: int) -> None:
    slab = SlabAllocator(16, 1024, 4, grow=False, fallback="raise")
    system = SlabAllocator(16, 256, 4, fallback="system")
    for r in range(rounds):
        live = []
        for size in (1, 15, 16, 17, 100, 255, 256, 1000, 1024):
            blk = slab.allocate(size)
            live.append((blk, stamp(blk, r + size)))
        expect(SizeTooLarge, lambda: slab.allocate(1025))
        big = system.allocate(5000)
        pattern = stamp(big, r)
        view = memoryview(big)
        expect(BufferStillExported, big.release)
        assert view.tobytes() == pattern
        view.release()
        big.release()
        expect(UseAfterRelease, big.tobytes)
        expect(DoubleRelease, big.release)
        for blk, pattern in live:
            assert blk.tobytes() == pattern
            slab.release(blk)
        assert slab.in_use == 0 and system.in_use == 0
    fill = [slab.allocate(64) for _ in range(4)]
    expect(PoolExhausted, lambda: slab.allocate(64))
    assert slab.try_allocate(64) is None
    del fill
    slab.close()


def arena_paths(rounds: int) -> None:
    arena = Arena(4096, debug=True)
    for r in range(rounds):
        first = arena.allocate(100)
        pattern = stamp(first, r)
        mark = arena.mark()
        inner = [arena.allocate(64, align=64) for _ in range(4)]
        for i, blk in enumerate(inner):
            stamp(blk, i)
        view = memoryview(inner[0])
        expect(BufferStillExported, lambda m=mark: arena.rewind(m))
        view.release()
        arena.rewind(mark)
        expect(StaleHandle, inner[1].tobytes)
        assert first.tobytes() == pattern
        expect(ArenaOverflow, lambda: arena.allocate(8192))
        kept = np.frombuffer(first, dtype=np.uint8)
        expect(BufferStillExported, arena.reset)
        arena.reset(on_exported="detach")  # the view keeps the old memory alive
        fresh = arena.allocate(100)
        stamp(fresh, 200 + r)
        assert bytes(kept) == pattern
        expect(StaleHandle, first.tobytes)
        expect(InvalidMark, lambda m=mark: arena.rewind(m))
        del kept
        fresh.release()
        expect(DoubleRelease, fresh.release)
        arena.reset()
    arena.close()
    expect(AllocatorClosed, lambda: arena.allocate(8))


def capi_paths() -> None:
    """The nogil C API through the example module, compiled against the imported coreallocs."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "support"))
    import capi_demo

    capi = capi_demo.load()

    def hammer(allocator: object, tag: int, errors: list[int]) -> None:
        errors.append(capi.hammer(allocator, 20, 16, tag))

    for make in (lambda: Pool(64, 64), lambda: SlabAllocator(blocks_per_class=64)):
        allocator = make()
        errors: list[int] = []
        threads = [threading.Thread(target=hammer, args=(allocator, t, errors)) for t in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        assert errors == [0, 0, 0], errors
        assert allocator.in_use == 0
    pool = Pool(64, 2)
    address = capi.pool_alloc_address(pool)
    assert capi.pool_free_address(pool, address) == 0
    assert capi.pool_free_address(pool, address) != 0  # double free refused
    assert capi.pool_free_address(pool, address + 8) != 0  # not a block start


def bus_paths(rounds: int) -> None:
    if importlib.util.find_spec("hftalloc") is None:
        return
    from hftalloc import MessageBus

    received: list[bytes] = []
    bus = MessageBus()
    bus.subscribe("md.*", lambda msg: received.append(bytes(msg)))
    for r in range(rounds * 10):
        bus.publish("md.quote", bytes([r % 256]) * (1 + r * 7 % 200))
    assert len(received) == rounds * 10
    for r, payload in enumerate(received):
        assert payload == bytes([r % 256]) * (1 + r * 7 % 200)


def frame_paths(rounds: int) -> None:
    if importlib.util.find_spec("framealloc") is None:
        return
    from framealloc import FrameAllocator

    frames = FrameAllocator(64 * 1024)
    for r in range(rounds * 5):
        arr = frames.array((16, 4), np.float32)
        arr[:] = r
        assert float(arr.sum()) == r * 64
        del arr
        frames.swap()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    pool_paths(args.rounds)
    slab_paths(args.rounds)
    arena_paths(args.rounds)
    capi_paths()
    bus_paths(args.rounds)
    frame_paths(args.rounds)
    gc.collect()
    print("WORKLOAD OK")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
