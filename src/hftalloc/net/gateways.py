"""asyncio/uvloop TCP and UDP gateways between sockets and a MessageBus.

:class:`FeedListener` accepts TCP connections (:mod:`hftalloc.net.tcp`) and/or UDP
datagrams (:mod:`hftalloc.net.udp`) and publishes each frame on the bus; the frames
of one TCP read, or the datagrams of one readiness callback, that follow one another
on a topic are committed together (``commit_many``): one batch for batch subscribers;
:class:`~hftalloc.net.writer.BusWriter` sends bus messages out as frames. Framings
(:mod:`hftalloc.net.framing`): :class:`LengthPrefixed` (default) and :class:`FixedSize`.

Everything a peer sends is untrusted. Every frame ends in exactly one counter of
:class:`FeedStats`, and no peer can hold more than its share of the process:

* ``max_connections`` TCP connections at once; more are closed at once (``refused``);
* a frame must arrive completely within ``frame_timeout`` seconds of its first byte,
  or the connection is closed and its block aborted (``timeouts``); with
  ``idle_timeout`` a connection silent that long is closed too (``idle_closed``);
* a connection holds at most one pool block for a partly received frame, and the
  listener's connections together at most ``partial_share`` of a size class's blocks;
  beyond that a partial frame waits in the connection's buffer (``buffered_partial``)
  and claims its block once complete;
* a connection's buffer is allocated on its first byte (``scratch_size``), grows only
  to hold one frame (header + topic + ``max_payload``) and shrinks back afterwards;
* at most ``max_topics`` distinct topics per listener (``topic_limit``), so invented
  topics cannot grow the bus's per-topic state without bound;
* every datagram is read off the socket, whatever happens to it.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import Any

from coreallocs.uncopyable import Uncopyable
from hftalloc.errors import BusClosed, BusFull, SizeTooLarge, WouldBlock
from hftalloc.net.framing import (
    DEFAULT_MAX_TOPICS,
    HEADER,
    MAX_TOPIC,
    FixedSize,
    LengthPrefixed,
    TopicTable,
)
from hftalloc.net.stats import FeedStats
from hftalloc.net.tcp import TcpConnection, abort_quietly
from hftalloc.net.udp import UdpReceiver
from hftalloc.net.writer import BusWriter

__all__ = ["HEADER", "MAX_TOPIC", "BusWriter", "FeedListener", "FeedStats", "FixedSize",
           "LengthPrefixed"]

log = logging.getLogger("hftalloc.net.gateways")

def _positive(name: str, value: Any, *, optional: bool = False, integer: bool = False) -> None:
    if value is None and optional:
        return
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or not value > 0:
        raise ValueError(f"{name} must be a positive {'int' if integer else 'number'}"
                         f"{' or None' if optional else ''}, got {value!r}")


class FeedListener(Uncopyable):
    """Publishes frames received over TCP and/or UDP on ``bus`` (see module doc).

    ``scratch_size`` (16384): a TCP connection's read buffer, allocated on its first
    byte. ``block_timeout``: longest wait for a free block under the ``block`` policy
    (None: no limit). ``max_connections`` (256), ``frame_timeout`` (5 s; None: off),
    ``idle_timeout`` (None: off), ``partial_share`` (0.25; 0: partial frames never
    hold a pool block), ``max_topics`` (65536; None: no limit), ``udp_batch``
    (64 datagrams per readiness callback).
    """

    def __init__(self, bus: Any, framing: LengthPrefixed | FixedSize | None = None, *,
                 scratch_size: int = 16384, block_timeout: float | None = None,
                 max_connections: int = 256, frame_timeout: float | None = 5.0,
                 idle_timeout: float | None = None, partial_share: float = 0.25,
                 max_topics: int | None = DEFAULT_MAX_TOPICS, udp_batch: int = 64) -> None:
        self.bus = bus
        # batches need both (a bus-like object without them gets one commit per frame)
        self._try_claim = getattr(bus, "try_claim", None)
        self._commit_many = getattr(bus, "commit_many", None) if self._try_claim else None
        self.framing = framing if framing is not None else LengthPrefixed()
        if not isinstance(self.framing, (LengthPrefixed, FixedSize)):
            raise TypeError(f"framing must be LengthPrefixed or FixedSize, not "
                            f"{type(self.framing).__name__}")
        allocator = bus.allocator
        if isinstance(self.framing, LengthPrefixed):
            limit = self.framing.max_payload
            self.max_payload = limit if limit is not None else allocator.max_size
        else:
            self.max_payload = self.framing.size
        if self.max_payload > allocator.max_size and allocator.oversize == "raise":
            raise SizeTooLarge(f"frames of up to {self.max_payload} bytes cannot fit the bus's "
                               f"largest size class ({allocator.max_size} B)")
        _positive("scratch_size", scratch_size, integer=True)
        _positive("block_timeout", block_timeout, optional=True)
        _positive("max_connections", max_connections, integer=True)
        _positive("frame_timeout", frame_timeout, optional=True)
        _positive("idle_timeout", idle_timeout, optional=True)
        _positive("udp_batch", udp_batch, integer=True)
        if isinstance(partial_share, bool) or not isinstance(partial_share, (int, float)) \
                or not 0 <= partial_share <= 1:
            raise ValueError(f"partial_share must be a number in 0..1, got {partial_share!r}")
        self.scratch_size = max(scratch_size, HEADER.size + MAX_TOPIC + 1)
        self.max_frame = HEADER.size + MAX_TOPIC + self.max_payload
        self.block_timeout = block_timeout
        self.max_connections = max_connections
        self.frame_timeout = frame_timeout
        self.idle_timeout = idle_timeout
        self.partial_share = partial_share
        self.udp_batch = udp_batch
        self.topics = TopicTable(max_topics)
        if isinstance(self.framing, FixedSize):
            self.topics.add(self.framing.topic)
        self.stats = FeedStats()
        self.closed = False
        self._servers: list[asyncio.AbstractServer] = []
        self._udp: list[tuple[socket.socket, asyncio.AbstractEventLoop]] = []
        self._protocols: set[TcpConnection] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._partial: dict[Any, int] = {}  # size class -> blocks held by partial frames
        self._partial_cap: dict[Any, int] = {}

    async def start_tcp(self, host: str = "127.0.0.1", port: int = 0, *,
                        backlog: int = 128) -> tuple[str, int]:
        """Listen for TCP connections; returns the bound (host, port)."""
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: TcpConnection(self), host, port,
                                          backlog=backlog)
        self._servers.append(server)
        return server.sockets[0].getsockname()[:2]

    async def start_udp(self, host: str = "127.0.0.1", port: int = 0) -> tuple[str, int]:
        """Receive UDP datagrams (one frame each); returns the bound (host, port)."""
        loop = asyncio.get_running_loop()
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            sock.bind((host, port))
            receiver = UdpReceiver(self, sock)
            loop.add_reader(sock.fileno(), receiver.on_readable)
        except BaseException:
            sock.close()
            raise
        self._udp.append((sock, loop))
        return sock.getsockname()[:2]

    # -- frame sink (shared by the TCP connections and the UDP receivers) ----------------------
    def claim(self, topic: str, length: int, *, can_wait: bool,
              run: list[tuple[Any, int]] | None = None) -> Any:
        """A bus message for a frame, or None (not delivered, counted by reason).

        ``run``: filled messages of the same read not committed yet (``commit_run``);
        when the size class is full they are committed first, then the claim is made
        again. Raises WouldBlock when the block policy applies and ``can_wait``;
        BusClosed (counted) when the bus is closed.
        """
        stats = self.stats
        try:
            msg = self._try_claim(topic, length) if run and self._try_claim else None
            if msg is None:
                if run:
                    self.commit_run(run)
                msg = self.bus.claim(topic, length)
        except WouldBlock:
            if can_wait:
                raise
            stats.dropped += 1
            return None
        except BusFull:
            stats.rejected += 1
            return None
        except BusClosed:
            stats.bus_closed += 1
            raise
        except SizeTooLarge:
            stats.too_large += 1
            return None
        except Exception:
            stats.errors += 1
            log.exception("claiming a %d-byte message on %r failed", length, topic)
            return None
        if msg is None:
            stats.dropped += 1
        return msg

    def commit(self, msg: Any, nbytes: int) -> None:
        """Publish a filled message; a failure is counted, never raised."""
        try:
            msg.commit()
        except BusClosed:
            self.stats.bus_closed += 1
            abort_quietly(msg)
            return
        except Exception:
            self.stats.errors += 1
            log.exception("committing a feed message failed")
            abort_quietly(msg)
            return
        self.stats.frames += 1
        self.stats.bytes += nbytes

    def commit_run(self, run: list[tuple[Any, int]]) -> None:
        """Publish the filled messages of ``run`` (one topic, in order) as one batch and
        empty it; a failure is counted per message, never raised."""
        if len(run) == 1 or self._commit_many is None:
            for msg, nbytes in run:
                self.commit(msg, nbytes)
            run.clear()
            return
        msgs = [msg for msg, _ in run]
        nbytes = sum(n for _, n in run)
        run.clear()
        try:
            self._commit_many(msgs)
        except BusClosed:
            self.stats.bus_closed += len(msgs)
            for msg in msgs:
                abort_quietly(msg)
            return
        except Exception:
            self.stats.errors += len(msgs)
            log.exception("committing %d feed messages failed", len(msgs))
            for msg in msgs:
                abort_quietly(msg)
            return
        self.stats.frames += len(msgs)
        self.stats.bytes += nbytes

    def partial_allowed(self, length: int) -> bool:
        """May one more partial frame of ``length`` bytes hold a pool block now?"""
        key = self.bus.allocator.size_class(length)
        cap = self._partial_cap.get(key)
        if cap is None:
            capacity = self.bus.allocator.class_capacity(length)
            if capacity is None:  # heap fallback above the largest class: bounded by max_frame
                cap = self.max_connections
            else:
                cap = int(capacity * self.partial_share)
                if self.partial_share and cap < 1:
                    cap = 1
            self._partial_cap[key] = cap
        return self._partial.get(key, 0) < cap

    def partial_taken(self, length: int) -> Any:
        key = self.bus.allocator.size_class(length)
        self._partial[key] = self._partial.get(key, 0) + 1
        self.stats.partial_blocks += 1
        return key

    def partial_returned(self, key: Any) -> None:
        self._partial[key] -= 1
        self.stats.partial_blocks -= 1

    def spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        """Stop listening, close every connection and the UDP sockets."""
        self.closed = True
        for server in self._servers:
            server.close()
        for proto in list(self._protocols):
            proto.abort()
        for server in self._servers:
            await server.wait_closed()
        self._servers.clear()
        for sock, loop in self._udp:
            loop.remove_reader(sock.fileno())
            sock.close()
        self._udp.clear()
        for task in list(self._tasks):
            task.cancel()

    async def __aenter__(self) -> FeedListener:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
