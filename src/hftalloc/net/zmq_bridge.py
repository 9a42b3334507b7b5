"""ZmqBridge: a MessageBus spanning processes and machines over ZeroMQ PUB/SUB (pyzmq).

::

    bridge = ZmqBridge(bus)
    endpoint = bridge.publish_to("tcp://127.0.0.1:*", ["md.>"])    # local md.* -> PUB
    bridge.subscribe_from("tcp://10.0.0.7:5556", ["ord.fill.*"])   # SUB -> local bus
    bridge.poll(timeout=0.01)                                        # or: await bridge.run(stop)

Frame (one ZeroMQ frame per message): ``topic`` (UTF-8, at most 255 bytes), ``\\0``, then
a 16-byte header
(publisher id, per-topic sequence number, little-endian u64) and the payload. The topic
comes first so that subscription patterns become ZeroMQ prefix subscriptions
(``md.quote.*`` -> ``md.quote.``, an exact topic -> ``topic\\0``); the exact wildcard match
is then checked locally. The sequence numbers let the receiver count what PUB/SUB
drops silently (slow subscriber past the high-water mark, late join): ``gaps``.

Copies: one into the outgoing frame; the receiver reads the frame in place
(``recv(copy=False)``) and copies the payload once into a block of the local bus.
"""

from __future__ import annotations

import asyncio
import os
import struct
from collections.abc import Callable
from typing import Any

from hftalloc.bridge import BusBridge
from hftalloc.errors import FrameError, InvalidTopic
from hftalloc.polling import poll_until
from hftalloc.topics import is_pattern, matches, split_pattern, validate_topic

try:
    import zmq
except ImportError as exc:  # pragma: no cover - pyzmq is an optional extra
    raise ImportError("ZmqBridge needs pyzmq: pip install 'coreallocs[zmq]'") from exc

__all__ = ["HEADER", "MAX_TOPIC_BYTES", "ZmqBridge", "zmq_prefix"]

HEADER = struct.Struct("<QQ")  # publisher id, per-topic sequence number
MAX_TOPIC_BYTES = 255  # the receiver looks for the end of the topic in the first 256 bytes


def zmq_prefix(pattern: str) -> bytes:
    """The ZeroMQ subscription prefix covering ``pattern`` (exact match is checked locally)."""
    segments = split_pattern(pattern)
    if not is_pattern(pattern):
        return pattern.encode() + b"\0"
    literal = []
    for segment in segments:
        if segment in ("*", ">"):
            break
        literal.append(segment)
    return (".".join(literal) + ".").encode() if literal else b""


