"""Is a process alive, and is it still the same process (pid reuse)?

A role slot of a channel records the pid of its holder and the start time of that
process (clock ticks since boot, from ``/proc/<pid>/stat``): together they identify a
process even after its pid has been reused.
"""

from __future__ import annotations

import os
import sys

__all__ = ["pid_alive", "process_start_ticks"]


def _proc_stat(pid: int) -> tuple[str, int] | None:
    """(state letter, start time in clock ticks) from /proc, or None if unavailable."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    # the command name (field 2) may contain spaces and parentheses: split after the last ')'
    fields = data[data.rfind(b")") + 2:].split()
    try:
        return fields[0].decode(), int(fields[19])
    except (IndexError, ValueError):  # pragma: no cover - unexpected /proc format
        return None


def process_start_ticks(pid: int | None = None) -> int:
    """When process ``pid`` (default: this one) started, in ticks since boot; 0 if unknown.

    Together with the pid it identifies a process even if its pid is later reused.
    """
    stat = _proc_stat(os.getpid() if pid is None else pid)
    return 0 if stat is None else stat[1]


def pid_alive(pid: int, start_ticks: int = 0) -> bool:
    """Is process ``pid`` running (not a zombie), and the same process if ``start_ticks``?"""
    if pid <= 0:
        return False
    stat = _proc_stat(pid)
    if stat is not None:
        state, ticks = stat
        if state in ("Z", "X"):
            return False
        return not start_ticks or ticks == start_ticks
    if sys.platform.startswith("linux") and os.path.isdir("/proc"):
        return False  # no /proc entry on Linux: gone
    try:  # pragma: no cover - systems without /proc
        os.kill(pid, 0)
    except ProcessLookupError:  # pragma: no cover
        return False
    except PermissionError:  # pragma: no cover
        return True
    return True  # pragma: no cover
