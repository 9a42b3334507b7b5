"""Errors raised by the message bus.

Every error derives from :class:`coreallocs.errors.AllocatorError`; bus errors that
have a core counterpart subclass it (``BusFull`` is a ``PoolExhausted`` and therefore a
``MemoryError``, ``MessageReleased`` is a ``UseAfterRelease``), so handlers written
for the core keep working.
"""

from __future__ import annotations

from coreallocs.errors import (
    AllocatorClosed,
    AllocatorError,
    BlocksStillLive,
    BufferStillExported,
    DoubleRelease,
    InvalidSize,
    PoolExhausted,
    SizeTooLarge,
    UseAfterRelease,
)

__all__ = [
    "AllocatorError",
    "BlocksStillLive",
    "BufferStillExported",
    "BusClosed",
    "BusError",
    "BusFull",
    "ChannelClosed",
    "ChannelFull",
    "DispatchDepthExceeded",
    "FrameError",
    "InvalidSize",
    "InvalidTopic",
    "IpcError",
    "MessageReleased",
    "MessageStateError",
    "NotRetained",
    "NotSubscribed",
    "PeerDead",
    "PoolExhausted",
    "RoleTaken",
    "SchemaError",
    "SegmentCorrupted",
    "SegmentError",
    "SizeTooLarge",
    "TopicTableFull",
    "TopicTypeError",
    "WouldBlock",
]


class BusError(AllocatorError):
    """Base class of the errors specific to the message bus."""


class BusFull(BusError, PoolExhausted):
    """The size class a message needs is exhausted and the policy is ``raise``."""


class WouldBlock(BusFull):
    """The policy is ``block`` but the caller used a non-awaiting call (``publish``/``claim``).

    Use ``await bus.apublish(...)`` / ``await bus.aclaim(...)`` to wait for a free block.
    """


class BusClosed(BusError, AllocatorClosed):
    """The bus was closed; it accepts no more messages."""


class MessageReleased(BusError, UseAfterRelease):
    """A message was used after its block went back to the pool."""


class NotRetained(BusError, DoubleRelease):
    """``msg.release()`` was called more often than ``msg.retain()``."""


class DispatchDepthExceeded(BusError):
    """A synchronous publish nested deeper than the bus's ``max_depth`` dispatches (a
    subscriber that publishes recursively); the message is refused (counted)."""


class MessageStateError(BusError):
    """An operation does not fit the message's state (e.g. writing after commit)."""


class InvalidTopic(BusError, ValueError):
    """A topic or subscription pattern is malformed."""


class TopicTypeError(InvalidTopic, TypeError):
    """A topic or pattern that is not a str (both an InvalidTopic and a TypeError)."""


class NotSubscribed(BusError, KeyError):
    """``unsubscribe`` was given a subscription that is not (or no longer) active."""


class SchemaError(BusError, ValueError):
    """A binary message has the wrong version, type or length for its schema."""


# -- transports between processes -------------------------------------------------------
class IpcError(BusError):
    """Base class of the errors of the transports between processes (shared memory,
    ZeroMQ, TCP/UDP gateways)."""


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
