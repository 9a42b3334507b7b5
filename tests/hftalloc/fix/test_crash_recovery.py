"""A FIX initiator killed with SIGKILL in the middle of an order stream: its file store
(durability "flush" or "fsync") lets a restarted initiator resume without reusing a sequence
number the venue has seen, the venue asks for what it missed and gets it resent, and every
stored order is processed exactly once."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest

from hftalloc.fix import parse
from hftalloc.fix.endpoints import FixInitiator
from hftalloc.fix.session import Application, SessionConfig
from hftalloc.fix.store import FileStore
from hftalloc.fix.venue import Venue, VenueApp

CHILD = r"""
import asyncio, sys
from hftalloc.fix.endpoints import FixInitiator
from hftalloc.fix.session import Application, SessionConfig
from hftalloc.loops import run

class Acks(Application):
    acks = 0
    def on_message(self, session, msg):
        self.acks += msg.get_str(150) == "0"

async def main():
    port, store_dir, durability = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    app = Acks()
    ini = FixInitiator(SessionConfig("CRASHY", "VENUE", durability=durability), app,
                       port=port, store_dir=store_dir)
    s = await ini.start()
    print("logged-on", flush=True)
    i = 0
    while True:
        i += 1
        s.send("D", [(11, f"c{i}"), (55, "AAPL"), (54, "1"), (38, 10), (40, "2"),
                     (44, 100.0), (60, "20260101-00:00:00.000")])
        while i - app.acks > 40:        # at most 40 orders in flight
            await asyncio.sleep(0.0005)

run(main())
"""


class CountingVenue(VenueApp):
    def __init__(self) -> None:
        super().__init__()
        self.cl_ord_ids: list[str] = []

    def on_message(self, session, msg):
        if msg.msg_type == "D":
            self.cl_ord_ids.append(msg.get_str(11))
        super().on_message(session, msg)


def wait_for(predicate, timeout=10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


@pytest.mark.parametrize("durability", ["flush", "fsync"])
def test_sigkill_initiator_resumes_and_resends(loop_thread, tmp_path, durability):
    app = CountingVenue()
    venue = Venue(store_dir=tmp_path / "venue", app=app, heartbeat=30)
    port = loop_thread.call(venue.start())
    store_dir = tmp_path / "client"
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(port), str(store_dir),
                              durability], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "logged-on"
        assert wait_for(lambda: len(app.cl_ord_ids) >= 300)
    finally:
        child.send_signal(signal.SIGKILL)          # mid-stream: no Logout, no flush
        child.wait(10)
        child.stdout.close()
    vs = venue.acceptor.sessions["CRASHY"]
    assert wait_for(lambda: loop_thread.sync(lambda: not vs.connected))
    seen_by_venue = loop_thread.sync(lambda: vs.next_in)      # next number it expects

    path = store_dir / "CRASHY-VENUE.store"
    store = FileStore(path, durability=durability)
    # the promise: every message that reached the wire is in the store
    assert store.next_out >= seen_by_venue
    assert store.dropped_tail_records in (0, 1)
    stored = {seq: parse(raw).get_str(11)
              for seq, raw in store.get_range(1, store.next_out).items()}
    store.close()

    class Reports(Application):
        def __init__(self) -> None:
            self.reports = 0

        def on_message(self, session, msg):
            self.reports += msg.msg_type == "8"

    reports = Reports()
    ini = FixInitiator(SessionConfig("CRASHY", "VENUE", durability=durability), reports,
                       port=port, store_dir=store_dir)

    async def restart():
        s = await ini.start()
        s.send("D", [(11, "after"), (55, "AAPL"), (54, "1"), (38, 10), (40, "2"),
                     (44, 100.0), (60, "20260101-00:00:00.000")])
        return s
    s = loop_thread.call(restart())
    want = [*stored.values(), "after"]
    assert wait_for(lambda: len(app.cl_ord_ids) >= len(want)), (len(app.cl_ord_ids), len(want))
    assert wait_for(lambda: loop_thread.sync(lambda: vs.next_in == s.next_out))
    assert sorted(app.cl_ord_ids) == sorted(want)             # exactly once, none lost
    assert len(set(app.cl_ord_ids)) == len(app.cl_ord_ids)
    assert vs.stats.seq_too_low == 0 and s.stats.seq_too_low == 0
    if store.next_out > seen_by_venue:              # stored but not received: resent
        assert vs.stats.resend_requests_out >= 1 and s.stats.resent >= 1
    # the reports the dead process never read come back through its ResendRequest
    assert wait_for(lambda: loop_thread.sync(lambda: s.next_in == vs.next_out))
    loop_thread.call(ini.stop())
    loop_thread.call(venue.stop())
    assert s.stats.rejects_in == 0 and vs.stats.rejects_out == 0
    assert reports.reports >= 2                     # the new order's ack and fill at least
