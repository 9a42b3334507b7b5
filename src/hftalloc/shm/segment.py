"""POSIX shared-memory segments and process liveness.

:class:`Segment` maps a named POSIX shared-memory object (the same objects as
:class:`multiprocessing.shared_memory.SharedMemory`; on Linux they appear as
``/dev/shm/<name>``). It never registers with multiprocessing's resource tracker: the
tracker would unlink a segment when *any* process that touched it exits, and it warns
about segments created elsewhere. Lifetime is explicit instead: the creator unlinks on
clean shutdown, ``python -m hftalloc cleanup`` removes segments of dead processes.
On Python >= 3.13 ``SharedMemory(track=False)`` is used; before that the same
``_posixshmem`` calls SharedMemory makes, minus the registration.
"""

from __future__ import annotations

import mmap
import os
import re
import sys
import time

from hftalloc.errors import SegmentError

__all__ = [
    "PREFIX",
    "Segment",
    "full_name",
    "list_segments",
    "pid_alive",
    "process_start_ticks",
    "unlink",
]

PREFIX = "hftalloc-"
SHM_DIR = "/dev/shm"
_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,200}$")

try:  # POSIX: the module behind multiprocessing.shared_memory
    import _posixshmem
except ImportError:  # pragma: no cover - Windows
    _posixshmem = None


def full_name(name: str) -> str:
    """The segment name of a channel: ``hftalloc-<name>`` (the prefix is added once)."""
    if not isinstance(name, str):
        raise TypeError(f"channel name must be a str, not {type(name).__name__}")
    short = name[len(PREFIX):] if name.startswith(PREFIX) else name
    if not _NAME.match(short):
        raise ValueError(f"channel name {name!r}: use 1-200 characters among A-Z a-z 0-9 _ . -")
    return PREFIX + short


class Segment:
    """A mapped POSIX shared-memory object (read-write, or read-only for inspection)."""

    def __init__(self, name: str, *, create: bool = False, size: int = 0,
                 readonly: bool = False) -> None:
        if _posixshmem is None:  # pragma: no cover
            raise SegmentError("shared-memory channels need a POSIX system")
        self.name = full_name(name)
        self.created = create
        self._mmap: mmap.mmap | None = None
        path = "/" + self.name
        if create:
            if size <= 0:
                raise ValueError("a new segment needs a positive size")
            flags = os.O_CREAT | os.O_EXCL | os.O_RDWR
        else:
            flags = os.O_RDONLY if readonly else os.O_RDWR
        try:
            fd = _posixshmem.shm_open(path, flags, mode=0o600)
        except FileExistsError:
            raise SegmentError(f"segment {self.name!r} already exists (another channel, or "
                               "left by a crash: python -m hftalloc cleanup)") from None
        except FileNotFoundError:
            raise SegmentError(f"no segment named {self.name!r}") from None
        try:
            if create:
                os.ftruncate(fd, size)
            else:
                size = self._wait_for_size(fd)
            access = mmap.ACCESS_READ if readonly else mmap.ACCESS_WRITE
            self._mmap = mmap.mmap(fd, size, access=access)
        except BaseException:
            if create:
                _posixshmem.shm_unlink(path)
            raise
        finally:
            os.close(fd)
        self.size = size
        self.readonly = readonly

    def _wait_for_size(self, fd: int, timeout: float = 2.0) -> int:
        """A segment being created has size 0 until its creator truncates it."""
        deadline = time.monotonic() + timeout
        while True:
            size = os.fstat(fd).st_size
            if size > 0:
                return size
            if time.monotonic() > deadline:
                raise SegmentError(f"segment {self.name!r} is empty (creator died while "
                                   "creating it?)")
            time.sleep(0.001)

    @property
    def buffer(self) -> mmap.mmap:
        if self._mmap is None:
            raise SegmentError(f"segment {self.name!r} is closed")
        return self._mmap

    @property
    def closed(self) -> bool:
        return self._mmap is None

    def close(self) -> None:
        """Unmap (BufferError while a view of the mapping is alive)."""
        if self._mmap is not None:
            self._mmap.close()
            self._mmap = None

    def unlink(self) -> bool:
        """Remove the name (existing mappings stay valid); False if already gone."""
        return unlink(self.name)

    def __repr__(self) -> str:
        state = "closed" if self._mmap is None else f"{self.size} B"
        return f"<Segment {self.name!r} {state}>"


def unlink(name: str) -> bool:
    """Remove segment ``name``; False if it did not exist."""
    try:
        _posixshmem.shm_unlink("/" + full_name(name))
    except FileNotFoundError:
        return False
    return True


def list_segments() -> list[str]:
    """Names of the hftalloc segments on this machine (Linux: listed from /dev/shm)."""
    try:
        entries = os.listdir(SHM_DIR)
    except OSError:  # pragma: no cover - no /dev/shm (macOS): nothing to list
        return []
    return sorted(e for e in entries if e.startswith(PREFIX))


# -- process liveness -------------------------------------------------------------------------
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
