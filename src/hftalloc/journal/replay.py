"""replay: publish the records of a journal into a bus, as fast as possible or paced."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from hftalloc.journal.reader import JournalReader

__all__ = ["ReplayStats", "replay"]


@dataclass(frozen=True, slots=True)
class ReplayStats:
    """What a replay published."""

    published: int
    dropped: int
    elapsed: float
    original_timestamps: bool

    @property
    def rate(self) -> float:
        return self.published / self.elapsed if self.elapsed > 0 else 0.0


def replay(source: JournalReader | str | os.PathLike[str], bus: Any, *,
           speed: float | None = None, topics: str | Sequence[str] | None = None,
           start_seq: int | None = None, start_time: int | None = None,
           end_time: int | None = None, limit: int = 0) -> ReplayStats:
    """Publish the journal's records (optionally filtered) into ``bus``.

    ``speed=None``: as fast as possible (a compiled loop). ``speed=s``: paced at the
    recorded timing, ``s`` times faster (2.0: twice as fast). Subscribers see the
    recorded timestamps as ``msg.publish_ns`` (through ``bus.publish_at``; a record
    whose timestamp is not > 0 is published with a fresh stamp). A bus without
    ``publish_at`` stamps every message anew (``ReplayStats.original_timestamps``).
    A publish the bus drops (policy ``drop``) is counted in ``dropped``.
    """
    if speed is not None and (isinstance(speed, bool) or not isinstance(speed, int | float)
                              or not speed > 0):
        raise ValueError(f"speed must be a positive number or None, got {speed!r}")
    reader = source if isinstance(source, JournalReader) else JournalReader(source)
    if start_seq is not None:
        cursor = reader.seek(start_seq, topics=topics)
        if end_time is not None:
            cursor.set_window(-(1 << 63), end_time)
    else:
        cursor = reader.records(topics, start_time=start_time, end_time=end_time)
    publish_at = getattr(bus, "publish_at", None)
    publish = bus.publish
    start = time.perf_counter()
    if speed is None:
        published, dropped = cursor.replay_into(publish, publish_at, limit)
    else:
        published = dropped = 0
        origin = None
        wall0 = time.perf_counter_ns()
        for rec in cursor:
            if origin is None:
                origin = rec.timestamp
            due = wall0 + (rec.timestamp - origin) / speed
            ahead = due - time.perf_counter_ns()
            if ahead > 100_000:                 # sleep for gaps above 0.1 ms
                time.sleep(ahead / 1e9)
            if publish_at is not None and rec.timestamp > 0:
                result = publish_at(rec.topic, rec, rec.timestamp)
            else:
                result = publish(rec.topic, rec)
            if result is None:
                dropped += 1
            else:
                published += 1
            if limit and published + dropped >= limit:
                break
    return ReplayStats(published, dropped, time.perf_counter() - start, publish_at is not None)
