"""Exception hierarchy shared by every allocator in this distribution.

Every error derives from :class:`AllocatorError`; where a built-in category fits,
the error also derives from it (``ValueError``, ``TypeError``, ``MemoryError``) so
generic handlers keep working. Messages name the offending values.
"""

from __future__ import annotations

__all__ = [
    "AllocatorClosed",
    "AllocatorError",
    "ArenaOverflow",
    "BlocksStillLive",
    "BufferStillExported",
    "DoubleRelease",
    "ForeignBlock",
    "InvalidAlignment",
    "InvalidMark",
    "InvalidSize",
    "NotInitialized",
    "OutOfMemory",
    "PoolExhausted",
    "SizeTooLarge",
    "StaleHandle",
    "UseAfterRelease",
]


class AllocatorError(Exception):
    """Base class of every error raised by coreallocs, hftalloc and framealloc."""


# -- bad arguments -----------------------------------------------------------
class InvalidSize(AllocatorError, ValueError):
    """A size or count is zero, negative, or overflows when multiplied out."""


class InvalidAlignment(AllocatorError, ValueError):
    """An alignment is not a power of two, or exceeds the supported maximum (4096)."""


class SizeTooLarge(AllocatorError, ValueError):
    """A request is larger than the largest size class and the policy is ``raise``."""


# -- capacity ----------------------------------------------------------------
class PoolExhausted(AllocatorError, MemoryError):
    """Every block of a fixed-capacity pool is in use."""


class ArenaOverflow(AllocatorError, MemoryError):
    """An arena (bump allocator) has no room left for the request."""


class OutOfMemory(AllocatorError, MemoryError):
    """The system allocator refused to provide memory."""


# -- lifetime ----------------------------------------------------------------
class UseAfterRelease(AllocatorError):
    """A handle was used (read, written, exported) after its block was released."""


class StaleHandle(UseAfterRelease):
    """An arena handle was used after a ``reset()`` or ``rewind()`` reclaimed it."""


class DoubleRelease(AllocatorError):
    """A block was released twice."""


class ForeignBlock(AllocatorError, ValueError):
    """A block was released into an allocator that does not own it."""


class BufferStillExported(AllocatorError, BufferError):
    """Memory cannot be reclaimed while a memoryview / numpy array still exposes it."""


class InvalidMark(AllocatorError, ValueError):
    """An arena mark is from another arena or was invalidated by reset/rewind."""


class AllocatorClosed(AllocatorError):
    """The allocator was closed; it cannot hand out memory any more."""


class BlocksStillLive(AllocatorError):
    """``close()`` was called while blocks are still in use."""


class NotInitialized(AllocatorError, TypeError):
    """An object was made with ``Type.__new__(Type)`` and its constructor never ran."""
