"""Interoperability with the real engine: QuickFIX's Python API against this package's
acceptor and initiator (QuickFIX validates every message with its FIX44.xml dictionary)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hftalloc.fix.endpoints import FixInitiator
from hftalloc.fix.session import Application, SessionConfig
from hftalloc.fix.venue import Venue, VenueApp

pytest.importorskip("quickfix")


def wait_for(predicate, timeout=20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return False


PEER = Path(__file__).with_name("qf_peer.py")


def peer_env() -> dict[str, str]:
    """The inherited environment; under a preloaded AddressSanitizer (tools/sanitize.sh)
    libstdc++ is preloaded after it, so that ASan finds ``__cxa_throw`` for QuickFIX's C++
    exceptions (it only intercepts what is loaded before the program starts)."""
    env = dict(os.environ)
    preload = env.get("LD_PRELOAD", "")
    if "libasan" in preload and "libstdc++" not in preload:
        env["LD_PRELOAD"] = preload + ":libstdc++.so.6"
    return env


class QfPeer:
    """QuickFIX in a child process (qf_peer.py), driven by JSON lines."""

    def __init__(self, role: str, settings: str) -> None:
        self.proc = subprocess.Popen([sys.executable, str(PEER), role, settings],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                     env=peer_env())
        self.last = self._read()
        assert self.last.get("event") == "started"

    def _read(self) -> dict:
        line = self.proc.stdout.readline()
        assert line, f"QuickFIX peer exited with {self.proc.wait()}"
        return json.loads(line)

    def cmd(self, name: str, **args) -> dict:
        self.proc.stdin.write(json.dumps({"cmd": name, **args}) + "\n")
        self.proc.stdin.flush()
        self.last = self._read()
        return self.last

    def wait(self, predicate, timeout: float = 20.0) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            state = self.cmd("state")
            if predicate(state):
                return state
            time.sleep(0.05)
        raise AssertionError(f"QuickFIX peer state: {self.last}")

    def close(self) -> int:
        if self.proc.poll() is None:
            try:
                self.cmd("quit")
            except (AssertionError, BrokenPipeError):
                pass
        try:
            return self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


@pytest.fixture
def qf_peer():
    peers = []

    def start(role: str, settings: str) -> QfPeer:
        p = QfPeer(role, settings)
        peers.append(p)
        return p
    yield start
    for p in peers:
        assert p.close() == 0, "the QuickFIX peer did not exit cleanly"


def our_order(i: int):
    return [(11, f"c{i}"), (55, "AAPL"), (54, "1"), (38, 100), (40, "2"), (44, 100.5),
            (60, "20260101-00:00:00.000")]




class OurApp(Application):
    def __init__(self) -> None:
        self.fills: set[str] = set()
        self.acks: set[str] = set()
        self.snapshots: list[list[tuple[str, str, int]]] = []
        self.rejects = 0

    def on_message(self, session, msg):
        if msg.msg_type == "8":
            (self.fills if msg.get_str(150) == "F" else self.acks).add(msg.get_str(11))
        elif msg.msg_type == "W":
            self.snapshots.append([(e.get_str(269), e.get_decimal(270), e.get_int(271))
                                   for e in msg.group(268)])

    def on_admin(self, session, msg):
        self.rejects += msg.msg_type == "3"




# -- QuickFIX initiator -> our acceptor ----------------------------------------------------
def test_quickfix_initiator_sends_10000_orders(venue, qf_settings, qf_peer):
    qf = qf_peer("initiator", qf_settings("initiator", venue.port, "QF", "VENUE",
                                          ResetOnLogon="Y"))
    qf.wait(lambda s: s["logons"] == 1, 10)
    n = 10_000
    qf.cmd("orders", start=0, count=n)
    state = qf.wait(lambda s: s["fills"] == n, 50)
    assert state["acks"] == n and state["session_rejects"] == []
    ours = venue.acceptor.sessions["QF"].stats
    assert ours.rejects_out == 0 and ours.rejects_in == 0 and ours.app_in == n
    assert venue.app.stats.orders == n


class CuttingVenue(VenueApp):
    """Cuts the connection (no flush: in-flight bytes are lost) after given order counts."""

    cut_at: tuple[int, ...] = ()

    def on_message(self, session, msg):
        super().on_message(session, msg)
        if self.stats.orders in self.cut_at:
            session.abort()


def test_recovery_quickfix_initiator_connection_cut(loop_thread, tmp_path, qf_settings, qf_peer):
    """Our side cuts the connection twice mid-stream; QuickFIX reconnects, both sides
    request their gaps, and every order gets its reports exactly once."""
    app = CuttingVenue()
    app.cut_at = (800, 1900)
    venue = Venue(store_dir=tmp_path / "venue", app=app)
    port = loop_thread.call(venue.start())
    try:
        qf = qf_peer("initiator", qf_settings("initiator", port, "QF", "VENUE"))
        qf.wait(lambda s: s["logons"] == 1, 10)
        n = 3000
        qf.cmd("orders", start=0, count=n)
        state = qf.wait(lambda s: s["fills"] == n and s["acks"] == n, 40)
        assert state["logons"] >= 2 and state["session_rejects"] == []
        sess = venue.acceptor.sessions["QF"]
        st = sess.stats
        assert st.rejects_out == 0 and st.seq_too_low == 0 and st.disconnects >= 2
        assert app.stats.orders == n                    # none lost, none processed twice
        assert st.resend_requests_out + st.resend_requests_in >= 1
        assert sess.next_in > n and sess.next_out > 2 * n   # numbers resumed, never reset
    finally:
        loop_thread.call(venue.stop())


# -- our initiator -> QuickFIX acceptor ----------------------------------------------------
@pytest.fixture
def qf_venue(qf_settings, qf_peer, port):
    return qf_peer("acceptor", qf_settings("acceptor", port, "QFV", "CLIENT")), port


def test_our_initiator_against_quickfix_acceptor(qf_venue, loop_thread):
    qf, port = qf_venue
    app = OurApp()
    ini = FixInitiator(SessionConfig("CLIENT", "QFV", reset_on_logon=True), app, port=port)
    session = loop_thread.call(ini.start())
    try:
        n = 500

        def send_all():
            session.send("V", [(262, "md1"), (263, "0"), (264, 10), (267, 2), (269, "0"),
                               (269, "1"), (146, 1), (55, "AAPL")])
            for i in range(n):
                session.send("D", our_order(i))
        loop_thread.sync(send_all)
        assert wait_for(lambda: len(app.fills) == n and app.snapshots, 20)
        assert len(app.acks) == n
        snap = app.snapshots[0]
        assert len(snap) == 20 and snap[0] == ("0", "99.99", 100) and snap[1][1] == "100.01"
        state = qf.cmd("state")
        assert state["order_msgs"] == n and state["session_rejects"] == [] and app.rejects == 0
    finally:
        loop_thread.call(ini.stop())


def test_recovery_our_initiator_cut_and_restart(qf_venue, loop_thread, tmp_path):
    """Our initiator loses its connection mid-stream (orders sent meanwhile are stored),
    reconnects and resends on QuickFIX's ResendRequest; then a new initiator on the same
    file store (a restarted process) resumes the sequence numbers and QuickFIX accepts."""
    qf, port = qf_venue
    app = OurApp()
    config = SessionConfig("CLIENT", "QFV")
    ini = FixInitiator(config, app, port=port, store_dir=tmp_path / "ours", reconnect=True,
                       reconnect_interval=0.2)
    session = loop_thread.call(ini.start())
    n = 1500

    async def stream():
        for i in range(n):
            session.send("D", our_order(i))
            if i in (400, 1000):
                session.abort()
            if i in (500, 1100):          # sent while disconnected up to here: stored only
                await session.wait_logged_on(10)
            if i % 50 == 0:
                await asyncio.sleep(0.002)
    loop_thread.call(stream())
    assert wait_for(lambda: len(app.fills) == n, 40), len(app.fills)
    state = qf.wait(lambda s: s["order_msgs"] == n, 10)
    assert state["orders"] == n and state["session_rejects"] == [] and app.rejects == 0
    assert state["logons"] >= 2 and state["resend_requests"] >= 1
    assert session.stats.resent >= 1 and session.stats.disconnects >= 2
    out_before = session.next_out
    loop_thread.call(ini.stop())
    again = FixInitiator(config, OurApp(), port=port, store_dir=tmp_path / "ours")
    restarted = loop_thread.call(again.start())
    try:
        assert restarted.next_out >= out_before and restarted.is_logged_on
        loop_thread.sync(lambda: restarted.send("D", our_order(n)))
        state = qf.wait(lambda s: s["order_msgs"] == n + 1, 10)
        assert state["session_rejects"] == []
    finally:
        loop_thread.call(again.stop())


def test_quickfix_acceptor_sends_resend_request_and_sequence_reset(qf_venue, loop_thread):
    qf, port = qf_venue
    app = OurApp()
    ini = FixInitiator(SessionConfig("CLIENT", "QFV", reset_on_logon=True), app, port=port)
    session = loop_thread.call(ini.start())
    try:
        loop_thread.sync(lambda: [session.send("D", our_order(i)) for i in range(3)])
        assert wait_for(lambda: len(app.fills) == 3, 10)
        # 1. QuickFIX asks for everything again: resends with PossDupFlag, gap fills
        qf.cmd("resend_request", begin=1)
        assert wait_for(lambda: session.stats.resend_requests_in == 1
                        and session.stats.resent == 3 and session.stats.gap_fills_out >= 1)
        # 2. QuickFIX skips 20 numbers: we ask for the gap and QuickFIX gap-fills it
        qf.cmd("jump", by=20)
        loop_thread.sync(lambda: session.send("D", our_order(3)))
        assert wait_for(lambda: "c3" in app.fills, 10)
        assert session.stats.resend_requests_out == 1 and session.stats.gap_fills_in >= 1
        # 3. SequenceReset in reset mode
        new = qf.cmd("reset", by=100)["next"]
        assert wait_for(lambda: session.stats.sequence_resets_in == 1, 10)
        loop_thread.sync(lambda: session.send("D", our_order(4)))
        assert wait_for(lambda: "c4" in app.fills, 10)
        assert session.next_in == new + 2              # ack and fill after the reset
        state = qf.cmd("state")
        assert state["session_rejects"] == [] and app.rejects == 0
    finally:
        loop_thread.call(ini.stop())
