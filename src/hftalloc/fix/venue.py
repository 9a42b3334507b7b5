"""An exchange simulator behind a FIX 4.4 acceptor, for tests and demos.

NewOrderSingle gets an ExecutionReport ``New`` (ack) and then either a fill (the whole
quantity at the order's price, or at the synthetic touch for a market order) or, for an IOC
limit order that does not reach the synthetic touch, a cancel. OrderCancelRequest cancels a
resting order (else OrderCancelReject), OrderCancelReplaceRequest replaces it.
MarketDataRequest gets a MarketDataSnapshotFullRefresh of ``depth`` levels per side and, for
a subscription, MarketDataIncrementalRefresh updates every ``md_interval`` seconds.
"""

from __future__ import annotations

import asyncio
import itertools
import os
from dataclasses import dataclass, field
from typing import Any

from hftalloc.fix._codec import FixMessage, utc_timestamp
from hftalloc.fix.endpoints import FixAcceptor
from hftalloc.fix.session import Application, FixSession

__all__ = ["Venue", "VenueApp", "VenueStats"]


@dataclass
class VenueStats:
    orders: int = 0
    acks: int = 0
    fills: int = 0
    cancels: int = 0
    replaces: int = 0
    cancel_rejects: int = 0
    md_requests: int = 0
    md_snapshots: int = 0
    md_updates: int = 0


@dataclass
class _Order:
    order_id: str
    cl_ord_id: str
    symbol: str
    side: str
    qty: int
    price: float


@dataclass
class VenueApp(Application):
    """The matching logic (shared by every session of one venue)."""

    mid: float = 100.0
    tick: float = 0.01
    depth: int = 10
    md_interval: float = 0.05
    fill: bool = True
    stats: VenueStats = field(default_factory=VenueStats)
    _ids: Any = field(default_factory=lambda: itertools.count(1))
    _open: dict[tuple[str, str], _Order] = field(default_factory=dict)
    _md_tasks: dict[tuple[str, str], asyncio.Task[None]] = field(default_factory=dict)

    def on_message(self, session: FixSession, msg: FixMessage) -> None:
        mt = msg.msg_type
        if mt == "D":
            self._new_order(session, msg)
        elif mt == "F":
            self._cancel(session, msg)
        elif mt == "G":
            self._replace(session, msg)
        elif mt == "V":
            self._market_data(session, msg)

    def on_logout(self, session: FixSession) -> None:
        for key in [k for k in self._md_tasks if k[0] == session.session_id]:
            self._md_tasks.pop(key).cancel()

    # -- orders -----------------------------------------------------------------------------
    def _report(self, session: FixSession, o: _Order, exec_type: str, status: str,
                leaves: int, cum: int, last_px: float = 0.0, last_qty: int = 0,
                cl_ord_id: str | None = None, orig: str | None = None) -> None:
        fields: list[tuple[int, Any]] = [
            (37, o.order_id), (11, cl_ord_id or o.cl_ord_id)]
        if orig:
            fields.append((41, orig))
        fields += [(17, f"E{next(self._ids)}"), (150, exec_type), (39, status),
                   (55, o.symbol), (54, o.side), (38, o.qty), (44, o.price),
                   (151, leaves), (14, cum), (6, last_px if cum else 0)]
        if last_qty:
            fields += [(31, last_px), (32, last_qty)]
        fields.append((60, utc_timestamp()))
        session.send("8", fields)

    def _new_order(self, session: FixSession, msg: FixMessage) -> None:
        self.stats.orders += 1
        qty = int(msg.get_float(38, 0))
        ord_type = msg.get_str(40)
        side = msg.get_str(54)
        price = msg.get_float(44, 0.0) if ord_type != "1" else self._touch(side)
        o = _Order(f"O{next(self._ids)}", msg.get_str(11), msg.get_str(55), side, qty, price)
        self._report(session, o, "0", "0", qty, 0)
        self.stats.acks += 1
        crosses = (price >= self._touch("1") if side == "1" else price <= self._touch("2"))
        if self.fill and (crosses or msg.get_str(59, "0") != "3"):
            self._report(session, o, "F", "2", 0, qty, price, qty)
            self.stats.fills += 1
        elif msg.get_str(59, "0") == "3":
            self._report(session, o, "4", "4", 0, 0)
            self.stats.cancels += 1
        else:
            self._open[(session.session_id, o.cl_ord_id)] = o

    def _touch(self, side: str) -> float:
        """Best ask for a buyer (side 1), best bid for a seller."""
        return round(self.mid + self.tick if side == "1" else self.mid - self.tick, 8)

    def _cancel(self, session: FixSession, msg: FixMessage) -> None:
        o = self._open.pop((session.session_id, msg.get_str(41)), None)
        if o is None:
            session.send("9", [(37, "NONE"), (11, msg.get_str(11)), (41, msg.get_str(41)),
                               (39, "8"), (434, "1"), (102, "1"), (58, "unknown order")])
            self.stats.cancel_rejects += 1
            return
        self._report(session, o, "4", "4", 0, 0, cl_ord_id=msg.get_str(11), orig=o.cl_ord_id)
        self.stats.cancels += 1

    def _replace(self, session: FixSession, msg: FixMessage) -> None:
        key = (session.session_id, msg.get_str(41))
        o = self._open.pop(key, None)
        if o is None:
            session.send("9", [(37, "NONE"), (11, msg.get_str(11)), (41, msg.get_str(41)),
                               (39, "8"), (434, "2"), (102, "1"), (58, "unknown order")])
            self.stats.cancel_rejects += 1
            return
        orig = o.cl_ord_id
        o.cl_ord_id = msg.get_str(11)
        o.qty = int(msg.get_float(38, o.qty))
        o.price = msg.get_float(44, o.price)
        self._open[(session.session_id, o.cl_ord_id)] = o
        self._report(session, o, "5", "0", o.qty, 0, orig=orig)
        self.stats.replaces += 1

    # -- market data ------------------------------------------------------------------------
    def _market_data(self, session: FixSession, msg: FixMessage) -> None:
        self.stats.md_requests += 1
        req_id = msg.get_str(262)
        depth = msg.get_int(264, self.depth) or self.depth
        symbols = [g.get_str(55) for g in msg.group(146)]
        key = (session.session_id, req_id)
        if msg.get_str(263) == "2":
            task = self._md_tasks.pop(key, None)
            if task is not None:
                task.cancel()
            return
        for sym in symbols:
            session.send("W", self.snapshot_fields(req_id, sym, depth))
            self.stats.md_snapshots += 1
        if msg.get_str(263) == "1" and key not in self._md_tasks:
            self._md_tasks[key] = asyncio.get_running_loop().create_task(
                self._stream(session, req_id, symbols))

    def snapshot_fields(self, req_id: str, symbol: str, depth: int) -> list[tuple[int, Any]]:
        fields: list[tuple[int, Any]] = [(262, req_id), (55, symbol), (268, 2 * depth)]
        for level in range(depth):
            fields += [(269, "0"), (270, round(self.mid - self.tick * (level + 1), 8)),
                       (271, 100 * (level + 1))]
            fields += [(269, "1"), (270, round(self.mid + self.tick * (level + 1), 8)),
                       (271, 100 * (level + 1))]
        return fields

    async def _stream(self, session: FixSession, req_id: str, symbols: list[str]) -> None:
        step = 0
        while session.is_logged_on:
            await asyncio.sleep(self.md_interval)
            step += 1
            fields: list[tuple[int, Any]] = [(262, req_id), (268, len(symbols))]
            for sym in symbols:
                fields += [(279, "1"), (269, "0" if step % 2 else "1"), (55, sym),
                           (270, round(self.mid - self.tick if step % 2 else
                                       self.mid + self.tick, 8)),
                           (271, 100 + step % 7)]
            session.send("X", fields)
            self.stats.md_updates += 1


