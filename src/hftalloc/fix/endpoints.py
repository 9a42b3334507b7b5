"""FIX acceptor (server) and initiator (client) over asyncio TCP on one host.

The acceptor binds a connection to a session on its first message, which must be a Logon:
the session is ``(sender, peer's SenderCompID)``, created on first use (any peer CompID may
log on unless ``allowed`` lists them) and kept across reconnects with its store. It refuses
connections beyond ``max_connections`` and a second connection for a session that is logged
on. The initiator connects, logs on and, with ``reconnect=True``, reconnects after a loss.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hftalloc.fix._codec import FixMessage
from hftalloc.fix.connection import FixConnection
from hftalloc.fix.session import Application, FixSession, SessionConfig
from hftalloc.fix.stats import SessionStats
from hftalloc.fix.store import FileStore, MemoryStore, SessionStore

__all__ = ["FixAcceptor", "FixInitiator", "store_for"]

log = logging.getLogger("hftalloc.fix")


def store_for(config: SessionConfig, store_dir: str | os.PathLike[str] | None) -> SessionStore:
    """A FileStore named after the session in ``store_dir`` (with the config's
    durability), or a MemoryStore."""
    if store_dir is None:
        return MemoryStore()
    return FileStore(Path(store_dir) / f"{config.session_id}.store",
                     durability=config.durability)


class FixAcceptor:
    """Listens on ``host:port`` for FIX initiators logging on to CompID ``sender``."""

    def __init__(self, sender: str, app: Application | None = None, *,
                 host: str = "127.0.0.1", port: int = 0,
                 store_dir: str | os.PathLike[str] | None = None,
                 allowed: set[str] | None = None, max_connections: int = 64,
                 session_defaults: dict[str, Any] | None = None,
                 app_factory: Callable[[FixSession], Application] | None = None) -> None:
        self.sender = sender
        self.app = app
        self.app_factory = app_factory
        self.host = host
        self.port = port
        self.store_dir = store_dir
        self.allowed = allowed
        self.max_connections = max_connections
        self.session_defaults = session_defaults or {}
        self.sessions: dict[str, FixSession] = {}
        self.stats = SessionStats()          # counters of connections without a session
        self.connections: set[FixConnection] = set()
        self.connections_refused = 0
        self.connections_total = 0
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> int:
        """Start listening; returns the port."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self._protocol, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    def _protocol(self) -> FixConnection:
        conn = FixConnection(binder=self._bind, stats=self.stats,
                             max_message_size=self.session_defaults.get(
                                 "max_message_size", 65536),
                             on_lost=self.connections.discard)
        self.connections_total += 1
        if len(self.connections) >= self.max_connections:
            self.connections_refused += 1
            conn.refuse = True
            return conn
        self.connections.add(conn)
        timeout = self.session_defaults.get("logon_timeout", 10.0)
        asyncio.get_running_loop().call_later(timeout, self._logon_deadline, conn)
        return conn

    def _logon_deadline(self, conn: FixConnection) -> None:
        if conn.session is None and conn.transport is not None:
            self.stats.not_logon_first += 1
            conn.close()

    def session(self, target: str) -> FixSession:
        """The session with peer ``target`` (created on first use)."""
        sess = self.sessions.get(target)
        if sess is None:
            config = SessionConfig(self.sender, target, **self.session_defaults)
            sess = FixSession(config, None, store_for(config, self.store_dir))
            sess.app = (self.app_factory(sess) if self.app_factory is not None
                        else self.app or Application())
            self.sessions[target] = sess
        return sess

    def _bind(self, conn: FixConnection, msg: FixMessage) -> FixSession | None:
        if msg.msg_type != "A":
            self.stats.not_logon_first += 1
            return None
        peer = msg.get_str(49, "")
        if msg.get_str(56, "") != self.sender or not peer:
            self.stats.compid_errors += 1
            return None
        if self.allowed is not None and peer not in self.allowed:
            self.stats.compid_errors += 1
            return None
        sess = self.session(peer)
        if sess.connected:
            self.connections_refused += 1
            return None
        return sess

    def total_stats(self) -> SessionStats:
        """Counters of all sessions plus those of unbound connections."""
        total = SessionStats()
        total.add(self.stats)
        for s in self.sessions.values():
            total.add(s.stats)
        return total

    async def stop(self) -> None:
        """Log out every session, close connections and the listener."""
        for sess in self.sessions.values():
            if sess.is_logged_on:
                sess.logout("acceptor stopping")
        for sess in self.sessions.values():
            with contextlib.suppress(TimeoutError):
                await sess.wait_closed(timeout=1.0)
            sess.close()
        for conn in list(self.connections):
            conn.close()
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2.0)
        for sess in self.sessions.values():
            sess.store.close()


class FixInitiator:
    """Connects to ``host:port`` and logs on; one session, reconnecting when asked to."""

    def __init__(self, config: SessionConfig, app: Application | None = None, *,
                 host: str = "127.0.0.1", port: int,
                 store_dir: str | os.PathLike[str] | None = None,
                 store: SessionStore | None = None,
                 reconnect: bool = False, reconnect_interval: float = 0.5) -> None:
        self.session = FixSession(config, app,
                                  store if store is not None else store_for(config, store_dir),
                                  initiator=True)
        self.host = host
        self.port = port
        self.reconnect = reconnect
        self.reconnect_interval = reconnect_interval
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    async def connect(self, timeout: float = 10.0) -> FixSession:
        """Connect, send Logon and wait for the answer."""
        loop = asyncio.get_running_loop()
        await loop.create_connection(
            lambda: FixConnection(self.session,
                                  max_message_size=self.session.config.max_message_size),
            self.host, self.port)
        self.session.send_logon()
        await self.session.wait_logged_on(timeout)
        return self.session

    async def start(self, timeout: float = 10.0) -> FixSession:
        """Connect and log on; with ``reconnect`` keep reconnecting in the background."""
        await self.connect(timeout)
        if self.reconnect:
            self._task = asyncio.get_running_loop().create_task(self._keep_connected())
        return self.session

    async def _keep_connected(self) -> None:
        while not self._stopping:
            await self.session.wait_closed()
            while not self._stopping and not self.session.connected:
                await asyncio.sleep(self.reconnect_interval)
                try:
                    await self.connect(timeout=5.0)
                except (OSError, TimeoutError) as exc:
                    log.info("%s: reconnect failed: %s", self.session.session_id, exc)
                    self.session.close()

    async def stop(self, timeout: float = 2.0) -> None:
        """Log out and close (stops reconnecting)."""
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        if self.session.is_logged_on:
            self.session.logout()
            with contextlib.suppress(TimeoutError):
                await self.session.wait_closed(timeout)
        self.session.close()
        with contextlib.suppress(TimeoutError):
            await self.session.wait_closed(1.0)
        self.session.store.close()
