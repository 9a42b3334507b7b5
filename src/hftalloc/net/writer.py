"""BusWriter: bus messages on chosen topics sent out as TCP or UDP frames."""

from __future__ import annotations

import asyncio
from typing import Any

from coreallocs.uncopyable import Uncopyable
from hftalloc.errors import FrameError, InvalidTopic
from hftalloc.net.framing import FixedSize, LengthPrefixed
from hftalloc.net.stats import FeedStats

__all__ = ["BusWriter"]


class BusWriter(Uncopyable):
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

    def data_received(self, data: bytes) -> None:
        """A feed listener sends nothing back: whatever arrives is discarded."""

    def connection_lost(self, exc: Exception | None) -> None:
        self.writer._paused = True
