"""Errors of the FIX layer; all derive from :class:`hftalloc.errors.BusError`.

Parse errors carry the session-level reject reason of the FIX spec (``reason``,
SessionRejectReason 373) and the offending tag (``tag``, RefTagID 371) when there is one.
Garbled messages (:class:`FixGarbled`: bad BeginString, BodyLength or CheckSum) are ignored
by a session as the spec requires; other parse errors are answered with a Reject.
"""

from __future__ import annotations

from hftalloc.errors import BusError

__all__ = [
    "FixBadBodyLength",
    "FixBadChecksum",
    "FixBufferTooSmall",
    "FixEncodeError",
    "FixError",
    "FixFieldMissing",
    "FixGarbage",
    "FixGarbled",
    "FixGroupError",
    "FixOversize",
    "FixParseError",
    "FixRawDataError",
    "FixSessionError",
    "FixStoreCorrupted",
    "FixValueError",
]

# SessionRejectReason (373) values used by the codec and the session
REASON_INVALID_TAG = 0
REASON_REQUIRED_TAG_MISSING = 1
REASON_UNDEFINED_TAG = 3
REASON_NO_VALUE = 4
REASON_VALUE_OUT_OF_RANGE = 5
REASON_INCORRECT_FORMAT = 6
REASON_COMPID_PROBLEM = 9
REASON_SENDING_TIME_ACCURACY = 10
REASON_INVALID_MSGTYPE = 11
REASON_TAG_APPEARS_MORE_THAN_ONCE = 13
REASON_TAG_OUT_OF_ORDER = 14
REASON_GROUP_COUNT = 16
REASON_OTHER = 99


class FixError(BusError):
    """Base class of the FIX errors."""


class FixParseError(FixError, ValueError):
    """Bytes that are not a well-formed FIX message."""

    reason: int = REASON_OTHER

    def __init__(self, message: str, tag: int = 0, reason: int | None = None) -> None:
        super().__init__(message)
        self.tag = tag
        if reason is not None:
            self.reason = reason


class FixGarbled(FixParseError):
    """Framing is broken (BeginString, BodyLength or CheckSum): the message is ignored."""


class FixGarbage(FixGarbled):
    """Bytes that do not start with ``8=FIX``."""


class FixBadBodyLength(FixGarbled):
    """BodyLength (9) is missing, malformed or does not match the message."""


class FixBadChecksum(FixGarbled):
    """CheckSum (10) is missing, malformed or wrong."""


class FixOversize(FixGarbled):
    """A message declares more bytes than the configured limit."""


class FixValueError(FixParseError):
    """A field's value has the wrong format for the requested type."""

    reason = REASON_INCORRECT_FORMAT


class FixGroupError(FixParseError):
    """A repeating group's NumInGroup does not match its entries, is more than the
    message can hold, or groups nest deeper than the limit."""

    reason = REASON_GROUP_COUNT


class FixRawDataError(FixParseError):
    """A length/data pair (e.g. RawDataLength 95 / RawData 96) is inconsistent: the length
    is missing or not a number, points past the end of the message, the data is not
    followed by SOH, or a data field comes without its length field."""

    reason = REASON_VALUE_OUT_OF_RANGE


class FixFieldMissing(FixParseError, KeyError):
    """A required tag is not in the message."""

    reason = REASON_REQUIRED_TAG_MISSING

    def __str__(self) -> str:
        return str(self.args[0])


class FixEncodeError(FixError, ValueError):
    """A value cannot be encoded as a FIX field (SOH inside, NaN, wrong type)."""


class FixBufferTooSmall(FixEncodeError):
    """The destination buffer cannot hold the encoded message."""


class FixSessionError(FixError):
    """A session operation that does not fit its state (e.g. sending before logon)."""


class FixStoreCorrupted(FixError):
    """A session store file has a record that fails its checksum (a torn tail is dropped)."""
