"""`trading_demo.py --processes` hands over to the multi-process pipeline (one command)."""

import subprocess
import sys
from pathlib import Path

import pytest

DEMO = Path(__file__).resolve().parents[2] / "examples" / "trading_demo.py"


@pytest.mark.timeout(120)
def test_processes_flag_runs_the_cross_process_pipeline():
    result = subprocess.run(
        [sys.executable, str(DEMO), "--processes", "--duration", "1", "--quiet"],
        capture_output=True, text=True, timeout=110, check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "trading demo over processes" in out
    assert "gaps=0" in out and "P&L" in out
