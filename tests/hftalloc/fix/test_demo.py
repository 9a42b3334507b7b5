"""examples/trading_fix.py: the order path through a FIX session to the venue process."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

DEMO = Path(__file__).resolve().parents[3] / "examples" / "trading_fix.py"


def test_fix_demo_runs_and_reports():
    out = subprocess.run([sys.executable, str(DEMO), "--orders", "300", "--symbols", "3"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert "300 orders on 3 symbols -> 300 fills" in text
    assert "session DEMO-VENUE" in text and "app_out=300" in text
    assert "orders=300 acks=300 fills=300" in text          # the venue's own report
    assert "session VENUE-DEMO" in text


def test_trading_demo_takes_the_fix_order_path():
    demo = DEMO.parent / "trading_demo.py"
    out = subprocess.run([sys.executable, str(demo), "--fix", "--orders", "50", "--symbols", "2"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "50 orders on 2 symbols -> 50 fills" in out.stdout
    assert "orders=50 acks=50 fills=50" in out.stdout
