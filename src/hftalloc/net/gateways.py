"""asyncio/uvloop TCP and UDP gateways between sockets and a MessageBus.

:class:`FeedListener` accepts TCP connections and/or UDP datagrams and publishes each
frame on the bus; :class:`BusWriter` sends the bus messages on chosen topics out as
frames. Two framings:

* :class:`LengthPrefixed` (default): ``<u32 payload length><u16 topic length><topic><payload>``
  (little-endian; topic UTF-8, 1..255 bytes);
* :class:`FixedSize`: records of exactly ``size`` bytes, all on one topic.

Zero copy where the kernel allows it:

* TCP (``asyncio.BufferedProtocol``): small frames are parsed out of a scratch buffer
  filled by one ``recv_into`` (one copy into a claimed bus block each); once a frame's
  payload is longer than what has arrived, the following ``recv_into`` calls write
  straight into the claimed pool block.
* UDP: the header is peeked (``MSG_PEEK``), the block claimed, then ``recvmsg_into``
  scatters header, topic and payload so the payload lands directly in the block.

Malformed input never corrupts anything and is counted: a TCP frame with an impossible
length (above ``max_payload``, zero-length topic) closes that connection (the stream
cannot be trusted any more); a frame with an invalid topic is skipped and the
connection survives; a bad datagram is dropped. A full bus applies its policy: ``drop``
and ``raise`` skip the frame (counted in ``dropped`` / ``rejected``); ``block`` (async
bus) pauses reading the TCP connection until a block is free, so TCP flow control
pushes back to the sender (UDP cannot be paused: the datagram is dropped, counted).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
from dataclasses import dataclass, fields
from typing import Any

from hftalloc.errors import BusFull, FrameError, InvalidTopic, WouldBlock
from hftalloc.topics import validate_topic

__all__ = ["BusWriter", "FeedListener", "FeedStats", "FixedSize", "LengthPrefixed"]

log = logging.getLogger("hftalloc.net.gateways")

HEADER = struct.Struct("<IH")  # payload length, topic length
MAX_TOPIC = 255


@dataclass(frozen=True, slots=True)
class LengthPrefixed:
    """``<u32 payload length><u16 topic length><topic><payload>`` frames.

    ``max_payload``: larger frames are malformed (default: the bus's largest size class).
    """

    max_payload: int | None = None

    def encode(self, topic: str, payload: Any) -> bytes:
        raw = topic.encode()
        if not 0 < len(raw) <= MAX_TOPIC:
            raise InvalidTopic(f"topic {topic[:40]!r} is {len(raw)} bytes; frames carry 1..255")
        view = memoryview(payload)
        return b"".join((HEADER.pack(view.nbytes, len(raw)), raw, view))


@dataclass(frozen=True, slots=True)
class FixedSize:
    """Records of exactly ``size`` bytes, published on ``topic``."""

    size: int
    topic: str

    def __post_init__(self) -> None:
        if isinstance(self.size, bool) or not isinstance(self.size, int) or self.size < 1:
            raise ValueError(f"size must be a positive int, got {self.size!r}")
        validate_topic(self.topic)

    def encode(self, topic: str, payload: Any) -> bytes:
        view = memoryview(payload)
        if view.nbytes != self.size:
            raise FrameError(f"a fixed-size record is {self.size} bytes, got {view.nbytes}")
        return view.tobytes()


@dataclass(slots=True)
class FeedStats:
    """Counters of a :class:`FeedListener` (or of a :class:`BusWriter`)."""

    frames: int = 0
    bytes: int = 0
    malformed: int = 0
    dropped: int = 0
    rejected: int = 0
    blocked: int = 0
    connections: int = 0
    closed_on_error: int = 0
    direct_reads: int = 0  # TCP reads that went straight into a pool block

    def as_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


class FeedListener:
    """Publishes frames received over TCP and/or UDP on ``bus`` (see module doc)."""

    def __init__(self, bus: Any, framing: LengthPrefixed | FixedSize | None = None, *,
                 scratch_size: int = 65536, block_timeout: float | None = None) -> None:
        self.bus = bus
        self.framing = framing if framing is not None else LengthPrefixed()
        if isinstance(self.framing, LengthPrefixed):
            limit = self.framing.max_payload
            self.max_payload = limit if limit is not None else bus.allocator.max_size
        else:
            self.max_payload = self.framing.size
        self.scratch_size = max(scratch_size, HEADER.size + MAX_TOPIC + 1)
        self.block_timeout = block_timeout
        self.stats = FeedStats()
        self._servers: list[asyncio.AbstractServer] = []
        self._udp: list[tuple[socket.socket, asyncio.AbstractEventLoop]] = []
        self._protocols: set[_TcpFeed] = set()
        self._tasks: set[asyncio.Task[Any]] = set()

    async def start_tcp(self, host: str = "127.0.0.1", port: int = 0) -> tuple[str, int]:
        """Listen for TCP connections; returns the bound (host, port)."""
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: _TcpFeed(self), host, port)
        self._servers.append(server)
        return server.sockets[0].getsockname()[:2]

    async def start_udp(self, host: str = "127.0.0.1", port: int = 0) -> tuple[str, int]:
        """Receive UDP datagrams (one frame each); returns the bound (host, port)."""
        loop = asyncio.get_running_loop()
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        sock.setblocking(False)
        sock.bind((host, port))
        receiver = _UdpFeed(self, sock)
        loop.add_reader(sock.fileno(), receiver.on_readable)
        self._udp.append((sock, loop))
        return sock.getsockname()[:2]

    # -- frame sink -------------------------------------------------------------------------
    def _claim(self, topic: str, length: int, *, can_wait: bool) -> Any:
        """A bus message for a frame, or None (dropped/rejected, counted); WouldBlock when
        the block policy applies and the caller can wait for space."""
        try:
            msg = self.bus.claim(topic, length)
        except WouldBlock:
            if can_wait:
                raise
            self.stats.dropped += 1
            return None
        except BusFull:
            self.stats.rejected += 1
            return None
        if msg is None:
            self.stats.dropped += 1
        return msg

    def _published(self, nbytes: int) -> None:
        self.stats.frames += 1
        self.stats.bytes += nbytes

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        """Stop listening, close every connection and the UDP sockets."""
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


class _TcpFeed(asyncio.BufferedProtocol):
    """One TCP connection: frames parsed from scratch, long payloads read in place."""

    def __init__(self, listener: FeedListener) -> None:
        self.listener = listener
        self.framing = listener.framing
        self.fixed = isinstance(self.framing, FixedSize)
        self.scratch = bytearray(listener.scratch_size)
        self.start = 0  # unparsed data: scratch[start:end]
        self.end = 0
        self.skip = 0  # payload bytes of a skipped frame still to discard
        self.msg: Any = None  # message whose payload is being read in place
        self.got = 0
        self.need = 0
        self.pending: list[Any] = []  # completed messages, committed in order
        self.transport: asyncio.Transport | None = None
        self.waiting = False

    # -- asyncio callbacks ------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.listener._protocols.add(self)
        self.listener.stats.connections += 1

    def connection_lost(self, exc: Exception | None) -> None:
        self.listener._protocols.discard(self)
        self._flush()
        if self.msg is not None:  # the peer went away in the middle of a payload
            self.msg.abort()
            self.msg = None
            self.listener.stats.malformed += 1
        elif self.end > self.start or self.skip:
            self.listener.stats.malformed += 1  # a truncated frame

    def get_buffer(self, sizehint: int) -> memoryview:
        if self.pending:
            self._flush()  # the loop has let go of the previous buffer by now
        if self.msg is not None:
            self.listener.stats.direct_reads += 1
            return self.msg.buffer[self.got:self.need]
        if self.start == self.end:
            self.start = self.end = 0
        elif self.end == len(self.scratch) or self.start > len(self.scratch) // 2:
            remaining = self.end - self.start
            self.scratch[:remaining] = self.scratch[self.start:self.end]
            self.start, self.end = 0, remaining
        return memoryview(self.scratch)[self.end:]

    def buffer_updated(self, nbytes: int) -> None:
        if self.msg is not None:
            self.got += nbytes
            if self.got == self.need:
                self._complete()
            return
        self.end += nbytes
        self._parse()

    def eof_received(self) -> bool:
        return False  # close our side too

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    # -- parsing --------------------------------------------------------------------------------
    def _parse(self) -> None:
        data = self.scratch
        view = memoryview(data)
        stats = self.listener.stats
        while not self.waiting:
            if self.skip:
                step = min(self.skip, self.end - self.start)
                self.skip -= step
                self.start += step
                if self.skip:
                    return
            available = self.end - self.start
            if self.fixed:
                topic, length, body = self.framing.topic, self.framing.size, 0
                if available == 0:
                    return  # (a partial record is claimed now and completed in place)
            else:
                if available < HEADER.size:
                    return
                length, topic_len = HEADER.unpack_from(data, self.start)
                if length > self.listener.max_payload or not 0 < topic_len <= MAX_TOPIC:
                    stats.malformed += 1
                    stats.closed_on_error += 1
                    log.warning("closing a feed connection: frame header says %d payload bytes "
                                "and a %d-byte topic", length, topic_len)
                    self.start = self.end
                    self.transport.close()  # type: ignore[union-attr]
                    return
                body = HEADER.size + topic_len
                if available < body:
                    return
                try:
                    topic = validate_topic(bytes(view[self.start + HEADER.size:
                                                      self.start + body]).decode())
                except (UnicodeDecodeError, InvalidTopic):
                    stats.malformed += 1
                    self.start += body
                    self.skip = length
                    continue
            try:
                msg = self.listener._claim(topic, length, can_wait=True)
            except WouldBlock:
                self._wait_for_space(topic, length)
                return
            self.start += body
            if msg is None:
                self.skip = length
                continue
            self._fill(msg, view, length)
            if self.msg is not None:
                return  # the rest of the payload is read in place

    def _fill(self, msg: Any, view: memoryview, length: int) -> None:
        """Copy what has arrived of ``msg``'s payload; read the rest in place."""
        have = min(length, self.end - self.start)
        if have:
            msg.buffer[:have] = view[self.start:self.start + have]
            self.start += have
        if have == length:
            self._commit(msg, length)
        else:
            self.msg, self.got, self.need = msg, have, length

    def _complete(self) -> None:
        msg, self.msg = self.msg, None
        self.pending.append(msg)  # the loop still holds the slice we gave it: commit later
        asyncio.get_running_loop().call_soon(self._flush)
        self.listener._published(self.need)

    def _commit(self, msg: Any, length: int) -> None:
        if self.pending:
            self.pending.append(msg)
        else:
            msg.commit()
        self.listener._published(length)

    def _flush(self) -> None:
        pending, self.pending = self.pending, []
        for msg in pending:
            if msg.state == "claimed":
                msg.commit()

    # -- back-pressure (block policy) -------------------------------------------------------------
    def _wait_for_space(self, topic: str, length: int) -> None:
        self.waiting = True
        self.listener.stats.blocked += 1
        self.transport.pause_reading()  # type: ignore[union-attr]
        self.listener._spawn(self._claim_later(topic, length))

    async def _claim_later(self, topic: str, length: int) -> None:
        try:
            msg = await self.listener.bus.aclaim(topic, length,
                                                 timeout=self.listener.block_timeout)
        except BusFull:
            self.listener.stats.rejected += 1
            msg = None
        except Exception:  # bus closed: give up on this connection
            self.abort()
            return
        if self.transport is None or self.transport.is_closing():
            if msg is not None:
                msg.abort()
            return
        self.waiting = False
        body = 0 if self.fixed else HEADER.size + HEADER.unpack_from(self.scratch, self.start)[1]
        self.start += body
        if msg is None:
            self.skip = length
        else:
            self._fill(msg, memoryview(self.scratch), length)
        if self.msg is None:
            self._parse()
        if not self.waiting and self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()


class _UdpFeed:
    """UDP datagrams, one frame each, received with recvmsg_into straight into blocks."""

    def __init__(self, listener: FeedListener, sock: socket.socket) -> None:
        self.listener = listener
        self.sock = sock
        self.fixed = isinstance(listener.framing, FixedSize)
        self.peek = bytearray(HEADER.size + MAX_TOPIC)
        self.header = bytearray(HEADER.size)
        self.topic = bytearray(MAX_TOPIC)
        self.trailer = bytearray(1)  # catches datagrams longer than they claim
        self.discard = bytearray(65536)

    def on_readable(self) -> None:
        for _ in range(64):  # a batch, then let the loop run
            try:
                if not self._one():
                    return
            except (BlockingIOError, InterruptedError):
                return

    def _drop(self) -> None:
        self.sock.recv_into(self.discard)

    def _one(self) -> bool:
        stats = self.listener.stats
        # peek first: raises BlockingIOError when no datagram is waiting (nothing claimed yet)
        n = self.sock.recv_into(self.peek, len(self.peek), socket.MSG_PEEK)
        if self.fixed:
            framing = self.listener.framing
            topic, length, buffers = framing.topic, framing.size, []
        else:
            if n < HEADER.size:
                stats.malformed += 1
                self._drop()
                return True
            length, topic_len = HEADER.unpack_from(self.peek)
            if length > self.listener.max_payload or not 0 < topic_len <= MAX_TOPIC or \
                    n < HEADER.size + topic_len:
                stats.malformed += 1
                self._drop()
                return True
            try:
                topic = validate_topic(bytes(self.peek[HEADER.size:HEADER.size + topic_len])
                                       .decode())
            except (UnicodeDecodeError, InvalidTopic):
                stats.malformed += 1
                self._drop()
                return True
            buffers = [self.header, memoryview(self.topic)[:topic_len]]
        msg = self.listener._claim(topic, length, can_wait=False)
        if msg is None:
            self._drop()
            return True
        expected = sum(len(b) for b in buffers) + length
        try:
            n, _, flags, _ = self.sock.recvmsg_into([*buffers, msg.buffer, self.trailer])
        except BaseException:
            msg.abort()
            raise
        if n != expected or flags & socket.MSG_TRUNC:
            msg.abort()
            stats.malformed += 1
            return True
        msg.commit()
        self.listener._published(length)
        return True


class BusWriter:
    """Sends bus messages on topics matching ``patterns`` as frames over TCP or UDP.

    TCP back-pressure: while the transport's buffer is above its high-water mark,
    messages are dropped and counted (``stats.dropped``) rather than buffered without
    bound; the bus subscriber never blocks.
    """

    def __init__(self, bus: Any, patterns: list[str] | str,
                 framing: LengthPrefixed | FixedSize | None = None) -> None:
        self.bus = bus
        self.patterns = [patterns] if isinstance(patterns, str) else list(patterns)
        self.framing = framing if framing is not None else LengthPrefixed()
        self.stats = FeedStats()
        self.transport: asyncio.BaseTransport | None = None
        self._subs: list[Any] = []
        self._paused = False
        self._udp = False

    async def connect_tcp(self, host: str, port: int, *, high_water: int = 1 << 20) -> None:
        """Connect to a TCP listener and start forwarding."""
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_connection(lambda: _WriterProtocol(self), host, port)
        transport.set_write_buffer_limits(high=high_water)
        self.transport = transport
        self._subscribe()

    async def open_udp(self, host: str, port: int) -> None:
        """Send each message as one datagram to (host, port)."""
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(asyncio.DatagramProtocol,
                                                           remote_addr=(host, port))
        self.transport = transport
        self._udp = True
        self._subscribe()

    def _subscribe(self) -> None:
        for pattern in self.patterns:
            self._subs.append(self.bus.subscribe(pattern, self._on_message))

    def _on_message(self, msg: Any) -> None:
        transport = self.transport
        if transport is None or transport.is_closing() or self._paused:
            self.stats.dropped += 1
            return
        try:
            frame = self.framing.encode(msg.topic, msg.payload)
        except (FrameError, InvalidTopic):
            self.stats.malformed += 1
            raise
        if self._udp:
            transport.sendto(frame)  # type: ignore[attr-defined]
        else:
            transport.write(frame)  # type: ignore[attr-defined]
        self.stats.frames += 1
        self.stats.bytes += len(frame)

    def close(self) -> None:
        for sub in self._subs:
            if sub.active:
                sub.unsubscribe()
        self._subs.clear()
        if self.transport is not None:
            self.transport.close()


class _WriterProtocol(asyncio.Protocol):
    def __init__(self, writer: BusWriter) -> None:
        self.writer = writer

    def pause_writing(self) -> None:
        self.writer._paused = True

    def resume_writing(self) -> None:
        self.writer._paused = False

    def connection_lost(self, exc: Exception | None) -> None:
        self.writer._paused = True
