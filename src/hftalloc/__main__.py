"""``python -m hftalloc``: which core is in use, whether uvloop is available, a quick self-check.

``python -m hftalloc status|cleanup|recover [...]`` manages shared-memory channel segments
(the same as ``python -m hftalloc ...``).
"""

from __future__ import annotations

import sys
import time

from hftalloc import IMPLEMENTATION, MessageBus, has_uvloop


def main() -> int:
    print(f"hftalloc: {IMPLEMENTATION} core, uvloop {'available' if has_uvloop() else 'missing'}")
    if IMPLEMENTATION == "cython":
        from hftalloc import _fastcore

        info = _fastcore.clock_info()
        print(f"  hot-path clock: {info['clock']} ({info['ns_per_tick']:.6f} ns per tick)")
    else:
        print("  (build the extensions for the fast path: python3 setup.py build_ext --inplace)")
    bus = MessageBus(blocks_per_class=64, name="selfcheck")
    received = 0

    def on_message(msg) -> None:  # type: ignore[no-untyped-def]
        nonlocal received
        received += msg.payload[0] == 7

    bus.subscribe("self.*", on_message)
    payload = bytes([7]) * 64
    count = 200_000
    start = time.perf_counter()
    for _ in range(count):
        bus.publish("self.check", payload)
    elapsed = time.perf_counter() - start
    assert received == count and bus.allocator.in_use == 0, "self-check failed"
    print(f"  {count:,} messages of 64 B in {elapsed:.3f} s ({count / elapsed:,.0f} msgs/s), "
          f"latency {bus.stats().latency.format()}")
    bus.close()
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] in ("status", "cleanup", "recover", "fix"):
        from hftalloc.cli import main as ipc_main

        raise SystemExit(ipc_main(sys.argv[1:]))
    raise SystemExit(main())
