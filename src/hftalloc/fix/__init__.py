"""FIX 4.4 over the message bus: compiled codec, sessions over asyncio, bus bridge, venue.

    from hftalloc.fix import FixEncoder, parse
    enc = FixEncoder("CLIENT", "VENUE")
    wire = enc.encode("D", 1, [(11, "ord-1"), (55, "AAPL"), (54, "1"), (38, 100), (40, "2"),
                                (44, 189.5), (60, "20260101-00:00:00.000")])
    msg = parse(wire)
    msg.msg_type, msg.get_str(55), msg.get_float(44), msg.get_decimal(44)
"""

from hftalloc.fix._codec import (
    DEFAULT_MAX_FIELDS,
    DEFAULT_MAX_SIZE,
    FixEncoder,
    FixGroup,
    FixMessage,
    checksum,
    frame,
    parse,
    utc_timestamp,
)
from hftalloc.fix.errors import (
    FixBadBodyLength,
    FixBadChecksum,
    FixBufferTooSmall,
    FixEncodeError,
    FixError,
    FixFieldMissing,
    FixGarbage,
    FixGarbled,
    FixGroupError,
    FixOversize,
    FixParseError,
    FixRawDataError,
    FixSessionError,
    FixStoreCorrupted,
    FixValueError,
)
from hftalloc.fix.groups import GROUPS, MAX_GROUP_DEPTH

__all__ = [
    "DEFAULT_MAX_FIELDS",
    "DEFAULT_MAX_SIZE",
    "GROUPS",
    "MAX_GROUP_DEPTH",
    "FixBadBodyLength",
    "FixBadChecksum",
    "FixBufferTooSmall",
    "FixEncodeError",
    "FixEncoder",
    "FixError",
    "FixFieldMissing",
    "FixGarbage",
    "FixGarbled",
    "FixGroup",
    "FixGroupError",
    "FixMessage",
    "FixOversize",
    "FixParseError",
    "FixRawDataError",
    "FixSessionError",
    "FixStoreCorrupted",
    "FixValueError",
    "checksum",
    "frame",
    "parse",
    "utc_timestamp",
]
