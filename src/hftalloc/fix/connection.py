"""One TCP connection carrying a FIX session: the receive path (asyncio.BufferedProtocol).

The transport writes straight into an :class:`~hftalloc.fix._inbound.InboundBuffer` and
messages are parsed where they landed; nothing is copied on the way in.

- When the session's application publishes inbound messages on a bus
  (``Application.inbound_bus``, e.g. :class:`~hftalloc.fix.bridge.BusApplication`), each
  message lands in a block claimed from that bus for its topic
  (``fix.<session>.in.<MsgType>``) and is committed as it is once the session has handled
  it: the subscribers read the very bytes the socket delivered. Reads are sized to end
  where the message ends (the size of the previous message until BodyLength is in), so a
  block holds one message; bytes of the next message read with it are carried into the
  next block (one bounded move), as are the bytes read so far when the message turns out
  larger than its block or of another MsgType than the block was claimed for.
- Otherwise (and before Logon binds the connection to a session) the connection reads
  into a buffer of its own, ``max(64 KiB, max_message_size)`` bytes, many messages per read,
  each parsed in place; an incomplete tail is moved to the front once (bounded by the
  message size limit).

Garbage before BeginString is skipped and counted; a message with a bad BodyLength or
CheckSum is dropped and counted (the spec's "ignore garbled messages"); a message that
declares more than ``max_message_size`` bytes gets a Logout and the connection ends.
A view of a message kept by an application keeps its buffer: such a buffer is never
written again (the connection takes a new one).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from hftalloc.fix._codec import FixMessage, frame, parse
from hftalloc.fix._inbound import InboundBuffer
from hftalloc.fix.errors import (
    FixBadBodyLength,
    FixBadChecksum,
    FixGarbled,
    FixOversize,
    FixParseError,
)
from hftalloc.fix.session import FixSession
from hftalloc.fix.spec import ADMIN_TYPES
from hftalloc.fix.stats import SessionStats

__all__ = ["FixConnection"]

log = logging.getLogger("hftalloc.fix")

# binds the first message of an acceptor's connection to a session (None: refuse)
Binder = Callable[["FixConnection", Any], FixSession | None]

_MIN_PROBE = 64          # bytes read for a message whose size is not known yet (at least)
_MIN_FREE = 4096         # an own buffer with less room left is compacted before a read


class FixConnection(asyncio.BufferedProtocol):
    """Frames bytes into messages for a session (an initiator's, or one bound on Logon)."""

    def __init__(self, session: FixSession | None = None, *, binder: Binder | None = None,
                 max_message_size: int = 65536, stats: SessionStats | None = None,
                 on_lost: Callable[[FixConnection], None] | None = None) -> None:
        self.session = session
        self.binder = binder
        self.max_message_size = max_message_size
        # counters before a session is bound (garbage, refused connections) go here
        self.stats = stats if stats is not None else SessionStats()
        self.transport: asyncio.Transport | None = None
        self._on_lost = on_lost
        self._closing = False
        self.refuse = False       # close as soon as the connection is made (over the limit)
        self._capacity = max(65536, max_message_size)
        self._buf: InboundBuffer | None = None
        self._start = 0           # first byte not processed yet
        self._end = 0             # bytes received into _buf
        self._total = 0           # declared size of the message in a block (0: unknown)
        self._current: FixMessage | None = None
        self._publish_topic: str | None = None
        self._guess_type = ""     # MsgType of the last application message
        self._guess_size = 256    # its size
        self._topics: dict[str, str | None] = {}

    # -- asyncio.Protocol -------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        if self.refuse:
            self._closing = True
            transport.close()
            return
        if self.session is not None:
            self.session.attach(self.transport)  # type: ignore[arg-type]

    def connection_lost(self, exc: Exception | None) -> None:
        self._closing = True
        if self.session is not None:
            self.session.detach()
        self.transport = None
        self._drop_buffer()
        if self._on_lost is not None:
            self._on_lost(self)

    def close(self) -> None:
        self._closing = True
        if self.transport is not None:
            self.transport.close()

    # -- asyncio.BufferedProtocol -----------------------------------------------------------
    def get_buffer(self, sizehint: int) -> InboundBuffer:
        buf = self._buf
        if buf is None or not buf.is_block:
            bus = self._inbound_bus()
            if bus is not None:
                block = self._into_block(bus)
                if block is not None:
                    buf = block
        if buf is None:
            buf = self._buf = InboundBuffer.own(self._capacity)
            self._start = self._end = 0
        if buf.is_block:
            # the rest of the message, or (size unknown) the size of the previous one
            hi = self._total or max(self._end + _MIN_PROBE, self._guess_size)
            return buf.arm(self._end, min(hi, buf.capacity))
        return self._arm_own()

    def buffer_updated(self, nbytes: int) -> None:
        buf = self._buf
        if buf is None:
            return
        buf.received(nbytes)
        self._end += nbytes
        st = self.session.stats if self.session is not None else self.stats
        st.bytes_in += nbytes
        st.inbound_reads += 1
        # a transport that still holds its view of the window (uvloop, until this call
        # returns) must let go before the bytes are moved or handed to the bus
        if not buf.when_written(self._after_write):
            self._process()

    def _after_write(self) -> None:
        try:
            self._process()
        except Exception as exc:   # runs outside the transport's callback: contain it
            log.exception("FIX receive path failed")
            loop = asyncio.get_event_loop()
            loop.call_exception_handler({"message": "FIX receive path failed",
                                         "exception": exc, "protocol": self})
            self.close()

    # -- own buffer -------------------------------------------------------------------------
    def _arm_own(self) -> InboundBuffer:
        buf = self._buf
        assert buf is not None
        if self._start == self._end and buf.idle:
            self._start = self._end = 0
            buf.set_length(0)
        elif buf.capacity - self._end < _MIN_FREE or (not buf.idle and self._start == self._end):
            self._compact()
            buf = self._buf
            assert buf is not None
        return buf.arm(self._end, buf.capacity)

    def _compact(self) -> None:
        """Move the unprocessed tail to the front (or into a new buffer while views of
        this one are alive)."""
        buf = self._buf
        assert buf is not None
        n = self._end - self._start
        st = self.session.stats if self.session is not None else self.stats
        if buf.idle:
            buf.move(self._start, self._end, 0)
        else:
            fresh = InboundBuffer.own(self._capacity)
            buf.copy_into(fresh, self._start, self._end, 0)
            self._buf = fresh
        st.inbound_moved_bytes += n
        self._start, self._end = 0, n

    def _process(self) -> None:
        if self._closing or self._buf is None:
            return
        if self._buf.is_block:
            self._process_block()
        else:
            self._process_own()

    def _process_own(self) -> None:
        buf = self._buf
        assert buf is not None
        st = self.session.stats if self.session is not None else self.stats
        n = self._end
        pos = self._start
        limit = self.max_message_size
        while pos < n and not self._closing:
            try:
                skip, size = frame(buf, pos, n, limit)
            except FixOversize:
                st.oversize += 1
                self._fatal(st, "message larger than the size limit")
                return
            except FixGarbled as exc:
                self._count_garbled(st, exc)
                pos = pos + exc.skip + 1  # type: ignore[attr-defined]
                continue
            if skip:
                st.garbage_bytes += skip
            if size == 0:
                pos += skip
                break
            start = pos + skip
            pos = start + size
            self._deliver(buf, start, pos, st)
            st = self.session.stats if self.session is not None else self.stats
        self._start = pos
        if self._closing:
            self._drop_buffer()

    # -- bus blocks -------------------------------------------------------------------------
    def _inbound_bus(self) -> Any:
        sess = self.session
        if sess is None or self._closing:
            return None
        return getattr(sess.app, "inbound_bus", None)

    def _topic(self, msg_type: str) -> str | None:
        """The bus topic of an application message type (None for session-level ones)."""
        topic = self._topics.get(msg_type, "")
        if topic == "":
            sess = self.session
            topic = None
            if sess is not None and msg_type not in ADMIN_TYPES:
                topic = sess.app.inbound_topic(sess, msg_type)
            self._topics[msg_type] = topic
        return topic

    def _claim(self, bus: Any, topic: str, size: int) -> InboundBuffer | None:
        st = self.session.stats if self.session is not None else self.stats
        try:
            block = InboundBuffer.claim(bus, topic, max(size, _MIN_PROBE))
        except Exception as exc:   # full (policy raise/block), closed, too large: own buffer
            log.debug("FIX receive: no bus block for %s (%s)", topic, exc)
            block = None
        if block is None:
            st.inbound_claim_failures += 1
        return block

    def _guess_topic(self) -> str | None:
        sess = self.session
        if sess is None:
            return None
        return self._topic(self._guess_type or ("8" if sess.initiator else "D"))

    def _into_block(self, bus: Any) -> InboundBuffer | None:
        """Switch from the own buffer to a claimed block, carrying unprocessed bytes."""
        topic = self._guess_topic()
        if topic is None:
            return None
        old = self._buf
        pending = self._end - self._start
        block = self._claim(bus, topic, max(self._guess_size, pending))
        if block is None:
            return None
        if old is not None and pending:
            if pending > block.capacity:
                block.abort()
                return None
            old.copy_into(block, self._start, self._end, 0)
            st = self.session.stats if self.session is not None else self.stats
            st.inbound_moved_bytes += pending
        self._release(old)
        self._buf = block
        self._start, self._end, self._total = 0, pending, 0
        return block

    def _process_block(self) -> None:
        st = self.session.stats if self.session is not None else self.stats
        limit = self.max_message_size
        while not self._closing and self._end:
            buf = self._buf
            assert buf is not None
            if not buf.is_block:             # the carry went to the own buffer
                self._process_own()
                return
            end = self._end
            try:
                skip, size, total, mt = buf.peek(0, end, limit)
            except FixOversize:
                st.oversize += 1
                self._fatal(st, "message larger than the size limit")
                return
            except FixGarbled as exc:
                self._count_garbled(st, exc)
                self._shift(exc.skip + 1, st)  # type: ignore[attr-defined]
                continue
            if skip:
                st.garbage_bytes += skip
                self._shift(skip, st)
                continue
            self._total = total
            if total == 0:
                return                       # BodyLength not in yet
            if mt is None and end < total:
                return                       # MsgType not in yet: read on
            topic = self._topic(mt) if mt is not None else None
            if topic is not None and mt is not None:
                self._guess_type, self._guess_size = mt, total
            if total > buf.capacity or (topic is not None and topic != buf.topic):
                if not self._reclaim(topic or buf.topic or "", total, st):
                    self._process_own()      # no block: the own buffer takes over
                    return
                continue
            if size == 0:
                return                       # the rest of the message: next read
            self._deliver_block(size, st)

    def _shift(self, n: int, st: SessionStats) -> None:
        """Drop the first ``n`` bytes of the block (garbage, a garbled message)."""
        buf = self._buf
        assert buf is not None
        buf.move(n, self._end, 0)
        st.inbound_moved_bytes += self._end - n
        self._end -= n
        self._total = 0

    def _reclaim(self, topic: str, total: int, st: SessionStats) -> bool:
        """Continue the message in a block for ``topic`` of ``total`` bytes at least."""
        old = self._buf
        assert old is not None
        bus = self._inbound_bus()
        block = self._claim(bus, topic, total) if bus is not None else None
        if block is None or block.capacity < total:
            if block is not None:
                block.abort()
            fresh = InboundBuffer.own(self._capacity)
            old.copy_into(fresh, 0, self._end, 0)
            self._release(old)
            self._buf = fresh
            self._start = 0
            self._total = 0
            return False
        old.copy_into(block, 0, self._end, 0)
        st.inbound_moved_bytes += self._end
        st.inbound_reclaims += 1
        self._release(old)
        self._buf = block
        return True

    def _deliver_block(self, size: int, st: SessionStats) -> None:
        buf = self._buf
        assert buf is not None and self.session is not None
        end = self._end
        self._publish_topic = None
        self._deliver(buf, 0, size, st, in_place=True)
        topic = self._publish_topic
        self._publish_topic = None
        nxt: InboundBuffer | None = None
        extra = end - size
        if extra:                              # bytes of the next message: carry them
            bus = self._inbound_bus()
            guess = self._guess_topic()
            if bus is not None and guess is not None:
                nxt = self._claim(bus, guess, max(self._guess_size, extra))
                if nxt is not None and nxt.capacity < extra:
                    nxt.abort()
                    nxt = None
            if nxt is None:
                nxt = InboundBuffer.own(self._capacity)
            buf.copy_into(nxt, size, end, 0)
            st.inbound_moved_bytes += extra
        self._buf = nxt
        self._start, self._end, self._total = 0, extra, 0
        if topic is not None and buf.idle:
            buf.set_length(size)
            buf.commit()
            st.inbound_in_place += 1
        elif topic is not None:                # a view of the message is kept: copy
            bus = self._inbound_bus()
            if bus is not None:
                with memoryview(buf) as view:
                    bus.publish(topic, view[:size])
            st.inbound_copied += 1
        else:
            self._release(buf)

    def _in_place(self, msg: FixMessage, topic: str) -> bool:
        """The session's hook: publish ``msg`` (being handled) from its block."""
        buf = self._buf
        if msg is not self._current or buf is None or not buf.is_block or topic != buf.topic:
            return False
        self._publish_topic = topic
        return True

    # -- helpers ----------------------------------------------------------------------------
    def _release(self, buf: InboundBuffer | None) -> None:
        """Give an unpublished buffer back; one with live views stays with them."""
        if buf is not None and buf.idle and buf.address:
            buf.abort()

    def _drop_buffer(self) -> None:
        buf, self._buf = self._buf, None
        self._start = self._end = self._total = 0
        if buf is not None and not buf.wexports:
            self._release(buf)

    def _count_garbled(self, st: SessionStats, exc: FixGarbled) -> None:
        st.garbage_bytes += exc.skip  # type: ignore[attr-defined]
        st.garbled += 1
        if isinstance(exc, FixBadChecksum):
            st.bad_checksum += 1
        elif isinstance(exc, FixBadBodyLength):
            st.bad_body_length += 1

    def _deliver(self, buf: InboundBuffer, start: int, end: int, st: SessionStats, *,
                 in_place: bool = False) -> None:
        try:
            msg = parse(buf, start, end, verify=False, max_size=self.max_message_size)
        except FixParseError as exc:
            if self.session is None:
                st.not_logon_first += 1
                self.close()
                return
            with memoryview(buf) as view:
                raw = bytes(view[start:end])
            self.session.unparsable(raw, exc)
            return
        if self.session is None:
            session = self.binder(self, msg) if self.binder is not None else None
            if session is None:
                msg.release()
                self.close()
                return
            self.session = session
            session.attach(self.transport)  # type: ignore[arg-type]
            session.stats.bytes_in += end - start
            self._topics.clear()
        session = self.session
        if in_place:
            self._current = msg
            session._inbound_sink = self._in_place
        try:
            session.handle(msg)
        finally:
            session._inbound_sink = None
            self._current = None
            msg.release()
        if self.session is not None and not self.session.connected:
            self._closing = True

    def _fatal(self, st: SessionStats, text: str) -> None:
        log.info("connection closed: %s", text)
        if self.session is not None and self.session.is_logged_on:
            self.session._logout_and_close(text)
        self.close()
