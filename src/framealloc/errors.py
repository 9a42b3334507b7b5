"""Errors and warnings of the frame allocator.

Each one subclasses the matching core error from :mod:`coreallocs.errors`, so code
that already handles ``StaleHandle``, ``BufferStillExported`` or ``ArenaOverflow``
(or their common base ``AllocatorError``) keeps working.
"""

from __future__ import annotations

from coreallocs.errors import ArenaOverflow, BufferStillExported, StaleHandle

__all__ = ["FrameLeakError", "FrameLeakWarning", "FrameOverflow", "StaleFrameError"]


class StaleFrameError(StaleHandle):
    """A frame handle was used after its frame buffer was reset (frame k used in frame k+N)."""


class FrameLeakError(BufferStillExported):
    """``swap()`` with ``on_leak="strict"``: arrays/memoryviews still reference the frame to reset.

    ``frame`` is the frame whose memory is still referenced, ``leaks`` a list of
    one-line descriptions of the allocations concerned. Nothing was reset: drop the
    references (or copy what must survive) and call ``swap()`` again.
    """

    def __init__(self, message: str, *, frame: int = -1, leaks: list[str] | None = None) -> None:
        super().__init__(message)
        self.frame = frame
        self.leaks = list(leaks or [])


class FrameLeakWarning(RuntimeWarning):
    """``swap()`` with ``on_leak="warn"``: a frame was detached because views still used it."""


class FrameOverflow(ArenaOverflow):
    """A request does not fit in the current frame buffer (``on_overflow="raise"``).

    Carries the figures of the frame: ``frame``, ``requested`` (bytes), ``used``
    and ``capacity`` (bytes of the frame buffer) and ``allocations`` so far.
    """

    def __init__(
        self,
        message: str,
        *,
        frame: int = -1,
        requested: int = 0,
        used: int = 0,
        capacity: int = 0,
        allocations: int = 0,
    ) -> None:
        super().__init__(message)
        self.frame = frame
        self.requested = requested
        self.used = used
        self.capacity = capacity
        self.allocations = allocations
