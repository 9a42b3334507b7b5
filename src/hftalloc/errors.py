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
    "EndpointForked",
    "FrameError",
    "GeometryMismatch",
    "InvalidSize",
    "InvalidTopic",
    "IpcError",
    "JournalClosed",
    "JournalConfigError",
    "JournalCorrupted",
    "JournalError",
    "JournalFormatError",
    "JournalFull",
    "JournalIOError",
    "JournalLocked",
    "JournalNotFound",
    "JournalStateError",
    "MessageReleased",
    "MessageStateError",
    "NotRetained",
    "NotSubscribed",
    "PeerDead",
    "PoolExhausted",
    "RecordTooLarge",
    "RecordTypeError",
    "RoleTaken",
    "SchemaError",
    "SegmentCorrupted",
    "SegmentError",
    "SegmentExists",
    "SizeTooLarge",
    "TopicTableFull",
    "TopicTypeError",
    "WouldBlock",
]


class BusError(AllocatorError):
    """Base class of the errors specific to the message bus."""


class BusFull(BusError, PoolExhausted):
    """The size class a message needs is exhausted and the policy is ``raise``.

    Raised by ``publish_many`` after the rest of the batch went on: ``refused`` says how
    many of its messages were refused (0 for a single message)."""

    refused: int = 0


class WouldBlock(BusFull):
    """The policy is ``block`` but the caller used a non-awaiting call (``publish``/``claim``).

    Use ``await bus.apublish(...)`` / ``await bus.aclaim(...)`` to wait for a free block.
    """


class BusClosed(BusError, AllocatorClosed):
    """The bus was closed; it accepts no more messages.

    From ``publish_many`` closed by a subscriber mid-batch, ``published`` says how many of
    the batch's messages were published before (the rest were not)."""

    published: int = 0


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


class SegmentExists(SegmentError):
    """A new channel's name is taken by an existing segment (attach to it, or use
    ``Channel.open_or_create``)."""


class GeometryMismatch(SegmentError, ValueError):
    """An existing channel was opened with another geometry than the one asked for.

    ``field`` names the first differing parameter, ``expected`` is the value asked for
    and ``actual`` the segment's.
    """

    def __init__(self, message: str, field: str = "", expected: object = None,
                 actual: object = None) -> None:
        super().__init__(message)
        self.field = field
        self.expected = expected
        self.actual = actual


class EndpointForked(ChannelClosed):
    """A channel endpoint inherited over ``fork``: it belongs to the parent process (open
    a new one in the child)."""


class TopicTableFull(IpcError):
    """The channel's topic table has no room for another topic (raise ``max_topics``)."""


class FrameError(IpcError, ValueError):
    """A gateway received a malformed frame (bad length, topic or size)."""


# -- journal (hftalloc.journal) ----------------------------------------------------------
class JournalError(BusError):
    """Base class of the errors of the record/replay journal."""


class JournalIOError(JournalError, OSError):
    """The operating system refused a journal operation (permission, read-only
    filesystem, I/O error); ``errno`` and ``filename`` say which."""


class JournalNotFound(JournalIOError, FileNotFoundError):
    """The journal directory (or one of its files) does not exist."""


class JournalFull(JournalIOError):
    """The disk (or the file size limit) has no room for another segment, topic or
    index entry; every record committed before stays intact."""


class JournalFormatError(JournalError):
    """A file that is not an hftalloc journal, or one written in another format version."""


class JournalCorrupted(JournalError):
    """A record or header of a journal failed its checks (length, checksum, sequence).

    ``path`` is the damaged file and ``offset`` the byte offset of the damaged record."""

    def __init__(self, message: str, path: str = "", offset: int = -1) -> None:
        super().__init__(message)
        self.path = path
        self.offset = offset


class JournalLocked(JournalError):
    """Another live process is writing this journal (one writer per journal)."""


class JournalClosed(JournalError):
    """The journal writer or reader was closed."""


class JournalStateError(JournalError):
    """An operation does not fit the writer's state (a claim in progress, a view of a
    claim still alive at commit, a claim used after commit)."""


class JournalConfigError(JournalError, ValueError):
    """A journal geometry or policy argument is out of range."""


class RecordTooLarge(JournalError, SizeTooLarge):
    """A payload above the journal's configured maximum."""


class RecordTypeError(JournalError, TypeError):
    """A payload that is not a contiguous bytes-like object, or a timestamp that is not an int."""
