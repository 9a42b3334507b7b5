"""hftalloc.ipc: the message bus beyond one process.

- :class:`Channel`, :class:`ChannelWriter`, :class:`ChannelReader`: a shared-memory
  channel (single producer, single consumer) with size-class pools and a descriptor
  ring in a POSIX shared-memory segment; messages are read in place (zero copy).
- :class:`ShmBridge`: connects a :class:`~hftalloc.MessageBus` to channels (chosen
  topics out, everything received in).
- :class:`ZmqBridge` (needs pyzmq): the same over ZeroMQ PUB/SUB, across machines.
- :mod:`hftalloc.ipc.gateways`: asyncio/uvloop TCP and UDP feed listeners and writers.
- ``python -m hftalloc.ipc status|cleanup|recover``: inspect and clean segments.
"""

from __future__ import annotations

from typing import Any

from hftalloc.ipc.channel import (
    Channel,
    ChannelReader,
    ChannelStats,
    ChannelWriter,
    ShmClaim,
    ShmMessage,
)
from hftalloc.ipc.errors import (
    ChannelClosed,
    ChannelFull,
    FrameError,
    IpcError,
    PeerDead,
    RoleTaken,
    SegmentCorrupted,
    SegmentError,
    TopicTableFull,
)
from hftalloc.ipc.layout import Layout

__all__ = [
    "Channel",
    "ChannelClosed",
    "ChannelFull",
    "ChannelReader",
    "ChannelStats",
    "ChannelWriter",
    "FrameError",
    "IpcError",
    "Layout",
    "PeerDead",
    "RoleTaken",
    "SegmentCorrupted",
    "SegmentError",
    "ShmBridge",
    "ShmClaim",
    "ShmMessage",
    "TopicTableFull",
    "ZmqBridge",
]


def __getattr__(name: str) -> Any:
    """Import the bridges lazily (ZmqBridge needs the optional pyzmq)."""
    if name == "ShmBridge":
        from hftalloc.ipc.transport import ShmBridge

        return ShmBridge
    if name == "ZmqBridge":
        from hftalloc.ipc.zmq_bridge import ZmqBridge

        return ZmqBridge
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
