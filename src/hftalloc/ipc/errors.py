"""Errors of the inter-process transports (shared memory, ZeroMQ, TCP/UDP gateways).

All derive from :class:`hftalloc.errors.BusError` (hence ``coreallocs.errors.AllocatorError``);
the ones with a bus or core counterpart subclass it too, so existing handlers keep working:
``ChannelFull`` is a ``BusFull`` (a ``PoolExhausted``, a ``MemoryError``), ``ChannelClosed``
is a ``BusClosed``, ``FrameError`` is a ``ValueError``.
"""

from __future__ import annotations

from hftalloc.errors import BusClosed, BusError, BusFull

__all__ = [
    "ChannelClosed",
    "ChannelFull",
    "FrameError",
    "IpcError",
    "PeerDead",
    "RoleTaken",
    "SegmentCorrupted",
    "SegmentError",
    "TopicTableFull",
]


class IpcError(BusError):
    """Base class of the inter-process transport errors."""


class ChannelFull(IpcError, BusFull):
    """No ring slot or no block of the needed size class (policy ``raise``, or a ``block``
    policy wait that timed out)."""


class ChannelClosed(IpcError, BusClosed):
    """The channel endpoint was closed."""


class PeerDead(IpcError):
    """The process on the other side of a channel has died (pid gone or reused)."""


class RoleTaken(IpcError):
    """The producer or consumer role of a channel is held by another live process."""


class SegmentError(IpcError):
    """A shared-memory segment is missing, not an hftalloc channel, or has another layout."""


class SegmentCorrupted(SegmentError):
    """A descriptor, free-list entry or topic entry in the segment is out of range."""


class TopicTableFull(IpcError):
    """The channel's topic table has no room for another topic (raise ``max_topics``)."""


class FrameError(IpcError, ValueError):
    """A gateway received a malformed frame (bad length, topic or size)."""
