"""hftalloc.shm: shared-memory channels between processes on one machine.

- :class:`Channel` creates a segment (and unlinks it on close); :class:`ChannelWriter`
  and :class:`ChannelReader` attach to it from any process as its producer and consumer.
- A segment holds a descriptor ring and power-of-two size-class pools; messages are
  read in place (:class:`ShmMessage`, zero copy) or written in place (:class:`ShmClaim`);
  both are the bus's :class:`hftalloc._message.Message`.
- Segments are private to their user (mode 0600, owner and mode checked on attach) and
  everything read from one is bounds-checked; a truncated segment raises
  ``SegmentCorrupted`` instead of killing the process with SIGBUS.
- :mod:`hftalloc.shm.status`: inspect, recover and clean up segments
  (``python -m hftalloc status|cleanup|recover``).
"""

from __future__ import annotations

from hftalloc.shm.channel import (
    Channel,
    ChannelReader,
    ChannelStats,
    ChannelWriter,
    ShmClaim,
    ShmMessage,
)
from hftalloc.shm.layout import Layout

__all__ = [
    "Channel",
    "ChannelReader",
    "ChannelStats",
    "ChannelWriter",
    "Layout",
    "ShmClaim",
    "ShmMessage",
]
