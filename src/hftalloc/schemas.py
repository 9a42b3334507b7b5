"""Fixed-layout binary messages for market data and orders, encoded in place.

Every message starts with an 8-byte header ``<BBHI``: format version, message type,
flags (0) and total size; the body follows with fixed little-endian fields. Encoding
writes straight into a buffer (a claimed bus message: ``msg.buffer``) with
``struct.Struct.pack_into``; decoding reads straight from one (``msg.payload``) with
``unpack_from``: no intermediate bytes object for the message. Symbols are up to 8
ASCII characters, NUL-padded. Prices are float64, quantities and ids integers,
timestamps int64 nanoseconds.

    with bus.claim("ord.new.AAPL", NEW_ORDER.size) as msg:
        NEW_ORDER.encode_into(msg.buffer, NewOrder(1, "AAPL", BUY, 189.5, 100, DAY, now))
    ...
    order = NEW_ORDER.decode(msg.payload)        # or decode(msg.payload) for any type

``Codec.dtype`` is the equivalent numpy structured dtype, to view many records (or one)
in place: ``numpy.frombuffer(buf, QUOTE.dtype)`` (drop the array before the subscriber
returns, or retain the message).
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Any, Generic, NamedTuple, TypeVar

import numpy as np

from hftalloc.errors import SchemaError

__all__ = [
    "BUY",
    "CANCEL",
    "CODECS",
    "DAY",
    "FILL",
    "HEADER",
    "IOC",
    "NEW_ORDER",
    "QUOTE",
    "SELL",
    "TRADE",
    "VERSION",
    "Cancel",
    "Codec",
    "Fill",
    "NewOrder",
    "Quote",
    "Trade",
    "codec_for",
    "decode",
    "encode_into",
    "message_type",
    "publish",
]

VERSION = 1
HEADER = struct.Struct("<BBHI")  # version, type, flags, total size
BUY, SELL = 1, 2
DAY, IOC = 0, 1
SYMBOL_BYTES = 8


class Quote(NamedTuple):
    """Top of book for one symbol."""

    symbol: str
    bid_px: float
    bid_qty: int
    ask_px: float
    ask_qty: int
    exch_ns: int


class Trade(NamedTuple):
    """A print on the tape; ``side`` is the aggressor (BUY/SELL)."""

    symbol: str
    price: float
    qty: int
    side: int
    trade_id: int
    exch_ns: int


class NewOrder(NamedTuple):
    """A limit order; ``tif`` is DAY or IOC."""

    order_id: int
    symbol: str
    side: int
    price: float
    qty: int
    tif: int
    client_ns: int


class Cancel(NamedTuple):
    """Cancel the rest of an order."""

    order_id: int
    symbol: str
    client_ns: int


class Fill(NamedTuple):
    """An execution report for (part of) an order."""

    order_id: int
    symbol: str
    side: int
    price: float
    qty: int
    leaves_qty: int
    exec_id: int
    exch_ns: int


T = TypeVar("T", bound=tuple)  # a NamedTuple record type

_NUMPY_CODES = {"B": "u1", "H": "<u2", "I": "<u4", "Q": "<u8", "q": "<i8", "d": "<f8",
                f"{SYMBOL_BYTES}s": f"S{SYMBOL_BYTES}"}


class Codec(Generic[T]):
    """Binary layout of one record type: header + fixed little-endian body."""

    def __init__(self, msg_type: int, record: type[T], body: Sequence[tuple[str, str]]) -> None:
        names = tuple(name for name, _ in body)
        if names != record._fields:  # type: ignore[attr-defined]
            raise ValueError(f"layout fields {names} do not match {record.__name__}")
        self.msg_type = msg_type
        self.record = record
        self.fields = names
        self.struct = struct.Struct("<" + HEADER.format[1:] + "".join(code for _, code in body))
        self.size = self.struct.size
        self._symbol_index = names.index("symbol")
        self._header = (VERSION, msg_type, 0, self.size)
        self.dtype = np.dtype(
            [("version", "u1"), ("type", "u1"), ("flags", "<u2"), ("size", "<u4")]
            + [(name, _NUMPY_CODES[code]) for name, code in body]
        )
        assert self.dtype.itemsize == self.size

    # -- encoding -------------------------------------------------------------------------
    def encode_into(self, buffer: Any, value: T, offset: int = 0) -> int:
        """Write ``value`` (header included) into ``buffer`` at ``offset``; returns the size."""
        fields = list(value)
        fields[self._symbol_index] = _symbol_bytes(fields[self._symbol_index])
        try:
            self.struct.pack_into(buffer, offset, *self._header, *fields)
        except struct.error as exc:
            raise SchemaError(f"{self.record.__name__}: cannot encode {value!r}: {exc}") from None
        return self.size

    def pack_into(self, buffer: Any, offset: int, *fields: Any) -> None:
        """Fast path: raw field values in layout order (symbol as bytes of <= 8 chars)."""
        self.struct.pack_into(buffer, offset, *self._header, *fields)

    # -- decoding -------------------------------------------------------------------------
    def unpack_from(self, buffer: Any, offset: int = 0) -> tuple[Any, ...]:
        """Raw body fields (symbol as NUL-padded bytes), after checking the header."""
        values = self._unpack_checked(buffer, offset)
        return values[4:]

    def decode(self, buffer: Any, offset: int = 0) -> T:
        """The record stored in ``buffer`` at ``offset``."""
        values = list(self._unpack_checked(buffer, offset)[4:])
        values[self._symbol_index] = values[self._symbol_index].rstrip(b"\0").decode("ascii")
        return self.record._make(values)  # type: ignore[attr-defined,no-any-return]

    def _unpack_checked(self, buffer: Any, offset: int) -> tuple[Any, ...]:
        try:
            values = self.struct.unpack_from(buffer, offset)
        except struct.error as exc:
            raise SchemaError(f"{self.record.__name__} needs {self.size} B at offset {offset}: "
                              f"{exc}") from None
        version, msg_type, _, size = values[:4]
        if version != VERSION:
            raise SchemaError(f"unsupported message version {version} (expected {VERSION})")
        if msg_type != self.msg_type or size != self.size:
            raise SchemaError(f"not a {self.record.__name__}: type={msg_type} size={size} "
                              f"(expected type={self.msg_type} size={self.size})")
        return values

    def __repr__(self) -> str:
        return f"<Codec {self.record.__name__} type={self.msg_type} size={self.size} B>"


def _symbol_bytes(symbol: str | bytes) -> bytes:
    try:
        raw = symbol.encode("ascii") if isinstance(symbol, str) else bytes(symbol)
    except (UnicodeEncodeError, TypeError):
        raw = b"\0"
    if not raw or len(raw) > SYMBOL_BYTES or b"\0" in raw:
        raise SchemaError(f"symbol {symbol!r}: 1 to {SYMBOL_BYTES} ASCII characters, no NUL")
    return raw


QUOTE: Codec[Quote] = Codec(1, Quote, [("symbol", "8s"), ("bid_px", "d"), ("bid_qty", "I"),
                                       ("ask_px", "d"), ("ask_qty", "I"), ("exch_ns", "q")])
TRADE: Codec[Trade] = Codec(2, Trade, [("symbol", "8s"), ("price", "d"), ("qty", "I"),
                                       ("side", "B"), ("trade_id", "Q"), ("exch_ns", "q")])
NEW_ORDER: Codec[NewOrder] = Codec(3, NewOrder, [("order_id", "Q"), ("symbol", "8s"),
                                                 ("side", "B"), ("price", "d"), ("qty", "I"),
                                                 ("tif", "B"), ("client_ns", "q")])
CANCEL: Codec[Cancel] = Codec(4, Cancel, [("order_id", "Q"), ("symbol", "8s"),
                                          ("client_ns", "q")])
FILL: Codec[Fill] = Codec(5, Fill, [("order_id", "Q"), ("symbol", "8s"), ("side", "B"),
                                    ("price", "d"), ("qty", "I"), ("leaves_qty", "I"),
                                    ("exec_id", "Q"), ("exch_ns", "q")])

CODECS: dict[int, Codec[Any]] = {c.msg_type: c for c in (QUOTE, TRADE, NEW_ORDER, CANCEL, FILL)}
_BY_RECORD: dict[type, Codec[Any]] = {c.record: c for c in CODECS.values()}


def codec_for(value_or_type: Any) -> Codec[Any]:
    """The codec of a record (or record type)."""
    kind = value_or_type if isinstance(value_or_type, type) else type(value_or_type)
    try:
        return _BY_RECORD[kind]
    except KeyError:
        raise SchemaError(f"no binary layout for {kind.__name__}") from None


def message_type(buffer: Any, offset: int = 0) -> int:
    """The type id in the header at ``offset`` (SchemaError on a bad header)."""
    try:
        version, msg_type, _, _ = HEADER.unpack_from(buffer, offset)
    except struct.error as exc:
        raise SchemaError(f"no message header at offset {offset}: {exc}") from None
    if version != VERSION:
        raise SchemaError(f"unsupported message version {version} (expected {VERSION})")
    return msg_type  # type: ignore[no-any-return]


def decode(buffer: Any, offset: int = 0) -> Any:
    """Decode whatever record the header announces."""
    msg_type = message_type(buffer, offset)
    try:
        codec = CODECS[msg_type]
    except KeyError:
        raise SchemaError(f"unknown message type {msg_type}") from None
    return codec.decode(buffer, offset)


def encode_into(buffer: Any, value: Any, offset: int = 0) -> int:
    """Encode any record into ``buffer``; returns the bytes written."""
    return codec_for(value).encode_into(buffer, value, offset)


def publish(bus: Any, topic: str, value: Any) -> int | None:
    """Encode ``value`` straight into a claimed bus message and publish it.

    Returns the sequence number (None if the bus's ``drop`` policy dropped it).
    """
    codec = codec_for(value)
    msg = bus.claim(topic, codec.size)
    if msg is None:
        return None
    with msg:
        codec.encode_into(msg.buffer, value)
    return msg.seq  # type: ignore[no-any-return]
