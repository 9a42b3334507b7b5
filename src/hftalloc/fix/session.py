"""The FIX session state machine (FIX 4.4 session layer), independent of the socket.

A :class:`FixSession` keeps its sequence numbers and sent messages in a store, checks every
inbound message (BeginString, CompIDs, MsgSeqNum, required tags), answers the session-level
messages (Logon, Heartbeat, TestRequest, ResendRequest, Reject, SequenceReset, Logout) and
hands application messages to its :class:`Application`. A connection
(:mod:`hftalloc.fix.connection`) feeds it parsed messages and gives it a transport.

MsgSeqNum rules: a message above the expected number is queued (bounded, ``max_queued``)
and a ResendRequest is sent once for the gap; a number below it ends the session with a
Logout unless PossDupFlag is set (then the duplicate is ignored). A ResendRequest is answered
with the stored application messages (PossDupFlag=Y, OrigSendingTime) and SequenceReset-
GapFill for the session-level ones.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from hftalloc.fix._codec import FixEncoder, FixMessage, parse
from hftalloc.fix.errors import (
    FixGroupError,
    FixParseError,
    FixRawDataError,
    FixSessionError,
)
from hftalloc.fix.spec import ADMIN_TYPES, APP_TYPES, BEGIN_STRING, HEADER_TAGS, REQUIRED
from hftalloc.fix.stats import SessionStats
from hftalloc.fix.store import Durability, MemoryStore, SessionStore

__all__ = ["Application", "FixSession", "SessionConfig", "SessionState"]

log = logging.getLogger("hftalloc.fix")

KNOWN_TYPES = ADMIN_TYPES | APP_TYPES | frozenset("j")


class SessionState:
    DISCONNECTED = "disconnected"
    CONNECTED = "connected"          # transport up, no Logon exchanged yet
    LOGON_SENT = "logon-sent"        # initiator waiting for the Logon answer
    ACTIVE = "active"
    LOGOUT_SENT = "logout-sent"


@dataclass
class SessionConfig:
    """Identity and limits of one session (``sender`` is this side's CompID)."""

    sender: str
    target: str
    heartbeat: int = 30
    reset_on_logon: bool = False
    begin_string: str = BEGIN_STRING
    max_message_size: int = 65536
    max_queued: int = 10000
    logon_timeout: float = 10.0
    logout_timeout: float = 2.0
    durability: Durability = "flush"   # of a FileStore (see hftalloc.fix.store)

    @property
    def session_id(self) -> str:
        """``SENDER-TARGET``: the session's name in store files and bus topics."""
        return f"{self.sender}-{self.target}"


class Application:
    """Callbacks of a session; override what you need (all default to doing nothing)."""

    #: a bus on which this application publishes inbound application messages: the
    #: connection then receives each message straight into a block of that bus, claimed
    #: for ``inbound_topic()`` (see :mod:`hftalloc.fix.connection`); None: no bus
    inbound_bus: Any = None

    def inbound_topic(self, session: FixSession, msg_type: str) -> str | None:
        """The bus topic of inbound application messages of ``msg_type`` (with
        ``inbound_bus``), or None."""
        return None

    def on_logon(self, session: FixSession) -> None:
        """The session is logged on."""

    def on_logout(self, session: FixSession) -> None:
        """The session logged out or lost its connection."""

    def on_message(self, session: FixSession, msg: FixMessage) -> None:
        """An application message, in sequence (the message is valid during the call)."""

    def on_admin(self, session: FixSession, msg: FixMessage) -> None:
        """A session-level message, after the session handled it."""


class FixSession:
    """One FIX session: sequence numbers, store, timers and the session-level protocol."""

    def __init__(self, config: SessionConfig, app: Application | None = None,
                 store: SessionStore | None = None, *, initiator: bool = False) -> None:
        self.config = config
        self.app = app or Application()
        self.store = store if store is not None else MemoryStore()
        self.initiator = initiator
        self.encoder = FixEncoder(config.sender, config.target, config.begin_string)
        self.stats = SessionStats()
        self.state = SessionState.DISCONNECTED
        self.heartbeat = float(config.heartbeat)
        self._transport: asyncio.Transport | None = None
        self._queue: dict[int, FixMessage | None] = {}
        self._resend_until = 0
        self._last_recv = self._last_sent = self._state_since = 0.0
        self._test_req_at = 0.0
        self._test_req_id = ""
        self._timer: asyncio.TimerHandle | None = None
        self._reset_sent = False
        self._logged_on: asyncio.Future[None] | None = None
        self._closed: asyncio.Future[None] | None = None
        # set by the connection while it hands over a message received into a bus block
        self._inbound_sink: Callable[[FixMessage, str], bool] | None = None

    # -- properties -------------------------------------------------------------------------
    @property
    def session_id(self) -> str:
        return self.config.session_id

    @property
    def is_logged_on(self) -> bool:
        return self.state == SessionState.ACTIVE

    @property
    def connected(self) -> bool:
        return self._transport is not None

    @property
    def next_out(self) -> int:
        return self.store.next_out

    @property
    def next_in(self) -> int:
        return self.store.next_in

    def __repr__(self) -> str:
        return (f"<FixSession {self.session_id} {self.state} out={self.next_out} "
                f"in={self.next_in}>")

    # -- waiting ----------------------------------------------------------------------------
    def _future(self, which: str) -> asyncio.Future[None]:
        fut = getattr(self, which)
        if fut is None or fut.done():
            fut = asyncio.get_running_loop().create_future()
            setattr(self, which, fut)
        return fut  # type: ignore[no-any-return]

    async def wait_logged_on(self, timeout: float | None = None) -> None:
        """Wait until the Logon exchange completes (raises TimeoutError)."""
        if self.is_logged_on:
            return
        await asyncio.wait_for(asyncio.shield(self._future("_logged_on")), timeout)

    async def wait_closed(self, timeout: float | None = None) -> None:
        """Wait until the connection is gone."""
        if self._transport is None:
            return
        await asyncio.wait_for(asyncio.shield(self._future("_closed")), timeout)

    # -- transport side ---------------------------------------------------------------------
    def attach(self, transport: asyncio.Transport) -> None:
        """A connection is up (called by the connection)."""
        if self._transport is not None:
            raise FixSessionError(f"{self.session_id} already has a connection")
        self._transport = transport
        self._set_state(SessionState.CONNECTED)
        self._last_recv = self._last_sent = time.monotonic()
        self._test_req_at = 0.0
        self._queue.clear()
        self._resend_until = 0
        self._schedule_tick()

    def detach(self) -> None:
        """The connection is gone (called by the connection)."""
        if self._transport is None:
            return
        was_active = self.state in (SessionState.ACTIVE, SessionState.LOGOUT_SENT)
        self._transport = None
        self._set_state(SessionState.DISCONNECTED)
        self.stats.disconnects += 1
        self._queue.clear()
        self._resend_until = 0
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.store.flush()
        if self._closed is not None and not self._closed.done():
            self._closed.set_result(None)
        if was_active:
            self._call_app("on_logout")

    def close(self) -> None:
        """Drop the connection now (no Logout)."""
        if self._transport is not None:
            self._transport.close()

    def abort(self) -> None:
        """Cut the connection without flushing (tests use it to lose in-flight data)."""
        if self._transport is not None:
            self._transport.abort()

    def _set_state(self, state: str) -> None:
        self.state = state
        self._state_since = time.monotonic()

    # -- sending ----------------------------------------------------------------------------
    def send(self, msg_type: str, fields: Iterable[tuple[int, Any]] = (), *,
             body: bytes | None = None) -> int:
        """Stamp, store and send an application message; returns its MsgSeqNum.

        While the session is not logged on the message is stored only: the peer gets it
        through its ResendRequest after the next Logon.
        """
        seq = self.store.next_out
        wire = self.encoder.encode(msg_type, seq, fields, body=body)
        self.store.save(seq, wire)
        if self.state == SessionState.ACTIVE:
            self._write(wire)
            self.stats.app_out += 1
        return seq

    def _send_admin(self, msg_type: str, fields: Iterable[tuple[int, Any]] = ()) -> int:
        seq = self.store.next_out
        wire = self.encoder.encode(msg_type, seq, fields)
        self.store.save(seq, None)
        self._write(wire)
        return seq

    def _write(self, wire: bytes) -> None:
        if self._transport is None:
            return
        self._transport.write(wire)
        self.stats.messages_out += 1
        self.stats.bytes_out += len(wire)
        self._last_sent = time.monotonic()

    def send_logon(self) -> None:
        """Initiator: send Logon (ResetSeqNumFlag=Y when configured)."""
        fields: list[tuple[int, Any]] = [(98, 0), (108, int(self.heartbeat))]
        if self.config.reset_on_logon:
            self.store.reset()
            self._reset_sent = True
            fields.append((141, "Y"))
        self._send_admin("A", fields)
        self._set_state(SessionState.LOGON_SENT)

    def logout(self, text: str = "") -> None:
        """Send Logout; the connection closes on the answer or after ``logout_timeout``."""
        if self._transport is None:
            return
        self._send_admin("5", [(58, text)] if text else ())
        self._set_state(SessionState.LOGOUT_SENT)
        self.store.flush()

    def _logout_and_close(self, text: str) -> None:
        log.info("%s: logout: %s", self.session_id, text)
        if self._transport is not None:
            self._send_admin("5", [(58, text)])
            self.stats.logouts += 1
            self.store.flush()
            self._transport.close()

    def reject(self, ref_seq: int, reason: int, text: str, *, tag: int = 0,
               msg_type: str = "") -> None:
        """Send a session-level Reject (3) for the message ``ref_seq``."""
        fields: list[tuple[int, Any]] = [(45, ref_seq)]
        if tag:
            fields.append((371, tag))
        if msg_type:
            fields.append((372, msg_type))
        fields += [(373, reason), (58, text)]
        self._send_admin("3", fields)
        self.stats.rejects_out += 1

    def send_test_request(self, test_id: str | None = None) -> None:
        self._test_req_id = test_id or f"TEST-{time.time_ns()}"
        self._test_req_at = time.monotonic()
        self._send_admin("1", [(112, self._test_req_id)])
        self.stats.test_requests_out += 1

    def send_sequence_reset(self, new_seq: int) -> None:
        """SequenceReset in reset mode: the peer's expected number becomes ``new_seq``."""
        self.encoder_send_raw("4", self.store.next_out, [(123, "N"), (36, new_seq)])
        self.store.set_next_out(new_seq)

    def encoder_send_raw(self, msg_type: str, seq: int, fields: Iterable[tuple[int, Any]], *,
                         poss_dup: bool = False, orig: str | None = None,
                         body: bytes | None = None) -> None:
        """Send a message with an explicit MsgSeqNum, not stored (resends, gap fills)."""
        self._write(self.encoder.encode(msg_type, seq, fields, body=body, poss_dup=poss_dup,
                                        orig_sending_time=orig))

    # -- receiving --------------------------------------------------------------------------
    def publish_in_place(self, msg: FixMessage, topic: str) -> bool:
        """Ask for ``msg`` (the message being handled) to be committed on the bus of the
        application's ``inbound_bus`` as it is, from the block the bytes were received in,
        once the callback returns. False when that is not possible (the message was not
        received into a block of that topic, or it is a queued copy): publish a copy."""
        sink = self._inbound_sink
        return sink is not None and sink(msg, topic)

    def unparsable(self, raw: bytes, exc: FixParseError) -> None:
        """A framed message whose fields do not parse (e.g. a tag without a value)."""
        seq = _find_seq(raw)
        if isinstance(exc, FixRawDataError):
            self.stats.bad_raw_data += 1
        if self.state != SessionState.ACTIVE:
            self.stats.not_logon_first += 1
            self.close()
            return
        self.reject(seq, exc.reason, str(exc), tag=exc.tag)
        if seq == self.store.next_in:
            self.store.set_next_in(seq + 1)

    def handle(self, msg: FixMessage) -> None:
        """Process one inbound message (called by the connection, in arrival order)."""
        st = self.stats
        st.messages_in += 1
        self._last_recv = time.monotonic()
        self._test_req_at = 0.0
        if msg.begin_string != self.config.begin_string:
            st.bad_begin_string += 1
            self._logout_and_close(f"Incorrect BeginString {msg.begin_string}")
            return
        try:
            seq = msg.seq_num
        except FixParseError:
            st.missing_tags += 1
            self._logout_and_close("MsgSeqNum (34) missing or not a number")
            return
        mt = msg.msg_type
        if self.state not in (SessionState.ACTIVE, SessionState.LOGOUT_SENT) and mt != "A":
            st.not_logon_first += 1
            log.info("%s: first message is %r, not Logon: disconnecting", self.session_id, mt)
            self.close()
            return
        if msg.get_str(49, "") != self.config.target or msg.get_str(56, "") != self.config.sender:
            st.compid_errors += 1
            if self.state == SessionState.ACTIVE:
                self.reject(seq, 9, "CompID problem", tag=49 if msg.has(49) else 56,
                            msg_type=mt)
            self._logout_and_close("CompID problem")
            return
        if mt == "A":
            self._on_logon(msg, seq)
            return
        if mt == "4" and not _flag(msg, 123):
            self._on_reset(msg, seq)
            return
        expected = self.store.next_in
        if seq > expected:
            if mt == "5":
                self._on_logout(msg)
                return
            processed = False
            if mt == "2":
                self._process(msg, seq, advance=False)
                processed = True
            self._enqueue(seq, None if processed else msg)
            self._request_resend(expected, seq)
            return
        if seq < expected:
            if _flag(msg, 43):
                if mt != "4" and not msg.has(122):
                    self.reject(seq, 1, "Required tag missing: OrigSendingTime", tag=122,
                                msg_type=mt)
                    return
                st.duplicates_ignored += 1
                return
            st.seq_too_low += 1
            self._logout_and_close(
                f"MsgSeqNum too low, expecting {expected} but received {seq}")
            return
        self._process(msg, seq)
        self._drain()

    def _enqueue(self, seq: int, msg: FixMessage | None) -> None:
        if len(self._queue) >= self.config.max_queued and seq not in self._queue:
            self.stats.queue_overflows += 1   # asked for again by the next ResendRequest
            return
        if msg is not None:
            # keep an independent copy: the receive buffer is reused
            msg = parse(msg.tobytes())
        self._queue[seq] = msg
        self.stats.queued_out_of_order += 1

    def _drain(self) -> None:
        while self._queue and self._transport is not None:
            seq = self.store.next_in
            if seq not in self._queue:
                lowest = min(self._queue)
                if lowest < seq:
                    for s in [s for s in self._queue if s < seq]:
                        del self._queue[s]
                    continue
                self._request_resend(seq, lowest)
                return
            msg = self._queue.pop(seq)
            if msg is None:
                self.store.set_next_in(seq + 1)
            else:
                self._process(msg, seq)
        if self._resend_until and self.store.next_in >= self._resend_until:
            self._resend_until = 0

    def _request_resend(self, begin: int, seen: int) -> None:
        if self._resend_until and begin < self._resend_until:
            return  # a request for this gap is outstanding
        self._resend_until = seen
        self._send_admin("2", [(7, begin), (16, 0)])
        self.stats.resend_requests_out += 1

    def _process(self, msg: FixMessage, seq: int, *, advance: bool = True) -> None:
        """Validate and dispatch an in-sequence message, then advance the expected number."""
        mt = msg.msg_type
        next_in = seq + 1
        try:
            missing = _missing(msg, mt)
            if mt not in KNOWN_TYPES:
                self.stats.unknown_msg_type += 1
                self.reject(seq, 11, f"Invalid MsgType {mt!r}", tag=35, msg_type=mt)
            elif missing:
                self.stats.missing_tags += 1
                self.reject(seq, 1, f"Required tag missing: {missing}", tag=missing,
                            msg_type=mt)
            elif mt in APP_TYPES or mt == "j":
                dup = msg.duplicate_tag()
                if dup:
                    self.reject(seq, 13, f"Tag appears more than once: {dup}", tag=dup,
                                msg_type=mt)
                else:
                    self.stats.app_in += 1
                    self._call_app("on_message", msg)
            else:
                next_in = self._admin(msg, mt, seq)
        except FixParseError as exc:
            if isinstance(exc, FixGroupError):
                self.stats.bad_groups += 1
            self.reject(seq, exc.reason, str(exc), tag=exc.tag, msg_type=mt)
        if advance and self._transport is not None:
            self.store.set_next_in(max(next_in, self.store.next_in))

    def _admin(self, msg: FixMessage, mt: str, seq: int) -> int:
        next_in = seq + 1
        if mt == "0":
            if self._test_req_id and msg.get_str(112, "") == self._test_req_id:
                self._test_req_id = ""
        elif mt == "1":
            self._send_admin("0", [(112, msg.get_str(112))])
            self.stats.heartbeats_out += 1
        elif mt == "2":
            self._on_resend_request(msg)
        elif mt == "3":
            self.stats.rejects_in += 1
        elif mt == "4":   # gap fill (reset mode is handled before the sequence check)
            new = msg.get_int(36)
            self.stats.gap_fills_in += 1
            if new < next_in:
                self.reject(seq, 5, f"NewSeqNo {new} below the expected {next_in}", tag=36,
                            msg_type=mt)
            else:
                next_in = new
        elif mt == "5":
            self._on_logout(msg)
            return next_in
        self._call_app("on_admin", msg)
        return next_in

    def _on_logon(self, msg: FixMessage, seq: int) -> None:
        st = self.stats
        if self.state == SessionState.ACTIVE:
            self.reject(seq, 99, "Logon while logged on", msg_type="A")
            return
        hb = msg.get_int(108, None)
        if hb is None or hb < 0 or msg.get_int(98, 0) != 0:
            st.missing_tags += 1
            self._logout_and_close("Logon needs EncryptMethod=0 and a HeartBtInt")
            return
        reset = _flag(msg, 141)
        if reset:
            if not self._reset_sent:
                self.store.reset()
            self.store.set_next_in(1)
        self._reset_sent = False
        expected = self.store.next_in
        if seq < expected:
            st.seq_too_low += 1
            self._logout_and_close(
                f"MsgSeqNum too low, expecting {expected} but received {seq}")
            return
        if not self.initiator:
            self.heartbeat = float(hb)
            fields: list[tuple[int, Any]] = [(98, 0), (108, hb)]
            if reset:
                fields.append((141, "Y"))
            self._send_admin("A", fields)
        self._set_state(SessionState.ACTIVE)
        st.logons += 1
        if seq > expected:
            self._enqueue(seq, None)
            self._request_resend(expected, seq)
        else:
            self.store.set_next_in(seq + 1)
        self.store.flush()
        if self._logged_on is not None and not self._logged_on.done():
            self._logged_on.set_result(None)
        self._call_app("on_logon")

    def _on_reset(self, msg: FixMessage, seq: int) -> None:
        """SequenceReset in reset mode: MsgSeqNum is ignored."""
        self.stats.sequence_resets_in += 1
        new = msg.get_int(36, None)
        if new is None:
            self.reject(seq, 1, "Required tag missing: NewSeqNo", tag=36, msg_type="4")
            return
        if new < self.store.next_in:
            self.reject(seq, 5, f"NewSeqNo {new} below the expected {self.store.next_in}",
                        tag=36, msg_type="4")
            return
        self.store.set_next_in(new)
        for s in [s for s in self._queue if s < new]:
            del self._queue[s]
        self._drain()

    def _on_logout(self, msg: FixMessage) -> None:
        self.stats.logouts += 1
        if self.state != SessionState.LOGOUT_SENT:
            self._send_admin("5")
        self.store.flush()
        self.close()

    def _on_resend_request(self, msg: FixMessage) -> None:
        self.stats.resend_requests_in += 1
        begin = msg.get_int(7)
        end = msg.get_int(16)
        last = self.store.next_out - 1
        if end == 0 or end > last:
            end = last
        if begin < 1 or begin > end:
            return
        stored = self.store.get_range(begin, end)
        gap_start = 0
        for seq in range(begin, end + 1):
            raw = stored.get(seq)
            if raw is None:
                gap_start = gap_start or seq
                continue
            if gap_start:
                self._gap_fill(gap_start, seq)
                gap_start = 0
            self._resend(raw, seq)
        if gap_start:
            self._gap_fill(gap_start, end + 1)

    def _gap_fill(self, seq: int, new_seq: int) -> None:
        self.encoder_send_raw("4", seq, [(123, "Y"), (36, new_seq)], poss_dup=True,
                              orig=None)
        self.stats.gap_fills_out += 1

    def _resend(self, raw: bytes, seq: int) -> None:
        stored = parse(raw)
        orig = stored.get_str(52)
        body = b"".join(b"%d=%s\x01" % (tag, value) for tag, value in stored.fields()
                        if tag not in HEADER_TAGS)
        self.encoder_send_raw(stored.msg_type, seq, (), poss_dup=True, orig=orig,
                              body=body)
        self.stats.resent += 1

    # -- timers -----------------------------------------------------------------------------
    def _schedule_tick(self) -> None:
        tick = max(0.05, min(1.0, self.heartbeat / 4 if self.heartbeat else 1.0))
        self._timer = asyncio.get_running_loop().call_later(tick, self._tick)

    def _tick(self) -> None:
        self._timer = None
        if self._transport is None:
            return
        now = time.monotonic()
        state = self.state
        if state == SessionState.ACTIVE and self.heartbeat > 0:
            hb = self.heartbeat
            if now - self._last_sent >= hb:
                self._send_admin("0")
                self.stats.heartbeats_out += 1
            idle = now - self._last_recv
            if self._test_req_at and now - self._test_req_at >= hb * 1.2:
                self.stats.heartbeat_timeouts += 1
                log.info("%s: no answer to TestRequest: disconnecting", self.session_id)
                self.close()
                return
            if not self._test_req_at and idle >= hb * 1.2:
                self.send_test_request()
        elif state in (SessionState.CONNECTED, SessionState.LOGON_SENT):
            if now - self._state_since >= self.config.logon_timeout:
                log.info("%s: no Logon in time: disconnecting", self.session_id)
                self.close()
                return
        elif (state == SessionState.LOGOUT_SENT
              and now - self._state_since >= self.config.logout_timeout):
            self.close()
            return
        self._schedule_tick()

    # -- application callbacks --------------------------------------------------------------
    def _call_app(self, name: str, *args: Any) -> None:
        try:
            getattr(self.app, name)(self, *args)
        except Exception:   # an application bug must not kill the session
            self.stats.app_errors += 1
            log.exception("%s: application callback %s failed", self.session_id, name)


def _flag(msg: FixMessage, tag: int) -> bool:
    return msg.get_str(tag, "N") == "Y"


def _missing(msg: FixMessage, mt: str) -> int:
    if not msg.has(52):
        return 52
    for tag in REQUIRED.get(mt, ()):
        if not msg.has(tag):
            return tag
    return 0


def _find_seq(raw: bytes) -> int:
    at = raw.find(b"\x0134=")
    if at < 0:
        return 0
    end = raw.find(b"\x01", at + 4)
    digits = raw[at + 4:end if end > 0 else None]
    return int(digits) if digits.isdigit() and len(digits) < 12 else 0
