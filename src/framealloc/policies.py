"""What the frame allocator does when a frame is still referenced or a frame is full.

Leak policies (``on_leak``), applied by ``swap()`` when numpy arrays or memoryviews
still expose the frame buffer it is about to reset:

``"strict"`` (default)
    Raise :class:`~framealloc.errors.FrameLeakError` naming the allocations still
    referenced (and where they were allocated with ``debug=True``). Nothing is reset,
    the frame does not advance; drop the references and call ``swap()`` again.
``"warn"``
    Emit a :class:`~framealloc.errors.FrameLeakWarning`, then behave like ``"detach"``.
``"detach"``
    Silently hand the old memory over to the views that still use it (it is freed
    when the last of them goes) and continue the frame on fresh memory. The views
    keep their data intact -- as if it had been copied out, without the copy.
    Counted in ``stats.leaks`` / ``stats.detached``. Cost: one extra frame buffer of
    memory for as long as the leaked views live.

There is deliberately no ``"ignore"`` policy: resetting a buffer under a live view
would let that view see the next frames' data (recycled memory), which the
project's memory-safety rule forbids.

Overflow policies (``on_overflow``), when a request does not fit in the frame:

``"raise"`` (default)
    Raise :class:`~framealloc.errors.FrameOverflow` with the frame's usage.
``"heap"``
    Serve the request from the heap instead (a plain numpy array for ``array()``,
    a one-off arena block for ``allocate()`` that still goes stale with its frame),
    counted in ``stats.heap_fallbacks`` / ``stats.heap_bytes``.
"""

from __future__ import annotations

from typing import Literal, get_args

__all__ = ["LeakPolicy", "OverflowPolicy", "check_leak_policy", "check_overflow_policy"]

LeakPolicy = Literal["strict", "warn", "detach"]
OverflowPolicy = Literal["raise", "heap"]

LEAK_POLICIES: tuple[str, ...] = get_args(LeakPolicy)
OVERFLOW_POLICIES: tuple[str, ...] = get_args(OverflowPolicy)


def check_leak_policy(value: str) -> LeakPolicy:
    """Return `value` if it is a leak policy, else raise ValueError listing the choices."""
    if value not in LEAK_POLICIES:
        raise ValueError(f"on_leak must be one of {LEAK_POLICIES}, got {value!r}")
    return value  # type: ignore[return-value]


def check_overflow_policy(value: str) -> OverflowPolicy:
    """Return `value` if it is an overflow policy, else raise ValueError listing the choices."""
    if value not in OVERFLOW_POLICIES:
        raise ValueError(f"on_overflow must be one of {OVERFLOW_POLICIES}, got {value!r}")
    return value  # type: ignore[return-value]
