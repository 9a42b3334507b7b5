"""``python -m hftalloc``: the hot-path clock, whether uvloop is available, a quick self-check.

``python -m hftalloc status|cleanup|recover [...]`` manages shared-memory channel segments;
``python -m hftalloc journal info|dump|verify|replay PATH`` inspects record/replay journals.
"""

from __future__ import annotations

import sys
import time

from hftalloc import MessageBus, _bus, has_uvloop


def main() -> int:
    print(f"hftalloc: uvloop {'available' if has_uvloop() else 'missing'}")
    info = _bus.clock_info()
    print(f"  hot-path clock: {info['clock']} ({info['ns_per_tick']:.6f} ns per tick)")
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
    if len(sys.argv) > 1 and sys.argv[1] in ("status", "cleanup", "recover", "journal", "fix"):
        from hftalloc.cli import main as ipc_main

        raise SystemExit(ipc_main(sys.argv[1:]))
    raise SystemExit(main())