class ZmqBridge(BusBridge):
    """Connects a MessageBus to ZeroMQ PUB/SUB sockets (see module doc).

    ``hwm``: high-water mark of every socket (messages ZeroMQ queues per peer before a
    PUB drops; dropped messages show up as ``gaps`` at the receiver).
    """

    def __init__(self, bus: Any, *, context: zmq.Context | None = None, hwm: int = 100_000,
                 linger_ms: int = 200) -> None:
        super().__init__(bus)
        self.context = context if context is not None else zmq.Context.instance()
        self.hwm = hwm
        self.linger_ms = linger_ms
        self.publisher_id = int.from_bytes(os.urandom(8), "little")
        self._pub_sockets: list[zmq.Socket] = []
        self._sub_sockets: list[zmq.Socket] = []
        self._sub_filters: list[tuple[tuple[str, ...], ...]] = []
        self._poller = zmq.Poller()
        self._topic_bytes: dict[str, bytes] = {}
        self._out_seq: dict[str, int] = {}
        self._in_seq: dict[tuple[int, str], int] = {}
        self.gaps = 0
        self.malformed = 0
        self.filtered = 0
        self.closed = False

    # -- out ---------------------------------------------------------------------------------
    def publish_to(self, endpoint: str, patterns: list[str] | str, *, bind: bool = True) -> str:
        """Forward local messages on topics matching ``patterns`` to a PUB socket that binds
        (default) or connects to ``endpoint``; returns the endpoint actually bound."""
        sock = self.context.socket(zmq.PUB)
        sock.setsockopt(zmq.SNDHWM, self.hwm)
        sock.setsockopt(zmq.LINGER, self.linger_ms)
        try:
            if bind:
                sock.bind(endpoint)
                endpoint = sock.getsockopt_string(zmq.LAST_ENDPOINT)
            else:
                sock.connect(endpoint)
            self._forward(sock, patterns)
        except BaseException:
            sock.close(linger=0)
            raise
        self._pub_sockets.append(sock)
        return endpoint

    def _send(self, target: zmq.Socket, topic: str, msg: Any) -> None:
        prefix = self._topic_bytes.get(topic)
        if prefix is None:
            raw = topic.encode()
            if len(raw) > MAX_TOPIC_BYTES:
                raise InvalidTopic(f"topic {topic[:40]!r}... is {len(raw)} bytes; ZeroMQ frames "
                                   f"carry topics of up to {MAX_TOPIC_BYTES}")
            prefix = self._topic_bytes[topic] = raw + b"\0"
        seq = self._out_seq.get(topic, 0) + 1
        self._out_seq[topic] = seq
        target.send(b"".join((prefix, HEADER.pack(self.publisher_id, seq), msg.payload)),
                    copy=False)

    # -- in ----------------------------------------------------------------------------------
    def subscribe_from(self, endpoint: str, patterns: list[str] | str = ">", *,
                       bind: bool = False) -> str:
        """Publish on the local bus what a SUB socket connected (default) or bound to
        ``endpoint`` receives on topics matching ``patterns``."""
        patterns = [patterns] if isinstance(patterns, str) else list(patterns)
        filters = tuple(split_pattern(p) for p in patterns)
        if not filters:
            raise ValueError("subscribe_from() needs at least one topic pattern")
        sock = self.context.socket(zmq.SUB)
        sock.setsockopt(zmq.RCVHWM, self.hwm)
        sock.setsockopt(zmq.LINGER, 0)
        try:
            for prefix in sorted({zmq_prefix(p) for p in patterns}):
                sock.setsockopt(zmq.SUBSCRIBE, prefix)
            if bind:
                sock.bind(endpoint)
                endpoint = sock.getsockopt_string(zmq.LAST_ENDPOINT)
            else:
                sock.connect(endpoint)
        except BaseException:
            sock.close(linger=0)
            raise
        self._sub_sockets.append(sock)
        self._sub_filters.append(filters)
        self._poller.register(sock, zmq.POLLIN)
        return endpoint

    def _on_frame(self, frame: Any, filters: tuple[tuple[str, ...], ...]) -> None:
        view = frame.buffer if hasattr(frame, "buffer") else memoryview(frame)
        head = bytes(view[:MAX_TOPIC_BYTES + 1])
        end = head.find(b"\0")
        try:
            if end <= 0 or len(view) < end + 1 + HEADER.size:
                raise FrameError(f"frame of {len(view)} bytes has no topic and header")
            try:
                topic = validate_topic(head[:end].decode())
            except (UnicodeDecodeError, InvalidTopic) as exc:
                raise FrameError(f"frame with an invalid topic: {exc}") from None
        except FrameError:
            self.malformed += 1
            return
        if not any(matches(f, topic) for f in filters):
            self.filtered += 1  # a prefix subscription let through a non-matching topic
            return
        publisher, seq = HEADER.unpack_from(view, end + 1)
        key = (publisher, topic)
        last = self._in_seq.get(key)
        if last is not None and seq > last + 1:
            self.gaps += seq - last - 1
        self._in_seq[key] = seq
        self._inject(topic, view[end + 1 + HEADER.size:])

    def poll(self, timeout: float = 0.0, limit: int = 1024) -> int:
        """Move waiting frames onto the bus, waiting up to ``timeout`` seconds for the first;
        returns how many frames were handled."""
        if self.closed:
            return 0
        handled = 0
        events = dict(self._poller.poll(int(timeout * 1000)))
        for sock, filters in zip(self._sub_sockets, self._sub_filters, strict=True):
            if sock not in events:
                continue
            while handled < limit:
                try:
                    frame = sock.recv(zmq.NOBLOCK, copy=False)
                except zmq.Again:
                    break
                self._on_frame(frame, filters)
                handled += 1
        return handled

    def poll_until(self, predicate: Callable[[], bool], timeout: float) -> bool:
        """Poll until ``predicate()`` holds or ``timeout`` seconds pass; returns predicate()."""
        return poll_until(lambda: self.poll(0), self.poll, predicate, timeout)

    async def run(self, stop: Callable[[], bool] | None = None, *,
                  idle_sleep: float = 0.0005) -> None:
        """Pump the SUB sockets from an asyncio task (asyncio or uvloop) until ``stop()``."""
        while not self.closed and not (stop is not None and stop()):
            if self.poll(0):
                await asyncio.sleep(0)
            else:
                await asyncio.sleep(idle_sleep)

    # -- lifecycle ---------------------------------------------------------------------------
    def close(self) -> None:
        """Unsubscribe from the bus and close the sockets (pending PUB frames get
        ``linger_ms`` to leave)."""
        if self.closed:
            return
        self.closed = True
        self._unsubscribe()
        for sock in self._sub_sockets:
            self._poller.unregister(sock)
            sock.close(linger=0)
        for sock in self._pub_sockets:
            sock.close(linger=self.linger_ms)
        self._sub_sockets.clear()
        self._pub_sockets.clear()

    def __enter__(self) -> ZmqBridge:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def stats(self) -> dict[str, int]:
        data = super().stats()
        data.update(gaps=self.gaps, malformed=self.malformed, filtered=self.filtered)
        return data

    def __repr__(self) -> str:
        return (f"<ZmqBridge pub={len(self._pub_sockets)} sub={len(self._sub_sockets)} "
                f"sent={self.sent} received={self.received} gaps={self.gaps}>")
