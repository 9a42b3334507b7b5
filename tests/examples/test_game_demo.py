"""The game demo: a short headless run as a test, and both modes computing the same thing."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "examples" / "game_demo.py"


def load_demo():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("game_demo", DEMO)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.timeout(120)
def test_demo_short_headless_compare_run() -> None:
    env = dict(os.environ)
    out = subprocess.run(
        [sys.executable, str(DEMO), "--frames", "40", "--particles", "1500", "--compare"],
        capture_output=True, text=True, env=env, timeout=100, check=True,
    ).stdout
    assert "1500 particles, 40 frames per mode, headless" in out
    rows = {line.split()[0]: line.split() for line in out.splitlines()
            if line.split() and line.split()[0] in ("framealloc", "naive", "numpy-out")}
    assert set(rows) == {"framealloc", "naive", "numpy-out"}
    assert rows["framealloc"][1] == "40"  # frames
    assert float(rows["framealloc"][5]) > 1500 * 2 * 8  # frame bytes per frame
    assert "p99" in out and "GC collections" in out
    assert "naive / framealloc frame time" in out
    assert "frame allocator 'frame': frame 40" in out


def test_demo_window_flag_without_pygame_fails_cleanly() -> None:
    pytest.importorskip("numpy")
    try:
        import pygame  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("pygame is installed")
    env = dict(os.environ)
    proc = subprocess.run([sys.executable, str(DEMO), "--window", "--frames", "1"],
                          capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 2 and "pygame" in proc.stderr


@pytest.mark.timeout(120)
def test_framealloc_and_naive_modes_simulate_the_same_particles() -> None:
    """Frame memory must not change the results: any aliasing would show up here."""
    demo = load_demo()
    finals = {}
    for mode in demo.MODES:
        _, _, sim = demo.run(mode, particles=800, frames=90, seed=3)
        finals[mode] = (np.array(sim.pos), np.array(sim.vel), np.array(sim.life))
    for mode in ("naive", "numpy-out"):
        for got, want in zip(finals[mode], finals["framealloc"], strict=True):
            np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-9)
    assert (finals["framealloc"][2] > 0).all()  # respawns happened and were applied
