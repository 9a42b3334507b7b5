"""Bridges between a local :class:`~hftalloc.MessageBus` and other processes.

:class:`BusBridge` holds the mechanics shared by every transport:

* **out**: ``forward(target, patterns)`` subscribes the patterns on the bus; each local
  message on a matching topic is handed once per target to the transport (``_sender``);
* **in**: messages arriving from the transport are copied into blocks of the local
  bus, so local subscribers see ordinary bus messages with the bus's policies,
  counters and latency histogram. Consecutive messages on one topic read in one pump
  step are published together (``publish_many``, or ``claim`` + copy + ``commit_many``
  on a topic the bridge also forwards): batch subscribers get them as one batch.
  Inbound data is
  untrusted: whatever the local bus refuses (full, closed, too large, invalid topic)
  is counted by reason and skipped, and the bridge's pump never raises for it;
* **no echo**: a message the bridge injected is never sent out again by the same
  bridge, so two processes exchanging the same topics do not loop. (A bridge does not
  relay; messages published by local subscribers in reaction are forwarded normally.)

:class:`ShmBridge` uses shared-memory channels (one writer per target channel, any
number of reader channels); ``hftalloc.net.zmq_bridge.ZmqBridge`` uses ZeroMQ.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from functools import partial
from typing import Any

from coreallocs.uncopyable import Uncopyable
from hftalloc.bus import Subscription
from hftalloc.errors import BusClosed, BusFull, InvalidTopic, SizeTooLarge
from hftalloc.polling import poll_until
from hftalloc.shm.channel import ChannelReader, ChannelWriter
from hftalloc.topics import matches, split_pattern

__all__ = ["BusBridge", "ShmBridge"]

log = logging.getLogger("hftalloc.bridge")
_RETRY = object()  # a claim to make again once the messages held are committed


class BusBridge(Uncopyable):
    """Transport-independent part of a bridge (see module doc)."""

    def __init__(self, bus: Any) -> None:
        self.bus = bus
        self._async = bus.mode == "async"
        self._targets: list[tuple[Any, tuple[tuple[str, ...], ...]]] = []
        self._subs: list[Subscription] = []
        self._fanout: dict[str, int] = {}  # topic -> bridge callbacks per message
        self._current: Any = None  # sync bus: the message being injected
        self._injecting: set[int] = set()  # sync bus: ids of the messages of a run being injected
        self._pending: dict[int, int] = {}  # async bus: injected seq -> callbacks still due
        self._max_in: int | None = None  # largest local payload (the bus's largest class)
        self.sent = 0
        self.received = 0
        self.in_dropped = 0
        self.in_rejected = 0
        self.in_too_large = 0
        self.in_invalid = 0
        self.in_closed = 0
        self.in_errors = 0

    # -- out ---------------------------------------------------------------------------------
    def _forward(self, target: Any, patterns: list[str] | tuple[str, ...] | str) -> None:
        if isinstance(patterns, str):
            patterns = [patterns]
        segments = tuple(split_pattern(p) for p in patterns)
        if not segments:
            raise ValueError("forward() needs at least one topic pattern")
        self._targets.append((target, segments))
        self._fanout.clear()
        send = self._sender(target)
        for p, pattern in enumerate(patterns):
            self._subs.append(self.bus.subscribe(pattern, self._out_for(send, segments, p)))

    def _out_for(self, send: Callable[[str, Any], None],
                 segments: tuple[tuple[str, ...], ...], index: int) -> Callable[[Any], None]:
        """The subscriber of pattern ``index`` of one target: it sends a local message
        unless the bridge injected it or an earlier pattern of the target matches too."""
        mine: dict[str, bool] = {}  # topic -> this pattern is the target's first match

        def out(msg: Any) -> None:
            if msg is self._current:
                return
            if self._injecting and id(msg) in self._injecting:
                return
            pending = self._pending
            if pending:
                left = pending.get(msg.seq)
                if left is not None:
                    if left <= 1:
                        del pending[msg.seq]
                    else:
                        pending[msg.seq] = left - 1
                    return
            topic = msg.topic
            first = mine.get(topic)
            if first is None:
                first = mine[topic] = next(
                    i for i, p in enumerate(segments) if matches(p, topic)) == index
            if first:
                send(topic, msg)
                self.sent += 1

        return out

    def _sender(self, target: Any) -> Callable[[str, Any], None]:
        """``send(topic, msg)`` for one target (the transport's ``_send`` by default)."""
        return partial(self._send, target)

    def _send(self, target: Any, topic: str, msg: Any) -> None:  # pragma: no cover
        raise NotImplementedError

    # -- in ----------------------------------------------------------------------------------
    def _claim_in(self, topic: str, size: int, first: bool) -> Any:
        """A claimed local message for an inbound one, None when it is refused (counted), or
        _RETRY when ``first`` is false and the size class is full (nothing counted: the
        caller commits the messages it holds and claims again)."""
        bus = self.bus
        try:
            msg = bus.claim(topic, size) if first else bus.try_claim(topic, size)
        except Exception as exc:
            self._count_refused(exc, 1, f"a {size}-byte message", topic)
            return None
        if msg is None:
            if not first:
                return _RETRY
            self.in_dropped += 1  # drop policy: counted by the bus as well
        return msg

    def _count_refused(self, exc: Exception, count: int, what: str, topic: str) -> None:
        """Count ``count`` inbound messages the local bus refused with ``exc`` (call it from
        the ``except`` block: an unexpected error is logged with its traceback)."""
        if isinstance(exc, BusFull):  # raise policy (or block in a sync call): counted by
            self.in_rejected += count  # the bus too
        elif isinstance(exc, SizeTooLarge):
            self.in_too_large += count
        elif isinstance(exc, InvalidTopic):
            self.in_invalid += count
        elif isinstance(exc, BusClosed):
            self.in_closed += count
        else:
            self.in_errors += count
            log.exception("injecting %s on %r failed", what, topic)

    def _fill_in(self, topic: str, msg: Any, data: Any) -> bool:
        try:
            msg.buffer[:] = data
        except Exception:
            msg.abort()
            self.in_errors += 1
            log.exception("copying an inbound message on %r failed", topic)
            return False
        return True

    def _inject_run(self, topic: str, items: list[Any]) -> None:
        """Inject buffers that arrived together on ``topic``: one batch on the local bus
        (committed early, in pieces, when the local pool runs out). Never raises.

        One ``publish_many`` when no pattern this bridge forwards matches ``topic``
        (nothing to keep from echoing) and each buffer fits a size class; else claims
        (an oversized buffer is refused and counted there)."""
        if not self._fanout_of(topic):
            limit = self._max_in
            if limit is None:
                limit = self._max_in = self.bus.allocator.max_size
            for data in items:  # a loop: cheaper than all() on the usual short runs
                if len(data) > limit:
                    break
            else:
                self._publish_copies(topic, items)
                return
        run: list[Any] = []
        for data in items:
            self._run_add(run, topic, data)
        if run:
            self._commit_run(run)

    def _publish_copies(self, topic: str, payloads: list[Any]) -> None:
        """``bus.publish_many(topic, payloads)`` (one copy each into local blocks, one batch
        for batch subscribers); what the bus refuses is counted as by ``_claim_in``.
        Never raises."""
        total = len(payloads)
        try:
            published = self.bus.publish_many(topic, payloads)
        except Exception as exc:
            if isinstance(exc, BusFull):  # a full class: the rest of the batch went on
                published = total - exc.refused
            elif isinstance(exc, BusClosed):  # before the first message, or by a subscriber
                published = exc.published
            else:
                published = 0
            self._count_refused(exc, total - published, f"{total} messages", topic)
        else:
            self.in_dropped += total - published  # drop policy: counted by the bus as well
        self.received += published

    def _run_add(self, run: list[Any], topic: str, data: Any) -> None:
        """Copy ``data`` into a claimed local message appended to ``run`` (messages on one
        topic, not committed yet); ``run`` is committed first when the topic changes or
        the local size class is full."""
        if run and run[0].topic != topic:
            self._commit_run(run)
        msg = self._claim_in(topic, len(data), not run)
        if msg is _RETRY:
            self._commit_run(run)
            msg = self._claim_in(topic, len(data), True)
        if msg is not None and self._fill_in(topic, msg, data):
            run.append(msg)

    def _commit_run(self, messages: list[Any]) -> None:
        """Publish ``messages`` as one batch (no echo) and empty the list."""
        run = messages[:]
        messages.clear()
        self.received += len(run)
        if self._async:
            self.bus.commit_many(run)
            topic = run[0].topic
            fanout = self._fanout_of(topic)
            if fanout:
                for msg in run:
                    self._pending[msg.seq] = fanout
            return
        self._injecting = {id(msg) for msg in run}
        try:
            self.bus.commit_many(run)
        finally:
            self._injecting = set()

    def _fanout_of(self, topic: str) -> int:
        fanout = self._fanout.get(topic)
        if fanout is None:
            fanout = sum(1 for _, patterns in self._targets for p in patterns
                         if matches(p, topic))
            self._fanout[topic] = fanout
        return fanout

    def _inject(self, topic: str, data: Any) -> None:
        """Copy ``data`` (a buffer) into a local bus message on ``topic`` and publish it.

        Never raises: what the local bus refuses is counted (``in_dropped``,
        ``in_rejected``, ``in_too_large``, ``in_invalid``, ``in_closed``, ``in_errors``)."""
        msg = self._claim_in(topic, len(data), True)
        if msg is None or not self._fill_in(topic, msg, data):
            return
        self.received += 1
        if self._async:
            seq = msg.commit()
            fanout = self._fanout_of(topic)
            if fanout:
                self._pending[seq] = fanout
        else:
            self._current = msg
            try:
                msg.commit()
            finally:
                self._current = None

    # -- lifecycle ---------------------------------------------------------------------------
    def _unsubscribe(self) -> None:
        for sub in self._subs:
            if sub.active:
                sub.unsubscribe()
        self._subs.clear()

    def stats(self) -> dict[str, int]:
        return {"sent": self.sent, "received": self.received, "in_dropped": self.in_dropped,
                "in_rejected": self.in_rejected, "in_too_large": self.in_too_large,
                "in_invalid": self.in_invalid, "in_closed": self.in_closed,
                "in_errors": self.in_errors}


class ShmBridge(BusBridge):
    """Connects a MessageBus to shared-memory channels.

    ::

        bridge = ShmBridge(bus)
        bridge.forward("feed-to-strategy", ["md.>"])   # local md.* -> channel (as its producer)
        bridge.receive("strategy-to-feed")             # channel -> local bus (as its consumer)
        bridge.poll()                                  # or: await bridge.run(stop)

    Channels named by string are attached (and closed by :meth:`close`); endpoints
    passed in are used as they are and left open. A full channel applies its writer's
    policy; an exception raised there reaches the bus's error hook like any subscriber
    error.
    """

    def __init__(self, bus: Any, *, policy: str = "block", timeout: float = 1.0) -> None:
        super().__init__(bus)
        self.policy = policy
        self.timeout = timeout
        self.writers: list[ChannelWriter] = []
        self.readers: list[ChannelReader] = []
        self._owned: list[Any] = []
        self._polling = False
        self._run: list[Any] = []  # local messages filled during one poll, not committed yet
        self._copying: list[Callable[..., int]] = []  # poll_copies of readers taking every topic
        self._dispatching: list[ChannelReader] = []  # readers with their own patterns
        self._copies: list[tuple[str, list[bytes], int]] = []  # runs read by one poll_copies

    def forward(self, channel: str | ChannelWriter, patterns: list[str] | str) -> ChannelWriter:
        """Send local messages on topics matching ``patterns`` to ``channel``."""
        if isinstance(channel, str):
            writer = ChannelWriter(channel, policy=self.policy, timeout=self.timeout)
            self._owned.append(writer)
        elif isinstance(channel, ChannelWriter):
            writer = channel
        else:
            raise TypeError(f"channel must be a name or a ChannelWriter, not "
                            f"{type(channel).__name__}")
        self.writers.append(writer)
        self._forward(writer, patterns)
        return writer

    def receive(self, channel: str | ChannelReader, patterns: list[str] | str = ">"
                ) -> ChannelReader:
        """Publish messages from ``channel`` (on topics matching ``patterns``) on the bus."""
        if isinstance(channel, str):
            reader = ChannelReader(channel)
            self._owned.append(reader)
        elif isinstance(channel, ChannelReader):
            reader = channel
        else:
            raise TypeError(f"channel must be a name or a ChannelReader, not "
                            f"{type(channel).__name__}")
        patterns = [patterns] if isinstance(patterns, str) else list(patterns)
        for pattern in patterns:
            reader.subscribe(pattern, self._on_channel_message)
        if patterns == [">"]:
            self._copying.append(reader.poll_copies)
        else:
            self._dispatching.append(reader)
        self.readers.append(reader)
        return reader

    def _sender(self, target: ChannelWriter) -> Callable[[str, Any], None]:
        publish = target.publish

        def send(topic: str, msg: Any) -> None:
            publish(topic, msg.payload)

        return send

    def _inject_copies(self, copies: list[tuple[str, list[bytes], int]]) -> None:
        """Publish the runs ``poll_copies`` read (the channel blocks are back already), in
        arrival order, and empty the list."""
        runs = copies[:]
        copies.clear()
        limit = self._max_in
        if limit is None:
            limit = self._max_in = self.bus.allocator.max_size
        fanout = self._fanout
        for topic, items, largest in runs:
            echo = fanout.get(topic)
            if echo is None:
                echo = self._fanout_of(topic)
            if not echo and largest <= limit:
                self._publish_copies(topic, items)
            else:
                self._inject_run(topic, items)

    def _on_channel_message(self, msg: Any) -> None:
        if self._polling:  # copied now (the channel block goes back), committed in batches
            self._run_add(self._run, msg.topic, msg)
        else:
            self._inject(msg.topic, msg)

    # -- running ------------------------------------------------------------------------------
    def poll(self, limit: int = 256) -> int:
        """Move up to ``limit`` waiting messages per inbound channel onto the bus
        (consecutive messages on one topic as one batch)."""
        n = 0
        copies = self._copies
        for poll_copies in self._copying:
            try:
                n += poll_copies(copies, limit)
            finally:
                if copies:
                    self._inject_copies(copies)
        if self._dispatching:
            n += self._poll_dispatching(limit)
        return n

    def _poll_dispatching(self, limit: int) -> int:
        """Poll the readers with their own patterns through their subscriptions."""
        n = 0
        for reader in self._dispatching:
            self._polling = True
            try:
                n += reader.poll(limit)
            finally:
                self._polling = False
                if self._run:
                    self._commit_run(self._run)
        return n

    def wait(self, timeout: float) -> bool:
        """Sleep until an inbound message is waiting (futex wake-up with one inbound channel;
        with several, naps of 50 µs) or ``timeout`` seconds pass."""
        if len(self.readers) == 1:
            return self.readers[0].wait(timeout)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(r.queued for r in self.readers):
                return True
            time.sleep(0.00005)
        return False

    def poll_until(self, predicate: Callable[[], bool], timeout: float) -> bool:
        """Poll until ``predicate()`` holds or ``timeout`` seconds pass; returns predicate()."""
        return poll_until(self.poll, self.wait, predicate, timeout)

    async def run(self, stop: Callable[[], bool] | None = None, *, idle_sleep: float = 0.0005,
                  limit: int = 256) -> None:
        """Pump the inbound channels from an asyncio task until ``stop()`` is true."""
        while not (stop is not None and stop()):
            if self.poll(limit):
                await asyncio.sleep(0)
            else:
                await asyncio.sleep(idle_sleep)

    def close(self) -> None:
        """Unsubscribe from the bus and close the endpoints this bridge attached."""
        self._unsubscribe()
        while self._owned:
            self._owned.pop().close()

    def __enter__(self) -> ShmBridge:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def stats(self) -> dict[str, Any]:
        data: dict[str, Any] = super().stats()
        endpoints: list[Any] = [*self.writers, *self.readers]
        data["channels"] = [e.stats() for e in endpoints if not e.closed]
        return data

    def __repr__(self) -> str:
        return (f"<ShmBridge out={[w.name for w in self.writers]} "
                f"in={[r.name for r in self.readers]} sent={self.sent} "
                f"received={self.received}>")
