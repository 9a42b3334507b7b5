"""ZmqBridge: a MessageBus spanning processes and machines over ZeroMQ PUB/SUB (pyzmq).

::

    bridge = ZmqBridge(bus)
    endpoint = bridge.publish_to("tcp://127.0.0.1:*", ["md.>"])    # local md.* -> PUB
    bridge.subscribe_from("tcp://10.0.0.7:5556", ["ord.fill.*"])   # SUB -> local bus
    bridge.poll(timeout=0.01)                                        # or: await bridge.run(stop)

Frame (one ZeroMQ frame per message): ``topic`` (UTF-8, at most 255 bytes), ``\\0``, then
a 16-byte header
(publisher id, per-topic sequence number, little-endian u64) and the payload. Each PUB
socket of a bridge is a publisher of its own (``publisher_id + i`` for the i-th), numbering
the frames of each topic it sends from 1. The topic
comes first so that subscription patterns become ZeroMQ prefix subscriptions
(``md.quote.*`` -> ``md.quote.``, an exact topic -> ``topic\\0``); the exact wildcard match
is then checked locally. The sequence numbers let the receiver count what PUB/SUB
drops silently (slow subscriber past the high-water mark, frames sent while a connection
was down and came back): ``gaps``.

Inbound frames are untrusted. Each is checked (one part, length, topic, header) and
either delivered or counted under one reason (``malformed``, ``multipart``,
``filtered``, ``topic_limit``, ``too_large``, or the local bus's ``in_*`` counters);
the pump never raises for what a peer sends. libzmq itself refuses messages above
``max_message_bytes`` (``MAXMSGSIZE``; default four times the largest valid frame) by
cutting that peer's connection for good, so a SUB socket queues at most ``hwm`` frames
of bounded size per connected peer; every disconnection is counted (``disconnects``,
from a socket monitor). Sequence state is
kept per (publisher, topic) stream for at most ``max_streams`` streams (least
recently seen evicted first, ``evicted``) and ``stream_ttl`` seconds without a frame
(``expired``). A sequence number that goes backwards or jumps by more than
``max_gap`` is an ``anomalies`` count that restarts that stream's tracking; it never
adds to ``gaps``.

Copies: one into the outgoing frame; the receiver reads the frame in place
(``recv(copy=False)``) and copies the payload once into a block of the local bus. The
frames one ``poll`` drains from a socket reach the bus in batches (consecutive frames
on one topic: one ``commit_many``, so batch subscribers get them in one call).
"""

from __future__ import annotations

import asyncio
import logging
import os
import struct
import time
from collections.abc import Callable
from typing import Any

from hftalloc.bridge import BusBridge
from hftalloc.errors import InvalidTopic
from hftalloc.net.framing import DEFAULT_MAX_TOPICS, TooManyTopics, TopicTable
from hftalloc.polling import poll_until
from hftalloc.topics import is_pattern, matches, split_pattern

try:
    import zmq
except ImportError as exc:  # pragma: no cover - pyzmq is an optional extra
    raise ImportError("ZmqBridge needs pyzmq: pip install 'coreallocs[zmq]'") from exc

__all__ = ["HEADER", "MAX_TOPIC_BYTES", "ZmqBridge", "zmq_prefix"]

HEADER = struct.Struct("<QQ")  # publisher id, per-topic sequence number
MAX_TOPIC_BYTES = 255  # the receiver looks for the end of the topic in the first 256 bytes

log = logging.getLogger("hftalloc.net.zmq_bridge")


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


class _PubTarget:
    """One PUB socket with its publisher id and per-topic sequence numbers."""

    __slots__ = ("publisher_id", "seq", "sock")

    def __init__(self, sock: zmq.Socket, publisher_id: int) -> None:
        self.sock = sock
        self.publisher_id = publisher_id
        self.seq: dict[str, int] = {}


