"""FIX sessions on the message bus.

Inbound application messages are published on ``fix.<session>.in.<MsgType>`` without a
copy: the connection receives each one straight into a block claimed for that topic and
commits the block once the session handled the message (after ``on_message`` returns, so
after the Fill below); ``hftalloc.fix.parse(msg.payload)`` reads it in place. A message
that did not arrive that way (queued out of order, or a block was not available) is
published as a copy (``SessionStats.inbound_copied``). Trades are published additionally
as :class:`~hftalloc.schemas.Fill` records on ``fix.<session>.fills``.
Outbound, a bus message on ``fix.<session>.send.<MsgType>`` (payload: body fields
``tag=value<SOH>...``) is sent as that MsgType, and a binary NewOrder or Cancel record on
``fix.<session>.orders`` is sent as NewOrderSingle or OrderCancelRequest.
"""

from __future__ import annotations

from typing import Any

from hftalloc.fix._codec import FixMessage
from hftalloc.fix.convert import cancel_fields, fill_from_report, new_order_fields
from hftalloc.fix.session import Application, FixSession
from hftalloc.schemas import CANCEL, FILL, NEW_ORDER, decode, message_type

__all__ = ["BusApplication", "bind_outbound"]


class BusApplication(Application):
    """Publishes a session's inbound application messages on the bus, then calls ``inner``."""

    def __init__(self, bus: Any, inner: Application | None = None, *,
                 fills: bool = True) -> None:
        self.bus = bus
        self.inbound_bus = bus
        self.inner = inner or Application()
        self.fills = fills
        self.published = 0
        self._topics: dict[str, str] = {}

    def _topic(self, session: FixSession, mt: str) -> str:
        key = session.session_id + mt
        topic = self._topics.get(key)
        if topic is None:
            topic = self._topics[key] = f"fix.{session.session_id}.in.{mt}"
        return topic

    def inbound_topic(self, session: FixSession, msg_type: str) -> str | None:
        return self._topic(session, msg_type)

    def on_message(self, session: FixSession, msg: FixMessage) -> None:
        mt = msg.msg_type
        topic = self._topic(session, mt)
        if not session.publish_in_place(msg, topic):
            self.bus.publish(topic, msg.view())
            session.stats.inbound_copied += 1
        self.published += 1
        if self.fills and mt == "8":
            fill = fill_from_report(msg)
            if fill is not None:
                with self.bus.claim(f"fix.{session.session_id}.fills", FILL.size) as out:
                    FILL.encode_into(out.buffer, fill)
        self.inner.on_message(session, msg)

    def on_logon(self, session: FixSession) -> None:
        self.inner.on_logon(session)

    def on_logout(self, session: FixSession) -> None:
        self.inner.on_logout(session)

    def on_admin(self, session: FixSession, msg: FixMessage) -> None:
        self.inner.on_admin(session, msg)


def bind_outbound(bus: Any, session: FixSession) -> list[Any]:
    """Subscribe the session to its outbound topics; returns the subscriptions."""
    sides: dict[int, int] = {}
    prefix = f"fix.{session.session_id}."

    def on_send(msg: Any) -> None:
        mt = msg.topic[len(prefix) + len("send."):]
        session.send(mt, body=bytes(msg.payload))

    def on_order(msg: Any) -> None:
        kind = message_type(msg.payload)
        if kind == NEW_ORDER.msg_type:
            order = decode(msg.payload)
            sides[order.order_id] = order.side
            if len(sides) > 100_000:          # bounded: the oldest order's side is dropped
                sides.pop(next(iter(sides)))
            session.send("D", new_order_fields(order))
        elif kind == CANCEL.msg_type:
            cancel = decode(msg.payload)
            session.send("F", cancel_fields(cancel, sides.pop(cancel.order_id, 1)))

    return [bus.subscribe(prefix + "send.*", on_send), bus.subscribe(prefix + "orders", on_order)]
