"""UDP datagrams of a :class:`~hftalloc.net.gateways.FeedListener`, one frame each.

The header is peeked (``MSG_PEEK``), the block claimed, then ``recvmsg_into`` scatters
header, topic and payload so that the payload lands directly in the block. The
datagrams read in one readiness callback (up to ``udp_batch``) that follow one another
on a topic are committed together: one batch for batch subscribers. Every
datagram is taken off the socket whatever happens to it (bad header, bus full, bus
closed, size above the largest class, unexpected error), and counted under its
reason: a datagram left in the socket would make the event loop call the reader
again at once, forever.
"""

from __future__ import annotations

import logging
import socket
from typing import TYPE_CHECKING, Any

from hftalloc.errors import BusClosed, InvalidTopic
from hftalloc.net.framing import HEADER, MAX_TOPIC, FixedSize, TooManyTopics

if TYPE_CHECKING:
    from hftalloc.net.gateways import FeedListener

__all__ = ["UdpReceiver"]

log = logging.getLogger("hftalloc.net.udp")


class UdpReceiver:
    """Reads the datagrams waiting on one UDP socket (at most ``udp_batch`` per call)."""

    def __init__(self, listener: FeedListener, sock: socket.socket) -> None:
        self.listener = listener
        self.stats = listener.stats
        self.sock = sock
        self.fixed = isinstance(listener.framing, FixedSize)
        self.peek = bytearray(HEADER.size + MAX_TOPIC)
        self.header = bytearray(HEADER.size)
        self.topic = bytearray(MAX_TOPIC)
        self.trailer = bytearray(1)  # catches datagrams longer than they claim
        self.discard = bytearray(1)  # reading one byte of a datagram discards all of it
        self.run: list[tuple[Any, int]] = []  # filled messages on one topic, not committed yet

    def on_readable(self) -> None:
        try:
            for _ in range(self.listener.udp_batch):  # a batch, then let the loop run
                try:
                    if not self._one():
                        return
                except (BlockingIOError, InterruptedError):
                    return
                except OSError as exc:  # e.g. the socket was closed under us
                    self.stats.errors += 1
                    log.warning("reading a feed datagram failed: %s", exc)
                    return
        finally:
            if self.run:
                self.listener.commit_run(self.run)

    def _drop(self, counter: str) -> bool:
        setattr(self.stats, counter, getattr(self.stats, counter) + 1)
        self.sock.recv_into(self.discard)
        return True

    def _one(self) -> bool:
        listener = self.listener
        # peek first: raises BlockingIOError when no datagram is waiting (nothing claimed yet)
        n = self.sock.recv_into(self.peek, len(self.peek), socket.MSG_PEEK)
        if self.fixed:
            framing = listener.framing
            topic, length = framing.topic, framing.size  # type: ignore[union-attr]
            buffers: list[Any] = []
        else:
            if n < HEADER.size:
                return self._drop("malformed")
            length, topic_len = HEADER.unpack_from(self.peek)
            if length > listener.max_payload or not 0 < topic_len <= MAX_TOPIC or \
                    n < HEADER.size + topic_len:
                return self._drop("malformed")
            try:
                topic = listener.topics.lookup(bytes(self.peek[HEADER.size:
                                                               HEADER.size + topic_len]))
            except InvalidTopic:
                return self._drop("malformed")
            except TooManyTopics:
                return self._drop("topic_limit")
            buffers = [self.header, memoryview(self.topic)[:topic_len]]
        try:
            msg = listener.claim(topic, length, can_wait=False, run=self.run)
        except BusClosed:  # counted by claim()
            self.sock.recv_into(self.discard)
            return True
        if msg is None:  # counted by claim()
            self.sock.recv_into(self.discard)
            return True
        expected = sum(len(b) for b in buffers) + length
        try:
            n, _, flags, _ = self.sock.recvmsg_into([*buffers, msg.buffer, self.trailer])
        except BaseException:
            msg.abort()
            raise
        if n != expected or flags & socket.MSG_TRUNC:
            msg.abort()
            self.stats.malformed += 1
            return True
        if self.run and self.run[0][0].topic != msg.topic:
            listener.commit_run(self.run)
        self.run.append((msg, length))
        return True
