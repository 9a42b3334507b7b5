"""The cheap memory-checker runs: valgrind on a short workload, ASan on a few core tests.

Both scripts first prove they are armed (a deliberate use-after-free / overflow must be
reported), then run project code and count reports. They skip when the tool is missing.
Long variants: ``tools/valgrind.sh`` (workload + tests + demos) and ``tools/sanitize.sh``
(the core and safety suites under ASan) -- see docs/safety.md.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TOOLS = REPO / "tools"
SKIPPED = 77  # the scripts' exit status when their tool is missing


def _run(cmd: list[str], timeout: int) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHON=sys.executable)
    env.pop("PYTHONMALLOC", None)
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=timeout, check=False)


@pytest.mark.timeout(180)
@pytest.mark.skipif(shutil.which("valgrind") is None, reason="valgrind is not installed")
def test_valgrind_workload_has_no_error_from_project_code() -> None:
    result = _run(["bash", str(TOOLS / "valgrind.sh"), "--quick"], timeout=170)
    out = result.stdout + result.stderr
    if result.returncode == SKIPPED:
        pytest.skip(out.strip().splitlines()[-1])
    assert "self-check: memcheck reported the deliberate use-after-free" in out, out
    assert "WORKLOAD OK" in out, out
    summary = re.search(r"VALGRIND SUMMARY: (\d+) error\(s\) involving project code", out)
    assert summary is not None, out
    assert summary.group(1) == "0", out
    assert result.returncode == 0, out


def _asan_available() -> str | None:
    if shutil.which("gcc") is None:
        return "gcc is not installed"
    lib = subprocess.run(["gcc", "-print-file-name=libasan.so"], capture_output=True,
                         text=True, check=False).stdout.strip()
    if not lib or not os.path.isabs(lib) or not os.path.exists(lib):
        return "gcc has no libasan.so"
    try:
        import Cython  # noqa: F401
    except ImportError:
        return "Cython is needed to build the instrumented extensions"
    return None


@pytest.mark.timeout(180)
def test_asan_build_runs_core_bus_and_frame_tests_without_reports() -> None:
    reason = _asan_available()
    if reason:
        pytest.skip(reason)
    # the core, its nogil C API, and the two other compiled paths built on it
    tests = ["tests/coreallocs/test_pool.py", "tests/coreallocs/test_slab.py",
             "tests/coreallocs/test_arena.py", "tests/coreallocs/test_capi.py",
             "tests/hftalloc/test_bus.py", "tests/framealloc/test_arrays.py"]
    missing = [t for t in tests if not (REPO / t).exists()]
    assert not missing, f"the ASan run names test files that do not exist: {missing}"
    result = _run(["bash", str(TOOLS / "sanitize.sh"), *tests], timeout=170)
    out = result.stdout + result.stderr
    if result.returncode == SKIPPED:
        pytest.skip(out.strip().splitlines()[-1])
    assert "self-check: ASan caught a deliberate heap overflow" in out, out
    assert "ASAN SUMMARY: pytest exit status 0, 0 AddressSanitizer report(s)" in out, out
    assert result.returncode == 0, out
