"""Recorder: writes every message of chosen bus topics into a journal."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from hftalloc.journal._journal import RecordSink
from hftalloc.journal.writer import JournalWriter

__all__ = ["Recorder"]


class Recorder:
    """Subscribes to ``patterns`` on ``bus`` and appends each message delivered to it,
    with the bus's topic and publish stamp (``msg.publish_ns``) as the record's timestamp.

    Nothing is lost silently: ``recorded`` counts the records written, ``failed`` the
    deliveries that could not be written (disk full, ...); ``last_error`` is the latest
    failure, which is also raised into the bus (counted in its subscriber errors and
    passed to its ``on_error`` hook). ``recorded + failed`` equals the deliveries the bus
    made to the recorder.
    """

    def __init__(self, bus: Any, writer: JournalWriter,
                 patterns: str | Sequence[str] = ">") -> None:
        items = (patterns,) if isinstance(patterns, str) else tuple(patterns)
        if not items:
            raise ValueError("a recorder needs at least one topic pattern")
        self.bus = bus
        self.writer = writer
        self._sink = RecordSink(writer.core)
        self.subscriptions = [bus.subscribe(p, self._sink) for p in items]

    @property
    def recorded(self) -> int:
        return self._sink.recorded

    @property
    def failed(self) -> int:
        return self._sink.failed

    @property
    def last_error(self) -> BaseException | None:
        return self._sink.last_error

    def stop(self) -> None:
        """Unsubscribe (the writer stays open: its owner closes it)."""
        for sub in self.subscriptions:
            if sub.active:
                sub.unsubscribe()

    def __enter__(self) -> Recorder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<Recorder recorded={self.recorded} failed={self.failed} -> {self.writer.path!r}>"
