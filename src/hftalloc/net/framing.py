"""Wire framings of the TCP/UDP gateways and the topic check shared by every network input.

* :class:`LengthPrefixed`: ``<u32 payload length><u16 topic length><topic><payload>``
  (little-endian; topic UTF-8, 1..255 bytes);
* :class:`FixedSize`: records of exactly ``size`` bytes, all on one topic.

:class:`TopicTable` turns the raw topic bytes of a frame into a validated topic, caching
at most ``max_topics`` distinct topics per input: a peer that invents topics cannot grow
the input's (or the bus's) per-topic state without bound.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

from hftalloc.errors import FrameError, InvalidTopic
from hftalloc.topics import validate_topic

__all__ = ["HEADER", "MAX_TOPIC", "FixedSize", "LengthPrefixed", "TooManyTopics", "TopicTable"]

HEADER = struct.Struct("<IH")  # payload length, topic length
MAX_TOPIC = 255
DEFAULT_MAX_TOPICS = 65536


@dataclass(frozen=True, slots=True)
class LengthPrefixed:
    """``<u32 payload length><u16 topic length><topic><payload>`` frames.

    ``max_payload``: larger frames are malformed (default: the bus's largest size class).
    """

    max_payload: int | None = None

    def __post_init__(self) -> None:
        limit = self.max_payload
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int)
                                  or not 0 <= limit < 1 << 32):
            raise ValueError(f"max_payload must be an int in 0..2**32-1, got {limit!r}")

    def encode(self, topic: str, payload: Any) -> bytes:
        raw = topic.encode()
        if not 0 < len(raw) <= MAX_TOPIC:
            raise InvalidTopic(f"topic {topic[:40]!r} is {len(raw)} bytes; frames carry 1..255")
        view = memoryview(payload)
        return b"".join((HEADER.pack(view.nbytes, len(raw)), raw, view))


@dataclass(frozen=True, slots=True)
class FixedSize:
    """Records of exactly ``size`` bytes, published on ``topic``."""

    size: int
    topic: str

    def __post_init__(self) -> None:
        if isinstance(self.size, bool) or not isinstance(self.size, int) or self.size < 1:
            raise ValueError(f"size must be a positive int, got {self.size!r}")
        validate_topic(self.topic)

    def encode(self, topic: str, payload: Any) -> bytes:
        view = memoryview(payload)
        if view.nbytes != self.size:
            raise FrameError(f"a fixed-size record is {self.size} bytes, got {view.nbytes}")
        return view.tobytes()


class TooManyTopics(FrameError):
    """A frame on a new topic arrived after ``max_topics`` distinct topics were seen."""


class TopicTable:
    """Raw topic bytes -> validated ``str`` topic, for at most ``max_topics`` topics.

    :meth:`lookup` returns the topic; it raises :class:`InvalidTopic` for bytes that are
    not a valid topic (bad UTF-8, empty segment, wildcard) and :class:`TooManyTopics`
    for a new topic once ``max_topics`` are known. ``max_topics=None``: no limit.
    """

    __slots__ = ("_known", "max_topics")

    def __init__(self, max_topics: int | None = DEFAULT_MAX_TOPICS) -> None:
        if max_topics is not None and (isinstance(max_topics, bool) or
                                       not isinstance(max_topics, int) or max_topics < 1):
            raise ValueError(f"max_topics must be a positive int or None, got {max_topics!r}")
        self.max_topics = max_topics
        self._known: dict[bytes, str] = {}

    def lookup(self, raw: bytes) -> str:
        topic = self._known.get(raw)
        if topic is None:
            topic = self.admit(raw, self.parse(raw))
        return topic

    def known(self, raw: bytes) -> str | None:
        """The topic for ``raw`` if it is already known, else None."""
        return self._known.get(raw)

    @staticmethod
    def parse(raw: bytes) -> str:
        """Validate ``raw`` as a topic without remembering it (InvalidTopic if it is not)."""
        try:
            return validate_topic(raw.decode())
        except UnicodeDecodeError:
            raise InvalidTopic(f"topic bytes {raw[:40]!r} are not UTF-8") from None

    def admit(self, raw: bytes, topic: str) -> str:
        """Remember a parsed topic (TooManyTopics once ``max_topics`` are known)."""
        if self.max_topics is not None and len(self._known) >= self.max_topics:
            raise TooManyTopics(f"{self.max_topics} topics known; {topic[:40]!r} is refused")
        self._known[raw] = topic
        return topic

    def add(self, topic: str) -> None:
        """Count ``topic`` (a configured, already valid topic) as known."""
        self._known[topic.encode()] = topic

    def __len__(self) -> int:
        return len(self._known)
