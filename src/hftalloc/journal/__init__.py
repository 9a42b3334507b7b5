"""hftalloc.journal: record bus traffic into memory-mapped segment files and replay it.

- :class:`JournalWriter`: ``append(topic, payload, timestamp)`` and zero-copy
  ``claim(topic, size)`` -> write -> ``commit()``; rolling segments; flush policies.
- :class:`JournalReader`: zero-copy records, ``seek`` by seq, ``seek_time`` by time
  (sparse index, binary search), topic filters, ``tail`` of a live writer.
- :class:`Recorder`: records chosen topics of a :class:`~hftalloc.MessageBus` with the
  bus's own publish stamps.
- :func:`replay`: publishes a journal into a bus, as fast as possible or paced.
- :func:`verify`: lists every torn or corrupted record.

The format and the crash guarantees are described in docs/hftalloc-journal.md.
"""

from __future__ import annotations

from hftalloc.journal._journal import (
    Claim,
    Record,
    crc32c,
    crc32c_hardware_available,
    crc32c_implementation,
)
from hftalloc.journal.reader import JournalInfo, JournalReader, TornTail
from hftalloc.journal.recorder import Recorder
from hftalloc.journal.replay import ReplayStats, replay
from hftalloc.journal.verify import Problem, VerifyReport, verify
from hftalloc.journal.writer import FLUSH_POLICIES, JournalWriter, WriterStats

__all__ = [
    "FLUSH_POLICIES",
    "Claim",
    "JournalInfo",
    "JournalReader",
    "JournalWriter",
    "Problem",
    "Record",
    "Recorder",
    "ReplayStats",
    "TornTail",
    "VerifyReport",
    "WriterStats",
    "crc32c",
    "crc32c_hardware_available",
    "crc32c_implementation",
    "replay",
    "verify",
]
