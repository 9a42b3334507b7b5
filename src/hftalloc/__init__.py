"""hftalloc: a low-latency message bus over power-of-two size-class pools.

- :class:`MessageAllocator`: 64 B .. 8 KiB power-of-two classes on ``coreallocs``.
- :class:`MessageBus`: topics with ``*``/``>`` wildcards, zero-copy claim/commit,
  read-only views for subscribers, reference-counted block return, sync or asyncio
  dispatch, raise/drop/block policies, per-topic counters and an HDR latency histogram.
- :mod:`hftalloc.schemas`: fixed-layout Quote/Trade/NewOrder/Cancel/Fill codecs that
  encode and decode in place.
"""

from __future__ import annotations

from hftalloc.allocator import MessageAllocator
from hftalloc.bus import MessageBus, Subscription
from hftalloc.errors import (
    BufferStillExported,
    BusClosed,
    BusError,
    BusFull,
    DispatchDepthExceeded,
    InvalidTopic,
    MessageReleased,
    MessageStateError,
    NotRetained,
    NotSubscribed,
    SchemaError,
    SizeTooLarge,
    TopicTypeError,
    WouldBlock,
)
from hftalloc.histogram import Histogram, LatencySummary
from hftalloc.loops import has_uvloop, loop_factory, run
from hftalloc.stats import BusStats, TopicStats
from hftalloc.topics import matches

__all__ = [
    "BufferStillExported",
    "BusClosed",
    "BusError",
    "BusFull",
    "BusStats",
    "DispatchDepthExceeded",
    "Histogram",
    "InvalidTopic",
    "LatencySummary",
    "MessageAllocator",
    "MessageBus",
    "MessageReleased",
    "MessageStateError",
    "NotRetained",
    "NotSubscribed",
    "SchemaError",
    "SizeTooLarge",
    "Subscription",
    "TopicStats",
    "TopicTypeError",
    "WouldBlock",
    "has_uvloop",
    "loop_factory",
    "matches",
    "run",
]
