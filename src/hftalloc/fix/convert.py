"""Conversions between FIX messages and the binary schemas of :mod:`hftalloc.schemas`."""

from __future__ import annotations

import calendar
import time
from typing import Any

from hftalloc.fix._codec import FixMessage, utc_timestamp
from hftalloc.schemas import BUY, DAY, IOC, SELL, Cancel, Fill, NewOrder, Quote

__all__ = [
    "cancel_fields",
    "fill_from_report",
    "new_order_fields",
    "new_order_from_fix",
    "parse_utc_ns",
    "quote_from_snapshot",
]

_SIDE_TO_FIX = {BUY: "1", SELL: "2"}
_SIDE_FROM_FIX = {"1": BUY, "2": SELL}


def parse_utc_ns(text: str) -> int:
    """Nanoseconds since the epoch for a FIX UTCTimestamp (``YYYYMMDD-HH:MM:SS[.fff...]``)."""
    try:
        base = calendar.timegm(time.strptime(text[:17], "%Y%m%d-%H:%M:%S"))
        frac = text[18:] if len(text) > 18 else ""
        ns = int((frac + "000000000")[:9]) if frac else 0
    except ValueError:
        raise ValueError(f"not a FIX UTCTimestamp: {text!r}") from None
    return base * 1_000_000_000 + ns


def _id_number(text: str) -> int:
    digits = "".join(c for c in text if c.isdigit())
    return int(digits[-18:]) if digits else 0


def new_order_fields(order: NewOrder) -> list[tuple[int, Any]]:
    """NewOrderSingle (D) body fields for a :class:`~hftalloc.schemas.NewOrder`."""
    return [(11, str(order.order_id)), (55, order.symbol), (54, _SIDE_TO_FIX[order.side]),
            (38, order.qty), (40, "2"), (44, order.price), (59, "3" if order.tif == IOC else "0"),
            (60, utc_timestamp(order.client_ns or time.time_ns()))]


def cancel_fields(cancel: Cancel, side: int = BUY) -> list[tuple[int, Any]]:
    """OrderCancelRequest (F) body fields (ClOrdID ``<order_id>C``, OrigClOrdID the order)."""
    return [(41, str(cancel.order_id)), (11, f"{cancel.order_id}C"), (55, cancel.symbol),
            (54, _SIDE_TO_FIX[side]), (60, utc_timestamp(cancel.client_ns or time.time_ns()))]


def new_order_from_fix(msg: FixMessage) -> NewOrder:
    """A NewOrder from a NewOrderSingle (numeric part of ClOrdID as order_id)."""
    return NewOrder(_id_number(msg.get_str(11)), msg.get_str(55), _SIDE_FROM_FIX[msg.get_str(54)],
                    msg.get_float(44, 0.0), int(msg.get_float(38)),
                    IOC if msg.get_str(59, "0") == "3" else DAY,
                    parse_utc_ns(msg.get_str(60)))


def fill_from_report(msg: FixMessage) -> Fill | None:
    """A Fill from an ExecutionReport that reports a trade (ExecType F), else None."""
    if msg.get_str(150) != "F":
        return None
    ts = msg.get_str(60, "")
    return Fill(_id_number(msg.get_str(11)), msg.get_str(55), _SIDE_FROM_FIX[msg.get_str(54)],
                msg.get_float(31, msg.get_float(6, 0.0)), int(msg.get_float(32, 0)),
                int(msg.get_float(151)), _id_number(msg.get_str(17)),
                parse_utc_ns(ts) if ts else time.time_ns())


def quote_from_snapshot(msg: FixMessage) -> Quote:
    """Top of book from a MarketDataSnapshotFullRefresh (W)."""
    bid_px = ask_px = 0.0
    bid_qty = ask_qty = 0
    for entry in msg.group(268):
        kind = entry.get_str(269)
        px = entry.get_float(270, 0.0)
        qty = int(entry.get_float(271, 0))
        if kind == "0" and (bid_qty == 0 or px > bid_px):
            bid_px, bid_qty = px, qty
        elif kind == "1" and (ask_qty == 0 or px < ask_px):
            ask_px, ask_qty = px, qty
    return Quote(msg.get_str(55), bid_px, bid_qty, ask_px, ask_qty, time.time_ns())
