"""Topic names and subscription patterns.

A topic is a dot-separated list of non-empty segments (``md.quote.AAPL``). A pattern
may also use two wildcards: ``*`` matches exactly one segment (``md.*.AAPL``) and
``>`` as the last segment matches one or more trailing segments (``md.>``).
Matching is resolved once per topic and cached by the bus, so its cost is paid on
the first message of a topic, not on every message.
"""

from __future__ import annotations

from hftalloc.errors import InvalidTopic, TopicTypeError

__all__ = ["is_pattern", "matches", "split_pattern", "validate_topic"]

ONE = "*"
REST = ">"


def _segments(text: object, what: str) -> list[str]:
    if not isinstance(text, str):
        raise TopicTypeError(f"{what} must be a str, not {type(text).__name__}")
    parts = text.split(".")
    if not text or "" in parts:
        raise InvalidTopic(f"{what} {text!r} must be non-empty dot-separated segments")
    return parts


def validate_topic(topic: object) -> str:
    """Return ``topic`` if it is a valid concrete topic (no wildcards), else raise."""
    parts = _segments(topic, "topic")
    for part in parts:
        if ONE in part or REST in part:
            raise InvalidTopic(f"topic {topic!r} contains a wildcard; publish to concrete topics")
    return topic  # type: ignore[return-value]


def split_pattern(pattern: object) -> tuple[str, ...]:
    """Validate a subscription pattern and return its segments."""
    parts = _segments(pattern, "pattern")
    for i, part in enumerate(parts):
        if part in (ONE, REST):
            if part == REST and i != len(parts) - 1:
                raise InvalidTopic(f"pattern {pattern!r}: '>' is only allowed as the last segment")
        elif ONE in part or REST in part:
            raise InvalidTopic(f"pattern {pattern!r}: wildcards must be whole segments")
    return tuple(parts)


def is_pattern(pattern: str) -> bool:
    """True when ``pattern`` (already validated) contains a wildcard segment."""
    return any(part in (ONE, REST) for part in pattern.split("."))


def matches(pattern: str | tuple[str, ...], topic: str) -> bool:
    """Does ``topic`` match ``pattern``? Both are validated."""
    pat = split_pattern(pattern) if isinstance(pattern, str) else pattern
    parts = validate_topic(topic).split(".")
    for i, want in enumerate(pat):
        if want == REST:
            return len(parts) > i
        if i >= len(parts) or (want != ONE and want != parts[i]):
            return False
    return len(parts) == len(pat)
