"""The trading demo and the benchmark script run end to end in their short modes."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
pytestmark = pytest.mark.timeout(120)


def run_script(*args: str) -> str:
    env = dict(os.environ)
    done = subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=100)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_trading_demo_short_run(mode):
    out = run_script("examples/trading_demo.py", "--duration", "1", "--rate", "20000",
                     "--symbols", "4", "--mode", mode)
    assert re.search(r"\[#+\s*\]\s+\d+\.\d/1\.0 s", out), out  # progress line
    published = int(re.search(r"\(([\d,]+) messages", out).group(1).replace(",", ""))
    assert published > 1000
    assert re.search(r"throughput\s+: [\d,]+ msgs/s", out)
    lat = re.search(r"p50=([\d,]+) p90=([\d,]+) p99=([\d,]+) p99.9=([\d,]+) max=([\d,]+)", out)
    values = [int(v.replace(",", "")) for v in lat.groups()]
    assert values == sorted(values)
    assert "dropped=0 rejected=0 subscriber errors=0" in out
    assert re.search(r"orders=[1-9][\d,]* fills=[1-9]", out)
    # per size class rows with high water: quotes use 64 B, depth snapshots larger classes
    rows = re.findall(r"demo\[(\d+)\]\s+\d+\s+\d+\s+(\d+)\s+(\d+)\s+(\d+)", out)
    classes = {int(size): (int(in_use), int(high), int(allocs)) for size, in_use, high, allocs
               in rows}
    assert sorted(classes) == [64, 128, 256, 512, 1024, 2048, 4096, 8192]
    assert all(in_use == 0 for in_use, _, _ in classes.values())
    assert classes[64][1] >= 1 and classes[64][2] >= published // 2
    assert sum(1 for _, high, _ in classes.values() if high) >= 3


def test_benchmark_script_runs_every_contender():
    out = run_script("benchmarks/bench_bus.py", "--messages", "300", "--reps", "1",
                     "--payloads", "64", "--subs", "1,4")
    rows = [line for line in out.splitlines() if line.startswith("| ") and " B |" in line]
    names = [row.split("|")[1].strip() for row in rows]
    for name in ("hftalloc async (asyncio)", "asyncio.Queue fan-out",
                 "dict of callbacks, copying", "pyzmq inproc PUB/SUB"):
        assert names.count(name) == 2, out
    assert sum(n.startswith("hftalloc sync (") for n in names) >= 2
    baseline = [row for row in rows if "asyncio.Queue fan-out" in row]
    assert all(" 1.0x |" in row for row in baseline)


def run_demo(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "examples/trading_demo.py", *args], cwd=ROOT,
                          env=dict(os.environ), capture_output=True, text=True, timeout=100)


def test_replay_reproduces_orders_fills_and_pnl(tmp_path):
    journal = str(tmp_path / "run.journal")
    recorded = run_demo("--duration", "0.5", "--rate", "20000", "--symbols", "4", "--quiet",
                        "--record", journal)
    assert recorded.returncode == 0, recorded.stderr
    assert re.search(r"recorded [1-9][\d,]* market-data messages .* \(failed 0\)",
                     recorded.stdout)
    replayed = run_demo("--replay", journal, "--seed", "99")   # the seed plays no part
    assert replayed.returncode == 0, replayed.stderr

    def outcome(out: str) -> list[str]:
        return [line for line in out.splitlines()
                if line.startswith(("trading         :", "P&L             :"))]

    assert len(outcome(recorded.stdout)) == 2
    assert re.search(r"orders=[1-9][\d,]* fills=[1-9]", recorded.stdout)
    assert outcome(replayed.stdout) == outcome(recorded.stdout)
    assert "replayed" in replayed.stdout


def test_record_replay_arguments(tmp_path):
    done = run_demo("--replay", str(tmp_path / "j"), "--record", str(tmp_path / "k"))
    assert done.returncode == 2 and "exclude each other" in done.stderr
    done = run_demo("--replay", str(tmp_path / "j"), "--mode", "async")
    assert done.returncode == 2 and "sync bus" in done.stderr
    done = run_demo("--replay", str(tmp_path / "missing"), "--quiet")
    assert done.returncode == 2 and "no journal" in done.stderr


def test_plot_latency_curve(tmp_path):
    out = tmp_path / "latency.png"
    done = run_demo("--duration", "0.3", "--rate", "5000", "--symbols", "2", "--quiet",
                    "--plot", str(out))
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert done.returncode == 2 and "--plot needs matplotlib" in done.stderr
        assert not out.exists()
        return
    assert done.returncode == 0, done.stderr
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
