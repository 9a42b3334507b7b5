"""One TCP connection carrying a FIX session: framing of the byte stream (asyncio.Protocol).

Complete messages inside a received chunk are parsed in place (the chunk is the buffer);
only a message split across chunks is assembled in a bounded bytearray and copied once.
Garbage before BeginString is skipped and counted; a message with a bad BodyLength or
CheckSum is dropped and counted (the spec's "ignore garbled messages"); a message that
declares more than ``max_message_size`` bytes ends the connection.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from hftalloc.fix._codec import frame, parse
from hftalloc.fix.errors import (
    FixBadBodyLength,
    FixBadChecksum,
    FixGarbled,
    FixOversize,
    FixParseError,
)
from hftalloc.fix.session import FixSession
from hftalloc.fix.stats import SessionStats

__all__ = ["FixConnection"]

log = logging.getLogger("hftalloc.fix")

# binds the first message of an acceptor's connection to a session (None: refuse)
Binder = Callable[["FixConnection", Any], FixSession | None]


class FixConnection(asyncio.Protocol):
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
        self._acc: bytearray | None = None
        self._on_lost = on_lost
        self._closing = False
        self.refuse = False       # close as soon as the connection is made (over the limit)

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
        self._acc = None
        if self._on_lost is not None:
            self._on_lost(self)

    def close(self) -> None:
        self._closing = True
        if self.transport is not None:
            self.transport.close()

    def data_received(self, data: bytes) -> None:  # type: ignore[override]
        st = self.session.stats if self.session is not None else self.stats
        st.bytes_in += len(data)
        acc = self._acc
        if acc is not None:
            acc += data
            buf: bytes | bytearray = acc
        else:
            buf = data
        n = len(buf)
        pos = 0
        limit = self.max_message_size
        while pos < n and not self._closing:
            try:
                skip, size = frame(buf, pos, n, limit)
            except FixOversize:
                st.oversize += 1
                self._fatal(st, "message larger than the size limit")
                return
            except FixGarbled as exc:
                start = pos + exc.skip  # type: ignore[attr-defined]
                st.garbage_bytes += exc.skip  # type: ignore[attr-defined]
                st.garbled += 1
                if isinstance(exc, FixBadChecksum):
                    st.bad_checksum += 1
                elif isinstance(exc, FixBadBodyLength):
                    st.bad_body_length += 1
                pos = start + 1
                continue
            if skip:
                st.garbage_bytes += skip
            if size == 0:
                pos += skip
                break
            start = pos + skip
            pos = start + size
            if buf is data:
                self._deliver(data, start, pos, st)
            else:
                self._deliver(bytes(buf[start:pos]), 0, size, st)
            st = self.session.stats if self.session is not None else self.stats
        if self._closing:
            self._acc = None
            return
        if acc is not None:
            del acc[:pos]
            if not acc:
                self._acc = None
        elif pos < n:
            self._acc = bytearray(data[pos:])

    # -- helpers ----------------------------------------------------------------------------
    def _deliver(self, raw: bytes, start: int, end: int, st: SessionStats) -> None:
        try:
            msg = parse(raw, start, end, verify=False, max_size=self.max_message_size)
        except FixParseError as exc:
            if self.session is None:
                st.not_logon_first += 1
                self.close()
                return
            self.session.unparsable(raw[start:end], exc)
            return
        if self.session is None:
            session = self.binder(self, msg) if self.binder is not None else None
            if session is None:
                self.close()
                return
            self.session = session
            session.attach(self.transport)  # type: ignore[arg-type]
            session.stats.bytes_in += end - start
        try:
            self.session.handle(msg)
        finally:
            msg.release()
        if self.session is not None and not self.session.connected:
            self._closing = True

    def _fatal(self, st: SessionStats, text: str) -> None:
        log.info("connection closed: %s", text)
        if self.session is not None and self.session.is_logged_on:
            self.session._logout_and_close(text)
        self.close()
