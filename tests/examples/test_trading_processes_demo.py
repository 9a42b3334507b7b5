"""The multi-process trading demo runs end to end and leaves no segment behind."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

pytestmark = pytest.mark.timeout(60)


def test_trading_demo_over_processes():
    before = {e for e in os.listdir("/dev/shm") if e.startswith("hftalloc-demo-")}
    env = dict(os.environ)
    out = subprocess.run(
        [sys.executable, os.path.join(ROOT, "examples", "trading_processes.py"),
         "--duration", "1", "--rate", "5000", "--symbols", "4"],
        capture_output=True, text=True, timeout=50, env=env, check=True).stdout
    assert "== trading demo over processes" in out
    received = {m[0]: int(m[1].replace(",", "")) for m in
                re.findall(r"^(md-strategy|md-gateway|orders|fills)\s*: ([\d,]+) received",
                           out, re.M)}
    assert set(received) == {"md-strategy", "md-gateway", "orders", "fills"}
    steps, messages = (int(x.replace(",", "")) for x in
                       re.search(r"feed\s*: ([\d,]+) quote steps, ([\d,]+) messages", out).groups())
    orders, cancels = (int(x.replace(",", "")) for x in
                       re.search(r"orders=([\d,]+) fills=[\d,]+ cancels=([\d,]+)", out).groups())
    # nothing lost between the processes: every message sent was received
    assert steps > 0 and received["md-strategy"] == messages  # md.> (quotes, trades, books)
    assert received["md-gateway"] == steps  # md.quote.*: one quote per step
    assert received["orders"] == orders + cancels
    assert re.findall(r"gaps=(\d+) dropped=(\d+)", out) == [("0", "0")] * 4
    assert "subscriber errors=0 bus drops=0 rejected=0" in out
    after = {e for e in os.listdir("/dev/shm") if e.startswith("hftalloc-demo-")}
    assert after <= before  # the parent unlinked its channels