class ZmqBridge(BusBridge):
    """Connects a MessageBus to ZeroMQ PUB/SUB sockets (see module doc).

    ``hwm``: high-water mark of every socket (messages ZeroMQ queues per peer before a
    PUB drops; dropped messages show up as ``gaps`` at the receiver).
    ``max_payload``: largest inbound payload (default: the bus's largest size class).
    ``max_streams`` (65536) and ``stream_ttl`` (300 s): bounds of the per-(publisher,
    topic) sequence state. ``max_gap`` (1,000,000): a larger jump is an anomaly.
    ``max_topics`` (65536; None: no limit): distinct inbound topics.
    ``max_message_bytes``: libzmq's ``MAXMSGSIZE`` on SUB sockets (default: four times
    the largest valid frame; bigger messages cut the sending peer off).
    """

    def __init__(self, bus: Any, *, context: zmq.Context | None = None, hwm: int = 100_000,
                 linger_ms: int = 200, max_payload: int | None = None,
                 max_streams: int = 65536, stream_ttl: float = 300.0,
                 max_gap: int = 1_000_000, max_topics: int | None = DEFAULT_MAX_TOPICS,
                 max_message_bytes: int | None = None) -> None:
        for name, value in (("max_streams", max_streams), ("max_gap", max_gap)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if isinstance(stream_ttl, bool) or not isinstance(stream_ttl, (int, float)) or \
                not stream_ttl > 0:
            raise ValueError(f"stream_ttl must be a positive number, got {stream_ttl!r}")
        limit = bus.allocator.max_size if max_payload is None else max_payload
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
            raise ValueError(f"max_payload must be an int >= 0, got {max_payload!r}")
        super().__init__(bus)
        self.context = context if context is not None else zmq.Context.instance()
        self.hwm = hwm
        self.linger_ms = linger_ms
        self.max_payload = limit
        self.max_frame = MAX_TOPIC_BYTES + 1 + HEADER.size + limit
        if max_message_bytes is None:
            max_message_bytes = 4 * self.max_frame
        if isinstance(max_message_bytes, bool) or not isinstance(max_message_bytes, int) or \
                max_message_bytes < self.max_frame:
            raise ValueError(f"max_message_bytes must be an int >= {self.max_frame} (the largest "
                             f"valid frame), got {max_message_bytes!r}")
        self.max_message_bytes = max_message_bytes
        self.max_streams = max_streams
        self.stream_ttl = float(stream_ttl)
        self.max_gap = max_gap
        self.topics = TopicTable(max_topics)
        self.publisher_id = int.from_bytes(os.urandom(8), "little")  # of the first PUB socket
        self._pub_sockets: list[zmq.Socket] = []
        self._sub_sockets: list[zmq.Socket] = []
        self._sub_filters: list[tuple[tuple[str, ...], ...]] = []
        self._monitors: list[zmq.Socket] = []
        self._poller = zmq.Poller()
        self._topic_bytes: dict[str, bytes] = {}
        # (publisher, topic) -> (last seq, monotonic time last seen); least recently seen first
        self._streams: dict[tuple[int, str], tuple[int, float]] = {}
        self._now = time.monotonic()
        self._next_socket = 0
        self.gaps = 0
        self.malformed = 0
        self.multipart = 0
        self.filtered = 0
        self.topic_limit = 0
        self.too_large = 0
        self.anomalies = 0
        self.evicted = 0
        self.expired = 0
        self.errors = 0
        self.disconnects = 0
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
            publisher = (self.publisher_id + len(self._pub_sockets)) & 0xFFFF_FFFF_FFFF_FFFF
            self._forward(_PubTarget(sock, publisher), patterns)
        except BaseException:
            sock.close(linger=0)
            raise
        self._pub_sockets.append(sock)
        return endpoint

    def _send(self, target: _PubTarget, topic: str, msg: Any) -> None:
        prefix = self._topic_bytes.get(topic)
        if prefix is None:
            raw = topic.encode()
            if len(raw) > MAX_TOPIC_BYTES:
                raise InvalidTopic(f"topic {topic[:40]!r}... is {len(raw)} bytes; ZeroMQ frames "
                                   f"carry topics of up to {MAX_TOPIC_BYTES}")
            prefix = self._topic_bytes[topic] = raw + b"\0"
        seq = target.seq.get(topic, 0) + 1  # per socket: each one drops for its own peers
        target.seq[topic] = seq
        target.sock.send(b"".join((prefix, HEADER.pack(target.publisher_id, seq), msg.payload)),
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
        sock.setsockopt(zmq.MAXMSGSIZE, self.max_message_bytes)
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
        monitor = sock.get_monitor_socket(zmq.EVENT_DISCONNECTED)
        self._monitors.append(monitor)
        self._poller.register(monitor, zmq.POLLIN)
        return endpoint

    def _on_frame(self, frame: Any, filters: tuple[tuple[str, ...], ...]) -> None:
        """Check one inbound frame and inject it on its own."""
        item = self._check_frame(frame, filters)
        if item is not None:
            self._inject(*item)

    def _check_frame(self, frame: Any, filters: tuple[tuple[str, ...], ...]
                     ) -> tuple[str, Any] | None:
        """Check one inbound frame: (topic, payload view) to inject, or None (counted)."""
        view = frame.buffer if hasattr(frame, "buffer") else memoryview(frame)
        size = len(view)
        end = bytes(view[:MAX_TOPIC_BYTES + 1]).find(b"\0")
        if end <= 0 or size < end + 1 + HEADER.size:
            self.malformed += 1  # no topic, or no room for the header
            return None
        raw = bytes(view[:end])
        known = self.topics.known(raw)
        new = known is None
        if known is not None:
            topic = known
        else:
            try:
                topic = self.topics.parse(raw)
            except InvalidTopic:
                self.malformed += 1
                return None
        if not any(matches(f, topic) for f in filters):
            self.filtered += 1  # a prefix subscription let through a non-matching topic
            return None
        if new:  # only topics that pass the filters take a place in the table
            try:
                self.topics.admit(raw, topic)
            except TooManyTopics:
                self.topic_limit += 1
                return None
        publisher, seq = HEADER.unpack_from(view, end + 1)
        if seq == 0:
            self.malformed += 1  # publishers number each topic's frames from 1
            return None
        self._track(publisher, topic, seq)
        if size - end - 1 - HEADER.size > self.max_payload:
            self.too_large += 1
            return None
        return topic, view[end + 1 + HEADER.size:]

    def _track(self, publisher: int, topic: str, seq: int) -> None:
        """Count the frames missing before ``seq`` on (publisher, topic)."""
        streams = self._streams
        key = (publisher, topic)
        entry = streams.pop(key, None)  # re-inserted below: dict order is recency order
        if entry is None:
            if len(streams) >= self.max_streams:
                del streams[next(iter(streams))]
                self.evicted += 1
        else:
            last = entry[0]
            if seq != last + 1:
                if last < seq <= last + 1 + self.max_gap:
                    self.gaps += seq - last - 1
                else:  # backwards, repeated or implausibly far ahead: start over
                    self.anomalies += 1
        streams[key] = (seq, self._now)

    def _expire(self) -> None:
        streams = self._streams
        horizon = self._now - self.stream_ttl
        while streams:
            key = next(iter(streams))
            if streams[key][1] > horizon:
                return
            del streams[key]
            self.expired += 1

    @property
    def streams(self) -> int:
        """(publisher, topic) streams whose sequence numbers are tracked right now."""
        return len(self._streams)

    def poll(self, timeout: float = 0.0, limit: int = 1024) -> int:
        """Move waiting frames onto the bus, waiting up to ``timeout`` seconds for the first;
        returns how many messages were handled. Sockets take turns in going first.
        Consecutive frames on one topic read from one socket in one call reach the bus
        as one batch (``commit_many``)."""
        if self.closed:
            return 0
        handled = 0
        events = dict(self._poller.poll(int(timeout * 1000)))
        self._now = time.monotonic()
        if self._streams:
            self._expire()
        if len(events) > 0:
            for monitor in self._monitors:
                if monitor in events:
                    self._count_disconnects(monitor)
        count = len(self._sub_sockets)
        first = self._next_socket % count if count else 0
        self._next_socket = first + 1
        for i in range(count):
            index = (first + i) % count
            sock = self._sub_sockets[index]
            if sock not in events:
                continue
            filters = self._sub_filters[index]
            run_topic: str | None = None
            run: list[Any] = []
            while handled < limit:
                try:
                    frame = sock.recv(zmq.NOBLOCK, copy=False)
                except zmq.Again:
                    break
                except zmq.ZMQError as exc:
                    self.errors += 1
                    log.warning("receiving from a SUB socket failed: %s", exc)
                    break
                handled += 1
                if frame.more:  # bridge messages are one frame: drop every part
                    self._drain_parts(sock)
                    continue
                try:
                    item = self._check_frame(frame, filters)
                except Exception:
                    self.errors += 1
                    log.exception("handling an inbound ZeroMQ frame failed")
                    continue
                if item is None:
                    continue
                if item[0] != run_topic and run:
                    self._inject_run(run_topic, run)  # type: ignore[arg-type]
                    run = []
                run_topic = item[0]
                run.append(item[1])
            if run:
                self._inject_run(run_topic, run)  # type: ignore[arg-type]
        return handled

    def _count_disconnects(self, monitor: zmq.Socket) -> None:
        while True:
            try:
                monitor.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            self.disconnects += 1

    def _drain_parts(self, sock: zmq.Socket) -> None:
        self.multipart += 1
        while sock.getsockopt(zmq.RCVMORE):
            sock.recv(zmq.NOBLOCK, copy=False)  # the rest of a message is already queued

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
        for sock, monitor in zip(self._sub_sockets, self._monitors, strict=True):
            self._poller.unregister(sock)
            self._poller.unregister(monitor)
            sock.disable_monitor()
            monitor.close(linger=0)
            sock.close(linger=0)
        self._monitors.clear()
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
        data.update(gaps=self.gaps, malformed=self.malformed, multipart=self.multipart,
                    filtered=self.filtered, topic_limit=self.topic_limit,
                    too_large=self.too_large, anomalies=self.anomalies, evicted=self.evicted,
                    expired=self.expired, errors=self.errors, disconnects=self.disconnects,
                    streams=len(self._streams))
        return data

    def __repr__(self) -> str:
        return (f"<ZmqBridge pub={len(self._pub_sockets)} sub={len(self._sub_sockets)} "
                f"sent={self.sent} received={self.received} gaps={self.gaps}>")