class Venue:
    """A :class:`VenueApp` served by a :class:`FixAcceptor` (SenderCompID ``sender``)."""

    def __init__(self, *, host: str = "127.0.0.1", port: int = 0, sender: str = "VENUE",
                 allowed: set[str] | None = None,
                 store_dir: str | os.PathLike[str] | None = None, heartbeat: int = 30,
                 app: VenueApp | None = None, **session_defaults: Any) -> None:
        self.app = app or VenueApp()
        defaults = dict(session_defaults)
        defaults.setdefault("heartbeat", heartbeat)
        self.acceptor = FixAcceptor(sender, self.app, host=host, port=port,
                                    store_dir=store_dir, allowed=allowed,
                                    session_defaults=defaults)

    @property
    def port(self) -> int:
        return self.acceptor.port

    async def start(self) -> int:
        return await self.acceptor.start()

    async def stop(self) -> None:
        for task in self.app._md_tasks.values():
            task.cancel()
        await self.acceptor.stop()

    def report(self) -> str:
        """Venue and session statistics, one block of text."""
        a = self.acceptor
        lines = [f"venue {a.sender} on {a.host}:{a.port}: "
                 f"{a.connections_total} connections ({a.connections_refused} refused)",
                 "  orders: " + " ".join(f"{k}={v}" for k, v in vars(self.app.stats).items())]
        for sess in a.sessions.values():
            lines.append(f"  session {sess.session_id} ({sess.state}, out={sess.next_out} "
                         f"in={sess.next_in}): {sess.stats.format()}")
        lines.append(f"  unbound connections: {a.stats.format()}")
        return "\n".join(lines)
