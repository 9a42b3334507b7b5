"""replay: publish the records of a journal into a bus, as fast as possible or paced."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from hftalloc.journal.reader import JournalReader

__all__ = ["DEFAULT_BATCH", "ReplayStats", "replay"]

DEFAULT_BATCH = 256
"""Records per batch at most (consecutive records on one topic, see :func:`replay`)."""


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
           end_time: int | None = None, limit: int = 0,
           batch: int | None = DEFAULT_BATCH) -> ReplayStats:
    """Publish the journal's records (optionally filtered) into ``bus``.

    ``speed=None``: as fast as possible. ``speed=s``: paced at the recorded timing,
    ``s`` times faster (2.0: twice as fast). Subscribers see the recorded timestamps as
    ``msg.publish_ns`` (a record whose timestamp is not > 0 is published with a fresh
    stamp). A bus without ``publish_at`` stamps every message anew
    (``ReplayStats.original_timestamps``). A publish the bus drops (policy ``drop``) is
    counted in ``dropped``.

    ``batch``: consecutive records on one topic (that are due, when paced) are published
    together with ``bus.publish_many_at``, at most ``batch`` at a time, so that batch
    subscribers get them in one call. ``batch=None`` or 1, or a bus without
    ``publish_many_at``: one publish per record (a compiled loop when not paced).
    """
    if speed is not None and (isinstance(speed, bool) or not isinstance(speed, int | float)
                              or not speed > 0):
        raise ValueError(f"speed must be a positive number or None, got {speed!r}")
    if batch is not None and (isinstance(batch, bool) or not isinstance(batch, int)
                              or batch < 1):
        raise ValueError(f"batch must be a positive int or None, got {batch!r}")
    reader = source if isinstance(source, JournalReader) else JournalReader(source)
    if start_seq is not None:
        cursor = reader.seek(start_seq, topics=topics)
        if end_time is not None:
            cursor.set_window(-(1 << 63), end_time)
    else:
        cursor = reader.records(topics, start_time=start_time, end_time=end_time)
    publish_at = getattr(bus, "publish_at", None)
    publish = bus.publish
    publish_many_at = getattr(bus, "publish_many_at", None)
    start = time.perf_counter()
    if batch is not None and batch > 1 and publish_many_at is not None:
        published, dropped = _replay_batches(cursor, publish_many_at, speed, limit, batch)
    elif speed is None:
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


def _runs(records: Iterator[Any], speed: float | None, limit: int,
          batch: int) -> Iterator[tuple[str, list[Any], list[int]]]:
    """Consecutive records on one topic, at most ``batch`` (and ``limit`` in all); paced:
    a run starts when its first record is due and takes the following ones already due."""
    taken = 0
    origin = None
    wall0 = time.perf_counter_ns()
    held: Any = None
    while True:
        rec = held if held is not None else next(records, None)
        held = None
        if rec is None:
            return
        if speed is not None:
            if origin is None:
                origin = rec.timestamp
            ahead = wall0 + (rec.timestamp - origin) / speed - time.perf_counter_ns()
            if ahead > 100_000:                 # sleep for gaps above 0.1 ms
                time.sleep(ahead / 1e9)
        topic = rec.topic
        run, stamps = [rec], [rec.timestamp]
        taken += 1
        while len(run) < batch and not (limit and taken >= limit):
            nxt = next(records, None)
            if nxt is None:
                break
            if nxt.topic != topic or (speed is not None and (
                    wall0 + (nxt.timestamp - origin) / speed > time.perf_counter_ns())):
                held = nxt
                break
            run.append(nxt)
            stamps.append(nxt.timestamp)
            taken += 1
        yield topic, run, stamps
        if limit and taken >= limit:
            return


def _replay_batches(cursor: Any, publish_many_at: Any, speed: float | None, limit: int,
                    batch: int) -> tuple[int, int]:
    published = dropped = 0
    for topic, run, stamps in _runs(iter(cursor), speed, limit, batch):
        done = publish_many_at(topic, run, stamps)
        published += done
        dropped += len(run) - done
    return published, dropped
