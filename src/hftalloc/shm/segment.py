"""POSIX shared-memory segments: named, private to this user, guarded against truncation.

:class:`Segment` maps a named POSIX shared-memory object (the same objects as
:class:`multiprocessing.shared_memory.SharedMemory`; on Linux they appear as
``/dev/shm/<name>``). It never registers with multiprocessing's resource tracker: the
tracker would unlink a segment when *any* process that touched it exits, and it warns
about segments created elsewhere. Lifetime is explicit instead: the creator unlinks on
clean shutdown, ``python -m hftalloc cleanup`` removes segments of dead processes.

The names are predictable, so the segment behind a name is checked before it is
mapped: it is opened without following symbolic links, must be a regular file owned
by this process's effective user and must grant nothing to group or others (a new
segment is created exclusively, mode 0600). Every mapping is registered with the
SIGBUS guard of :mod:`hftalloc.shm._core`: if another process truncates the file, the
mapping reads as zeros from then on and :attr:`Segment.truncated` turns true, instead
of the process dying of SIGBUS.
"""

from __future__ import annotations

import errno
import mmap
import os
import re
import stat
import time
from typing import NoReturn

from hftalloc.errors import SegmentError, SegmentExists
from hftalloc.shm import _core
from hftalloc.shm.liveness import pid_alive, process_start_ticks

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
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)

try:  # POSIX: the module behind multiprocessing.shared_memory
    import _posixshmem  # type: ignore[import-not-found]
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


def _open_failed(name: str, exc: OSError) -> NoReturn:
    if isinstance(exc, FileExistsError):
        raise SegmentExists(f"segment {name!r} already exists (another channel, or left by "
                            "a crash: python -m hftalloc cleanup)") from None
    if isinstance(exc, FileNotFoundError):
        raise SegmentError(f"no segment named {name!r}") from None
    if exc.errno in (errno.ELOOP, errno.EMLINK):
        raise SegmentError(f"segment {name!r} is a symbolic link: refused") from None
    if isinstance(exc, PermissionError):
        raise SegmentError(f"segment {name!r}: permission denied (it belongs to another "
                           "user)") from None
    raise SegmentError(f"segment {name!r} cannot be opened: {exc.strerror or exc}") from None


def check_private(name: str, st: os.stat_result) -> None:
    """Refuse a segment that is not a regular file of this user with mode 0600 or less."""
    if not stat.S_ISREG(st.st_mode):
        raise SegmentError(f"segment {name!r} is not a regular file: refused")
    euid = os.geteuid()
    if st.st_uid != euid:
        raise SegmentError(f"segment {name!r} is owned by uid {st.st_uid}, not by this user "
                           f"(uid {euid}): refused (another user may have planted it)")
    if st.st_mode & 0o077:
        raise SegmentError(f"segment {name!r} has mode {stat.S_IMODE(st.st_mode):#o}, which "
                           "lets other users read or write it: refused (channel segments "
                           "are created 0600)")


class Segment:
    """A mapped POSIX shared-memory object (read-write, or read-only for inspection).

    An existing segment of size 0 is being created: it is waited for up to ``wait``
    seconds.
    """

    def __init__(self, name: str, *, create: bool = False, size: int = 0,
                 readonly: bool = False, wait: float = 2.0) -> None:
        if _posixshmem is None:  # pragma: no cover
            raise SegmentError("shared-memory channels need a POSIX system")
        self.name = full_name(name)
        self.created = create
        self.readonly = readonly
        self._mmap: mmap.mmap | None = None
        self._guard: _core.MappingGuard | None = None
        path = "/" + self.name
        if create:
            if size <= 0:
                raise ValueError("a new segment needs a positive size")
            flags = os.O_CREAT | os.O_EXCL | os.O_RDWR
        else:
            flags = os.O_RDONLY if readonly else os.O_RDWR
        try:
            fd = _posixshmem.shm_open(path, flags | _NOFOLLOW | _CLOEXEC, mode=0o600)
        except OSError as exc:
            _open_failed(self.name, exc)
        try:
            check_private(self.name, os.fstat(fd))
            if create:
                os.ftruncate(fd, size)
            else:
                size = self._wait_for_size(fd, wait)
            access = mmap.ACCESS_READ if readonly else mmap.ACCESS_WRITE
            try:
                self._mmap = mmap.mmap(fd, size, access=access)
            except (ValueError, OSError) as exc:  # truncated between fstat and mmap
                raise SegmentError(f"segment {self.name!r} cannot be mapped ({exc}): another "
                                   "process truncated it while it was being opened") from None
            self._guard = _core.MappingGuard(self._mmap, not readonly)
        except BaseException:
            if self._mmap is not None:
                self._mmap.close()
                self._mmap = None
            if create:
                _posixshmem.shm_unlink(path)
            raise
        finally:
            os.close(fd)
        self.size = size

    def _wait_for_size(self, fd: int, timeout: float) -> int:
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

    @property
    def truncated(self) -> bool:
        """Another process truncated the file: the mapping reads as zeros."""
        return self._guard is not None and self._guard.truncated

    def close(self) -> None:
        """Unmap (BufferError while a view of the mapping is alive)."""
        if self._mmap is None:
            return
        guard, self._guard = self._guard, None
        if guard is not None:
            guard.close()
        try:
            self._mmap.close()
        except BufferError:
            self._guard = _core.MappingGuard(self._mmap, not self.readonly)
            raise
        self._mmap = None

    def unlink(self) -> bool:
        """Remove the name (existing mappings stay valid); False if already gone."""
        return unlink(self.name)

    def __reduce__(self) -> NoReturn:
        raise TypeError("a Segment cannot be copied or pickled (attach by name instead)")

    def __repr__(self) -> str:
        state = "closed" if self._mmap is None else f"{self.size} B"
        return f"<Segment {self.name!r} {state}>"


def unlink(name: str) -> bool:
    """Remove segment ``name``; False if it did not exist."""
    try:
        _posixshmem.shm_unlink("/" + full_name(name))
    except FileNotFoundError:
        return False
    except PermissionError:
        raise SegmentError(f"segment {full_name(name)!r} belongs to another user: not "
                           "removed") from None
    return True


def list_segments() -> list[str]:
    """Names of the hftalloc segments on this machine (Linux: listed from /dev/shm)."""
    try:
        entries = os.listdir(SHM_DIR)
    except OSError:  # pragma: no cover - no /dev/shm (macOS): nothing to list
        return []
    return sorted(e for e in entries if e.startswith(PREFIX))
