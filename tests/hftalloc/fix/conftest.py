"""Fixtures of the FIX tests: a venue on a background event loop, a raw FIX peer, and
QuickFIX settings files (QuickFIX's own FIX44.xml data dictionary)."""

from __future__ import annotations

import asyncio
import socket
import sys
import threading
import time
from pathlib import Path

import pytest

from hftalloc.fix import FixEncoder, frame, parse
from hftalloc.fix.venue import Venue


class LoopThread:
    """An asyncio loop in a daemon thread; ``call(coro)`` runs a coroutine there."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def call(self, coro, timeout: float = 30.0):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def sync(self, fn, *args):
        """Run a plain function on the loop thread and return its result."""
        async def run():
            return fn(*args)
        return self.call(run())

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


@pytest.fixture
def loop_thread():
    lt = LoopThread()
    yield lt
    lt.stop()


@pytest.fixture
def venue(loop_thread, tmp_path):
    """A Venue (acceptor ``VENUE``, file stores in tmp_path) on the background loop."""
    v = Venue(store_dir=tmp_path / "venue", heartbeat=30, logon_timeout=3.0)
    loop_thread.call(v.start())
    v.thread = loop_thread
    yield v
    loop_thread.call(v.stop())


class RawPeer:
    """A FIX peer on a plain blocking socket, for malformed input and scripted sequences."""

    def __init__(self, port: int, sender: str = "RAW", target: str = "VENUE") -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.enc = FixEncoder(sender, target)
        self.seq = 1
        self.buf = b""

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def send(self, msg_type: str, fields=(), seq: int | None = None, **kw) -> bytes:
        if seq is None:
            seq = self.seq
            self.seq += 1
        data = self.enc.encode(msg_type, seq, fields, **kw)
        self.sock.sendall(data)
        return data

    def logon(self, heartbeat: int = 30, reset: bool = True) -> None:
        self.send("A", [(98, 0), (108, heartbeat)] + ([(141, "Y")] if reset else []))
        assert self.expect("A").msg_type == "A"

    def recv(self, timeout: float = 5.0):
        """The next message, or None when the peer closed the connection."""
        deadline = time.monotonic() + timeout
        while True:
            skip, size = frame(self.buf)
            if size:
                raw = self.buf[skip:skip + size]
                self.buf = self.buf[skip + size:]
                return parse(raw)
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no message")
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(65536)
            except ConnectionResetError:
                return None
            if not chunk:
                return None
            self.buf += chunk

    def expect(self, msg_type: str, timeout: float = 5.0):
        """The next message of ``msg_type`` (others are skipped); fails on a close."""
        deadline = time.monotonic() + timeout
        while True:
            msg = self.recv(max(0.01, deadline - time.monotonic()))
            assert msg is not None, f"connection closed while waiting for {msg_type!r}"
            if msg.msg_type == msg_type:
                return msg

    def closed(self, timeout: float = 5.0) -> bool:
        """True when the other side closes the connection (messages before it are read)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if self.recv(max(0.01, deadline - time.monotonic())) is None:
                    return True
            except TimeoutError:
                return False
        return False

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def raw_peer(venue):
    peers = []

    def make(sender: str = "RAW") -> RawPeer:
        p = RawPeer(venue.port, sender)
        peers.append(p)
        return p
    yield make
    for p in peers:
        p.close()


# -- QuickFIX ---------------------------------------------------------------------------------
def data_dictionary() -> str:
    """QuickFIX's FIX44.xml (installed with the quickfix package)."""
    candidates = [Path(sys.prefix) / "share" / "quickfix" / "FIX44.xml"]
    try:
        import quickfix
        here = Path(quickfix.__file__).resolve().parent
        candidates += [here / "spec" / "FIX44.xml", here.parent / "share" / "quickfix" /
                       "FIX44.xml"]
    except ImportError:
        pass
    for c in candidates:
        if c.exists():
            return str(c)
    pytest.skip("QuickFIX's FIX44.xml is not installed")


@pytest.fixture(scope="session")
def qf_dictionary() -> str:
    """Path of QuickFIX's FIX44.xml (skips when QuickFIX is not installed)."""
    pytest.importorskip("quickfix")
    return data_dictionary()


@pytest.fixture
def qf_settings(tmp_path):
    """Write a QuickFIX settings file; returns its path."""
    pytest.importorskip("quickfix")
    dd = data_dictionary()

    def write(kind: str, port: int, sender: str, target: str, **extra) -> str:
        lines = ["[DEFAULT]", f"ConnectionType={kind}", "ReconnectInterval=1",
                 f"FileStorePath={tmp_path / ('qf-' + kind)}", "StartTime=00:00:00",
                 "EndTime=00:00:00", "UseDataDictionary=Y", f"DataDictionary={dd}",
                 "HeartBtInt=30"]
        if kind == "initiator":
            lines += ["SocketConnectHost=127.0.0.1", f"SocketConnectPort={port}"]
        else:
            lines += ["SocketAcceptAddress=127.0.0.1", f"SocketAcceptPort={port}"]
        lines += [f"{k}={v}" for k, v in extra.items()]
        lines += ["[SESSION]", "BeginString=FIX.4.4", f"SenderCompID={sender}",
                  f"TargetCompID={target}"]
        path = tmp_path / f"qf-{kind}.cfg"
        path.write_text("\n".join(lines) + "\n")
        return str(path)
    return write


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def port():
    return free_port()
