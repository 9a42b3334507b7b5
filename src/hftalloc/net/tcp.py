"""One TCP feed connection of a :class:`~hftalloc.net.gateways.FeedListener`.

An ``asyncio.BufferedProtocol``: small frames are parsed out of the connection's
buffer filled by one ``recv_into`` (one copy each into a claimed bus block); once a
frame's payload is longer than what has arrived, the following ``recv_into`` calls
write straight into the claimed pool block (when the listener's partial-frame budget
allows; otherwise the frame waits in the buffer and is claimed once complete).

The frames one read completes that follow one another on a topic are committed
together once the read is parsed (``commit_run``): one batch for batch subscribers.

A frame header with an impossible length (above ``max_payload``, or a topic length
outside 1..255) closes the connection: the stream cannot be trusted any more. A frame
with an invalid topic is skipped and the connection survives. One timer per
connection enforces ``frame_timeout`` and ``idle_timeout``; it is re-armed when it
fires, not on every read.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from hftalloc.errors import BusClosed, BusFull, InvalidTopic, WouldBlock
from hftalloc.net.framing import HEADER, MAX_TOPIC, FixedSize, TooManyTopics

if TYPE_CHECKING:
    from hftalloc.net.gateways import FeedListener

__all__ = ["TcpConnection", "abort_quietly"]

log = logging.getLogger("hftalloc.net.tcp")


def abort_quietly(msg: Any) -> None:
    """Give a claimed message's block back; nothing to do if it is no longer claimed."""
    if getattr(msg, "state", "claimed") == "claimed":
        try:
            msg.abort()
        except Exception:  # already released by a closed bus: nothing is held
            log.debug("aborting a feed message failed", exc_info=True)


