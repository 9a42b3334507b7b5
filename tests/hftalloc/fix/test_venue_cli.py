"""``python -m hftalloc fix venue`` in its own process: serves orders, prints statistics on
SIGINT and SIGTERM."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys

import pytest

from hftalloc.fix.endpoints import FixInitiator
from hftalloc.fix.session import Application, SessionConfig
from hftalloc.loops import run


class Count(Application):
    def __init__(self) -> None:
        self.fills = 0

    def on_message(self, session, msg):
        self.fills += msg.msg_type == "8" and msg.get_str(150) == "F"


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_venue_subcommand(sig, tmp_path):
    proc = subprocess.Popen([sys.executable, "-m", "hftalloc", "fix", "venue", "--port", "0",
                             "--sender", "EXCH", "--store-dir", str(tmp_path)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line.startswith("listening on 127.0.0.1:"), line + proc.stderr.read()
        port = int(line.rsplit(":", 1)[1])
        app = Count()

        async def trade():
            ini = FixInitiator(SessionConfig("TRADER", "EXCH"), app, port=port)
            s = await ini.start()
            for i in range(20):
                s.send("D", [(11, f"o{i}"), (55, "AAPL"), (54, "2"), (38, 5), (40, "2"),
                             (44, 99.5), (60, "20260101-00:00:00.000")])
            for _ in range(500):
                if app.fills == 20:
                    break
                await asyncio.sleep(0.01)
            await ini.stop()
        run(trade())
        assert app.fills == 20
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert "orders=20" in out and "fills=20" in out
    assert "session EXCH-TRADER" in out and "app_in=20" in out
    assert (tmp_path / "EXCH-TRADER.store").exists()


def test_cli_help_lists_fix():
    out = subprocess.run([sys.executable, "-m", "hftalloc", "fix", "--help"],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and "venue" in out.stdout
