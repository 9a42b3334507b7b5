"""Files of a journal directory: OS errors mapped to journal errors, the writer lock,
mapping segment files."""

from __future__ import annotations

import errno
import fcntl
import mmap
import os

from hftalloc.errors import (
    JournalError,
    JournalFormatError,
    JournalFull,
    JournalIOError,
    JournalLocked,
    JournalNotFound,
)
from hftalloc.journal._journal import Mapping
from hftalloc.journal.format import LOCK_FILE, SEGMENT_HEADER, SegmentHeader, segment_name

__all__ = ["WriterLock", "journal_error", "map_segment", "read_header", "require_directory",
           "writer_alive"]

_FULL = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT}


def journal_error(exc: OSError, what: str) -> JournalError:
    """The journal error for an OS error while doing ``what``."""
    text = f"{what}: {exc.strerror or exc}"
    if exc.errno in _FULL:
        return JournalFull(exc.errno, text, exc.filename)
    if exc.errno == errno.ENOENT:
        return JournalNotFound(exc.errno, text, exc.filename)
    return JournalIOError(exc.errno or errno.EIO, text, exc.filename)


def require_directory(path: str) -> None:
    """Refuse a missing path or one that is not a directory."""
    if not os.path.exists(path):
        raise JournalNotFound(errno.ENOENT, f"no journal at {path}", path)
    if not os.path.isdir(path):
        raise JournalFormatError(f"{path} is not a journal directory (a journal is a "
                                 "directory of segment files)")


class WriterLock:
    """The exclusive ``flock`` a live writer holds on ``writer.lock``."""

    def __init__(self, directory: str) -> None:
        path = os.path.join(directory, LOCK_FILE)
        try:
            self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise journal_error(exc, f"cannot create the writer lock {path}") from exc
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self.fd)
            raise JournalLocked(f"{directory}: another process is writing this journal") from None
        except OSError as exc:
            os.close(self.fd)
            raise journal_error(exc, f"cannot lock {path}") from exc

    def release(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)      # closing the descriptor drops the flock
            self.fd = -1


def writer_alive(directory: str) -> bool:
    """True when a live process holds the writer lock of the journal."""
    path = os.path.join(directory, LOCK_FILE)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        os.close(fd)
    return False


def read_header(directory: str, number: int) -> SegmentHeader:
    """The validated header of segment ``number``."""
    path = os.path.join(directory, segment_name(number))
    try:
        with open(path, "rb") as f:
            data = f.read(SEGMENT_HEADER)
            size = os.fstat(f.fileno()).st_size
    except OSError as exc:
        raise journal_error(exc, f"cannot read {path}") from exc
    return SegmentHeader.parse(data, path, size)


def map_segment(directory: str, number: int, size: int, writable: bool) -> Mapping:
    """Map ``size`` bytes of segment ``number`` (read-only or read-write, shared)."""
    path = os.path.join(directory, segment_name(number))
    try:
        fd = os.open(path, (os.O_RDWR if writable else os.O_RDONLY) | os.O_CLOEXEC)
    except OSError as exc:
        raise journal_error(exc, f"cannot open {path}") from exc
    try:
        if os.fstat(fd).st_size < size:
            from hftalloc.errors import JournalCorrupted

            raise JournalCorrupted(f"{path}: shorter than its header says ({size} B)", path, 0)
        access = mmap.ACCESS_WRITE if writable else mmap.ACCESS_READ
        mm = mmap.mmap(fd, size, access=access)
    except OSError as exc:
        raise journal_error(exc, f"cannot map {path}") from exc
    finally:
        os.close(fd)
    return Mapping(mm, path, number, writable)