class TcpConnection(asyncio.BufferedProtocol):
    """One TCP connection: frames parsed from a buffer, long payloads read in place."""

    def __init__(self, listener: FeedListener) -> None:
        self.listener = listener
        self.stats = listener.stats
        self.framing = listener.framing
        self.fixed = isinstance(self.framing, FixedSize)
        self.scratch: bytearray | None = None  # allocated on the first byte
        self.start = 0  # unparsed data: scratch[start:end]
        self.end = 0
        self.want = 0  # bytes from ``start`` the current frame needs in the buffer
        self.skip = 0  # payload bytes of a skipped frame still to discard
        self.msg: Any = None  # message whose payload is being read in place
        self.msg_class: Any = None  # its size class (partial-frame budget)
        self.got = 0
        self.need = 0
        self.pending: list[tuple[Any, int]] = []  # completed messages, committed in order
        self.run: list[tuple[Any, int]] = []  # filled messages on one topic of this read
        self.transport: asyncio.Transport | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.waiting = False  # paused until the bus has a free block (block policy)
        self.closing = False  # being closed on purpose: no more parsing or counting
        self.refused = False
        self.progress = 0  # frame boundaries crossed (a partial frame after a change is new)
        self.progress_mark = -1
        self.partial_since: float | None = None
        self.last_read = 0.0
        self.timer: asyncio.TimerHandle | None = None

    # -- asyncio callbacks ------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        listener = self.listener
        if listener.closed or len(listener._protocols) >= listener.max_connections:
            self.refused = True
            self.stats.refused += 1
            transport.abort()  # type: ignore[attr-defined]
            return
        self.loop = asyncio.get_running_loop()
        listener._protocols.add(self)
        self.stats.connections += 1
        self.stats.open_connections = len(listener._protocols)
        self.last_read = self.loop.time()
        if listener.idle_timeout is not None:
            self._arm(listener.idle_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.refused:
            return
        listener = self.listener
        listener._protocols.discard(self)
        self.stats.open_connections = len(listener._protocols)
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self._flush()
        # a frame cut short (a frame being skipped is already counted under its reason)
        truncated = self.msg is not None or self.end > self.start
        self._drop_partial()
        if truncated and not self.closing:
            self.stats.malformed += 1  # the peer went away in the middle of a frame
        self.closing = True
        self.scratch = None

    def get_buffer(self, sizehint: int) -> memoryview:
        if self.pending:
            self._flush()  # the loop has let go of the previous buffer by now
        if self.msg is not None:
            self.stats.direct_reads += 1
            return self.msg.buffer[self.got:self.need]
        size = self.listener.scratch_size
        scratch = self.scratch
        if scratch is None:
            scratch = self.scratch = bytearray(max(size, self.want))
        if self.start == self.end:
            self.start = self.end = 0
            if len(scratch) > size and not self.want:  # shrink after one large frame
                scratch = self.scratch = bytearray(size)
        elif self.end == len(scratch) or self.start > len(scratch) // 2 or \
                self.start + self.want > len(scratch):
            remaining = self.end - self.start
            scratch[:remaining] = scratch[self.start:self.end]
            self.start, self.end = 0, remaining
        if self.want > len(scratch) or self.end == len(scratch):
            grown = bytearray(max(self.want, self.end + 1,
                                     min(self.end + size, self.listener.max_frame)))
            grown[:self.end] = scratch[:self.end]
            scratch = self.scratch = grown
        return memoryview(scratch)[self.end:]

    def buffer_updated(self, nbytes: int) -> None:
        if self.closing:
            return
        if self.msg is not None:
            self.got += nbytes
            if self.got == self.need:
                self._complete()
        else:
            self.end += nbytes
            self._parse()
        self._after_read()

    def eof_received(self) -> bool:
        return False  # close our side too

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    # -- timeouts -------------------------------------------------------------------------------
    def _after_read(self) -> None:
        if self.closing or self.loop is None:
            return
        now = self.last_read = self.loop.time()
        if self.msg is not None or self.end > self.start or self.skip:
            if self.partial_since is None or self.progress != self.progress_mark:
                self.partial_since = now
                self.progress_mark = self.progress
            timeout = self.listener.frame_timeout
            if self.timer is None and timeout is not None:
                self._arm(timeout)
        else:
            self.partial_since = None

    def _arm(self, delay: float) -> None:
        assert self.loop is not None
        self.timer = self.loop.call_later(delay, self._on_timer)

    def _on_timer(self) -> None:
        self.timer = None
        transport = self.transport
        if self.closing or transport is None or transport.is_closing() or self.loop is None:
            return
        listener = self.listener
        now = self.loop.time()
        frame_timeout, idle_timeout = listener.frame_timeout, listener.idle_timeout
        due: float | None = None
        if self.waiting:  # not the peer's fault: the bus is full
            delay = frame_timeout or idle_timeout
            due = None if delay is None else now + delay
        elif self.partial_since is not None and frame_timeout is not None:
            due = self.partial_since + frame_timeout
            if now >= due:
                self._close_for("timeouts", "a frame was not complete within %.3g s",
                                frame_timeout)
                return
        elif idle_timeout is not None:
            due = self.last_read + idle_timeout
            if now >= due:
                self._close_for("idle_closed", "no data for %.3g s", idle_timeout)
                return
        if due is not None:
            self.timer = self.loop.call_at(due, self._on_timer)

    def _close_for(self, counter: str, why: str, *args: Any) -> None:
        setattr(self.stats, counter, getattr(self.stats, counter) + 1)
        log.info("closing a feed connection: " + why, *args)
        self._drop_partial()
        self.closing = True
        self.start = self.end = self.skip = 0
        self.abort()

    # -- parsing --------------------------------------------------------------------------------
    def _parse(self) -> None:
        """Parse what the buffer holds; the frames it completes go out as batches."""
        try:
            self._parse_frames()
        finally:
            if self.run:
                self.listener.commit_run(self.run)

    def _parse_frames(self) -> None:
        data = self.scratch
        assert data is not None
        view = memoryview(data)
        listener = self.listener
        stats = self.stats
        while not self.waiting and not self.closing:
            if self.skip:
                step = min(self.skip, self.end - self.start)
                self.skip -= step
                self.start += step
                if self.skip:
                    return
            available = self.end - self.start
            if self.fixed:
                if available == 0:
                    return
                fixed: FixedSize = self.framing  # type: ignore[assignment]
                topic, length, body = fixed.topic, fixed.size, 0
            else:
                if available < HEADER.size:
                    return
                length, topic_len = HEADER.unpack_from(data, self.start)
                if length > listener.max_payload or not 0 < topic_len <= MAX_TOPIC:
                    stats.malformed += 1
                    stats.closed_on_error += 1
                    log.warning("closing a feed connection: frame header says %d payload bytes "
                                "and a %d-byte topic", length, topic_len)
                    self.closing = True
                    self.start = self.end = 0
                    self.transport.close()  # type: ignore[union-attr]
                    return
                body = HEADER.size + topic_len
                if available < body:
                    return
                try:
                    topic = listener.topics.lookup(bytes(view[self.start + HEADER.size:
                                                              self.start + body]))
                except (InvalidTopic, TooManyTopics) as exc:
                    if isinstance(exc, TooManyTopics):
                        stats.topic_limit += 1
                    else:
                        stats.malformed += 1
                    self._next_frame(body, length)
                    continue
            if available - body < length and not listener.partial_allowed(length):
                if self.want != body + length:  # wait for the whole frame in the buffer
                    self.want = body + length
                    stats.buffered_partial += 1
                return
            try:
                msg = listener.claim(topic, length, can_wait=True, run=self.run)
            except WouldBlock:
                self._wait_for_space(topic, length)
                return
            except BusClosed:
                self._close_for("closed_on_error", "the bus is closed")
                return
            self.want = 0
            self.start += body
            self.progress += 1
            if msg is None:
                self.skip = length
                continue
            self._fill(msg, view, length)
            if self.msg is not None:
                return  # the rest of the payload is read in place

    def _next_frame(self, body: int, length: int) -> None:
        """Skip the current frame (its header is in the buffer)."""
        self.want = 0
        self.start += body
        self.skip = length
        self.progress += 1

    def _fill(self, msg: Any, view: memoryview, length: int) -> None:
        """Copy what has arrived of ``msg``'s payload; read the rest in place."""
        have = min(length, self.end - self.start)
        if have:
            msg.buffer[:have] = view[self.start:self.start + have]
            self.start += have
        if have == length:
            if self.pending:
                self.pending.append((msg, length))
            else:
                if self.run and self.run[0][0].topic != msg.topic:
                    self.listener.commit_run(self.run)
                self.run.append((msg, length))
        else:
            self.msg, self.got, self.need = msg, have, length
            self.msg_class = self.listener.partial_taken(length)

    def _complete(self) -> None:
        msg, self.msg = self.msg, None
        self.listener.partial_returned(self.msg_class)
        self.progress += 1
        self.pending.append((msg, self.need))  # the loop still holds our slice: commit later
        assert self.loop is not None
        self.loop.call_soon(self._flush)

    def _flush(self) -> None:
        pending, self.pending = self.pending, []
        for msg, length in pending:
            if msg.state == "claimed":
                self.listener.commit(msg, length)

    def _drop_partial(self) -> None:
        msg, self.msg = self.msg, None
        if msg is not None:
            self.listener.partial_returned(self.msg_class)
            abort_quietly(msg)

    # -- back-pressure (block policy) -------------------------------------------------------------
    def _wait_for_space(self, topic: str, length: int) -> None:
        self.waiting = True
        self.stats.blocked += 1
        self.transport.pause_reading()  # type: ignore[union-attr]
        self.listener.spawn(self._claim_later(topic, length))

    async def _claim_later(self, topic: str, length: int) -> None:
        listener = self.listener
        try:
            msg = await listener.bus.aclaim(topic, length, timeout=listener.block_timeout)
        except BusFull:
            self.stats.rejected += 1
            msg = None
        except BusClosed:
            self.stats.bus_closed += 1
            self._close_for("closed_on_error", "the bus was closed during a wait")
            return
        except Exception:
            self.stats.errors += 1
            log.exception("waiting for a free block failed")
            self._close_for("closed_on_error", "waiting for a free block failed")
            return
        if self.closing or self.transport is None or self.transport.is_closing():
            if msg is not None:
                abort_quietly(msg)
            return
        self.waiting = False
        assert self.scratch is not None
        body = 0 if self.fixed else HEADER.size + HEADER.unpack_from(self.scratch, self.start)[1]
        self.start += body
        self.want = 0
        self.progress += 1
        if msg is None:
            self.skip = length
        else:
            self._fill(msg, memoryview(self.scratch), length)
        if self.msg is None:
            self._parse()
        elif self.run:
            self.listener.commit_run(self.run)
        self.partial_since = None
        self._after_read()
        if not self.waiting and not self.closing and not self.transport.is_closing():
            self.transport.resume_reading()
