"""The compiled modules keep their contract (tools/check_core_contract.py), checked on the
installed package's own .pyx/.pxd files: no compiled class calls a method only Python code
defines, no opened internals, one message type, one set of states and policies."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import coreallocs
import framealloc
import hftalloc

TOOL = Path(__file__).resolve().parents[2] / "tools" / "check_core_contract.py"


def run_tool(*roots: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(TOOL), *map(str, roots)], capture_output=True,
                          text=True, timeout=60, check=False)


def test_the_installed_packages_keep_the_contract() -> None:
    roots = [Path(pkg.__file__).parent for pkg in (coreallocs, hftalloc, framealloc)]
    assert all(any(root.rglob("*.pyx")) for root in roots), "the wheel ships the .pyx sources"
    done = run_tool(*roots)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "one message class (_message.pyx)" in done.stdout


def test_the_check_catches_each_kind_of_violation(tmp_path: Path) -> None:
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "_core.pyx").write_text(textwrap.dedent('''
        cdef class Core:
            cdef public int counter
            cdef dict __dict__

            def publish(self, topic):
                return self._resolve(topic)      # defined only by a Python subclass

        cdef class Message:
            def retain(self): pass
            def release(self): pass
            def __getbuffer__(self, Py_buffer* b, int flags): pass

        cdef class OtherMessage:
            def retain(self): pass
            def release(self): pass
            def __getbuffer__(self, Py_buffer* b, int flags): pass
    '''))
    (pkg / "a.py").write_text('STATE_NAMES = ("claimed", "released")\n'
                              'RAISE, DROP, BLOCK = range(3)\n')
    (pkg / "b.py").write_text('STATE_NAMES = ("claimed",)\nRAISE = 0\n')
    done = run_tool(tmp_path)
    assert done.returncode == 1
    out = done.stdout
    assert "uses self._resolve" in out
    assert "`cdef public` attribute" in out and "instance __dict__" in out
    assert "expected one compiled message class" in out
    assert "expected one STATE_NAMES definition" in out
    assert "expected one RAISE/DROP/BLOCK definition" in out
