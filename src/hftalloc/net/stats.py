"""FeedStats: the counters of a feed listener or writer."""

from __future__ import annotations

from dataclasses import dataclass, fields

__all__ = ["FeedStats"]


@dataclass(slots=True)
class FeedStats:
    """Counters of a :class:`FeedListener` (a :class:`BusWriter` uses the first few).

    Delivered: ``frames``, ``bytes`` (payload bytes), ``direct_reads`` (TCP reads that
    went straight into a pool block). Not delivered, one counter per reason:
    ``malformed`` (bad header, length, topic or size; truncated stream or datagram),
    ``dropped`` (bus full under ``drop``; UDP under ``block``), ``rejected`` (bus full
    under ``raise``, or a ``block`` wait past ``block_timeout``), ``too_large`` (above
    the bus's largest size class), ``bus_closed``, ``topic_limit`` (a new topic beyond
    ``max_topics``), ``errors`` (anything else, logged). Connections: ``connections``
    (accepted), ``refused`` (beyond ``max_connections``), ``closed_on_error``
    (impossible frame header), ``timeouts`` (frame not complete within
    ``frame_timeout``), ``idle_closed``; ``blocked`` (waits for a free block),
    ``buffered_partial`` (partial frames kept out of the pool by ``partial_share``).
    Gauges: ``open_connections``, ``partial_blocks`` (blocks held by partial frames).
    """

    frames: int = 0
    bytes: int = 0
    malformed: int = 0
    dropped: int = 0
    rejected: int = 0
    too_large: int = 0
    bus_closed: int = 0
    topic_limit: int = 0
    errors: int = 0
    blocked: int = 0
    connections: int = 0
    refused: int = 0
    closed_on_error: int = 0
    timeouts: int = 0
    idle_closed: int = 0
    direct_reads: int = 0
    buffered_partial: int = 0
    open_connections: int = 0
    partial_blocks: int = 0

    def as_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @property
    def undelivered(self) -> int:
        """Frames that did not reach the bus, over every reason."""
        return (self.malformed + self.dropped + self.rejected + self.too_large +
                self.bus_closed + self.topic_limit + self.errors)
