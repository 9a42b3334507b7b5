"""Summarise valgrind memcheck XML logs: how many errors involve project code.

Usage: ``python3 tools/valgrind_report.py LOG.xml [LOG.xml ...]`` (``--show N`` prints the
first N project errors in full, ``--show-other N`` the first N others). Exit status 1 when
any error involves project code, else 0.

An error involves project code when any of its stacks (where it happened, where the memory
was allocated or freed) has a frame in one of the project's compiled modules
(``coreallocs/_core``, the C-API example ``_capi_demo``, the compiled ``hftalloc`` and
``framealloc`` modules, or the Cython sources). That catches
a Python-level read through a memoryview of memory the core freed too, whose main stack
is entirely inside libpython. Leak records are ignored (CPython keeps memory until exit).
"""

from __future__ import annotations

import argparse
import re
import sys
import xml.etree.ElementTree as ET
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

PROJECT_MARKERS = ("coreallocs/_core", "capi_demo/", "_capi_demo", "hftalloc/_bus",
                   "hftalloc/_message", "hftalloc/shm/_", "hftalloc/journal/_", "hftalloc/fix/_",
                   "framealloc/_", "_core.pyx", "_capi_demo.pyx", "_bus.pyx", "_message.pyx",
                   ".pxi", "__pyx_")
_ERROR_RE = re.compile(r"<error>.*?</error>", re.DOTALL)


@dataclass
class Frame:
    fn: str
    obj: str
    file: str
    line: str

    def involves_project(self) -> bool:
        text = f"{self.obj} {self.file} {self.fn}"
        return any(marker in text for marker in PROJECT_MARKERS)

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.file else Path(self.obj).name
        return f"{self.fn or '???'} ({where})"


@dataclass
class MemError:
    kind: str
    what: str
    stacks: list[list[Frame]] = field(default_factory=list)
    aux: list[str] = field(default_factory=list)

    def involves_project(self) -> bool:
        return any(frame.involves_project() for stack in self.stacks for frame in stack)

    def render(self, depth: int = 14) -> str:
        lines = [f"{self.kind}: {self.what}"]
        for n, stack in enumerate(self.stacks):
            label = "at" if n == 0 else (self.aux[n - 1] if n - 1 < len(self.aux) else "aux")
            lines.append(f"  {label}:")
            lines.extend(f"    {frame}" for frame in stack[:depth])
        return "\n".join(lines)


def _parse_error(chunk: str) -> MemError:
    node = ET.fromstring(chunk)
    what = node.findtext("what") or node.findtext("xwhat/text") or ""
    err = MemError(kind=node.findtext("kind") or "?", what=what)
    err.aux = [aux.text or "" for aux in node.findall("auxwhat")]
    err.aux += [x.findtext("text") or "" for x in node.findall("xauxwhat")]
    for stack in node.findall("stack"):
        err.stacks.append([
            Frame(f.findtext("fn") or "", f.findtext("obj") or "", f.findtext("file") or "",
                  f.findtext("line") or "")
            for f in stack.iter("frame")
        ])
    return err


def read_errors(path: Path) -> list[MemError]:
    """Every non-leak error of one log (tolerates several documents in one file)."""
    text = path.read_text(errors="replace")
    errors = []
    for match in _ERROR_RE.finditer(text):
        err = _parse_error(match.group(0))
        if not err.kind.startswith("Leak_"):
            errors.append(err)
    return errors


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("logs", nargs="+", type=Path)
    parser.add_argument("--show", type=int, default=5)
    parser.add_argument("--show-other", type=int, default=0)
    args = parser.parse_args(argv)

    project: list[MemError] = []
    other: list[MemError] = []
    for log in args.logs:
        for err in read_errors(log):
            (project if err.involves_project() else other).append(err)

    for err in project[: args.show]:
        print(err.render(), end="\n\n")
    for err in other[: args.show_other]:
        print(err.render(), end="\n\n")
    kinds = Counter(err.kind for err in other)
    other_kinds = ", ".join(f"{k}={v}" for k, v in sorted(kinds.items())) or "none"
    print(f"VALGRIND SUMMARY: {len(project)} error(s) involving project code; "
          f"{len(other)} elsewhere (CPython/libc/numpy: {other_kinds}) "
          f"in {len(args.logs)} log(s)")
    return 1 if project else 0


if __name__ == "__main__":
    sys.exit(main())
