"""hftalloc.net: the bus over the network.

- :mod:`hftalloc.net.gateways`: asyncio/uvloop TCP and UDP feed listeners
  (:class:`FeedListener`) and writers (:class:`BusWriter`).
- :class:`ZmqBridge` (needs the optional pyzmq): a bus over ZeroMQ PUB/SUB.
"""

from __future__ import annotations

from typing import Any

from hftalloc.net.gateways import BusWriter, FeedListener, FeedStats, FixedSize, LengthPrefixed

__all__ = ["BusWriter", "FeedListener", "FeedStats", "FixedSize", "LengthPrefixed", "ZmqBridge"]


def __getattr__(name: str) -> Any:
    """Import ZmqBridge lazily (it needs the optional pyzmq)."""
    if name == "ZmqBridge":
        from hftalloc.net.zmq_bridge import ZmqBridge

        return ZmqBridge
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
