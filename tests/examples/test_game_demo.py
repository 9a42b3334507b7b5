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
    assert "GC framealloc: collections gen0/1/2" in out and "frozen" in out
    assert "frame allocator 'frame': frame 40" in out


def env_without(module: str, tmp_path: Path) -> dict[str, str]:
    """An environment in which importing `module` fails (a shadowing package raises)."""
    shadow = tmp_path / "shadow" / module
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text(f"raise ImportError('no {module} here')\n")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path / "shadow"), env.get("PYTHONPATH", "")])
    return env


@pytest.mark.parametrize(("flags", "module"), [(["--window"], "pygame"),
                                               (["--plot", "out.png"], "matplotlib")])
def test_optional_features_without_their_package_fail_cleanly(flags: list[str], module: str,
                                                              tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, str(DEMO), *flags, "--frames", "1"],
                          capture_output=True, text=True, env=env_without(module, tmp_path),
                          timeout=60, cwd=tmp_path)
    assert proc.returncode == 2 and module in proc.stderr


def image_pixels(path: Path) -> np.ndarray:
    import matplotlib.image

    return np.asarray(matplotlib.image.imread(str(path)), dtype=np.float64)


@pytest.mark.timeout(120)
def test_real_window_under_the_dummy_video_driver_draws_the_particles(tmp_path: Path) -> None:
    pytest.importorskip("pygame")
    pytest.importorskip("matplotlib")
    shot = tmp_path / "shot.png"
    env = dict(os.environ, SDL_VIDEODRIVER="dummy", SDL_AUDIODRIVER="dummy")
    out = subprocess.run(
        [sys.executable, str(DEMO), "--window", "--frames", "20", "--particles", "3000",
         "--gc", "frame", "--screenshot", str(shot)],
        capture_output=True, text=True, env=env, timeout=100, check=True).stdout
    assert "window" in out and "gc=frame" in out
    pixels = image_pixels(shot)
    assert pixels.shape[:2] == (600, 800)
    lit = (pixels[..., :3].max(axis=2) > 0.5).sum()  # particles are bright on a dark sky
    assert pixels.var() > 1e-4 and 100 < lit < 3000 * 2


@pytest.mark.timeout(120)
def test_plot_draws_every_mode(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    path = tmp_path / "frames.png"
    subprocess.run([sys.executable, str(DEMO), "--compare", "--frames", "30", "--particles",
                    "800", "--gc", "frame", "--plot", str(path)],
                   capture_output=True, text=True, timeout=100, check=True)
    pixels = image_pixels(path)
    assert pixels.ndim == 3 and pixels.var() > 1e-3


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
