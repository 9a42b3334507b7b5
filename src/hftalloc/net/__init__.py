"""hftalloc.net: the bus over the network.

- :class:`FeedListener` (:mod:`hftalloc.net.gateways`): asyncio/uvloop TCP
  (:mod:`~hftalloc.net.tcp`) and UDP (:mod:`~hftalloc.net.udp`) feed listeners;
  :class:`BusWriter` (:mod:`~hftalloc.net.writer`) sends bus messages out; framings in
  :mod:`~hftalloc.net.framing`; counters in :class:`FeedStats`.
- :class:`ZmqBridge` (needs the optional pyzmq): a bus over ZeroMQ PUB/SUB.
"""

from __future__ import annotations

from typing import Any

from hftalloc.net.framing import FixedSize, LengthPrefixed
from hftalloc.net.gateways import FeedListener
from hftalloc.net.stats import FeedStats
from hftalloc.net.writer import BusWriter

__all__ = ["BusWriter", "FeedListener", "FeedStats", "FixedSize", "LengthPrefixed", "ZmqBridge"]


def __getattr__(name: str) -> Any:
    """Import ZmqBridge lazily (it needs the optional pyzmq)."""
    if name == "ZmqBridge":
        from hftalloc.net.zmq_bridge import ZmqBridge

        return ZmqBridge
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
