"""Journals on hostile ground: no permission, a read-only filesystem, a full disk, a
file size limit. Each gives a clear error and keeps every record committed before."""

from __future__ import annotations

import contextlib
import errno
import os
import pickle
import resource
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

import pytest

from hftalloc import JournalFull, JournalIOError
from hftalloc.journal import JournalReader, JournalWriter, verify

SEGMENT = 64 * 1024


@contextlib.contextmanager
def tmpfs(path, size_kib: int):
    """A small tmpfs at ``path`` (skips the test when this process cannot mount)."""
    os.makedirs(path, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kib}k", "tmpfs", path],
                          capture_output=True, text=True)
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip()}): needs root/CAP_SYS_ADMIN")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", path], capture_output=True)


def in_child(fn):
    """Run ``fn()`` in a forked child; returns what it returned (or the exception it raised)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        try:
            result = fn()
        except BaseException as exc:
            result = exc
        try:
            data = pickle.dumps(result)
        except Exception:
            data = pickle.dumps(RuntimeError(repr(result)))
        os.write(w, data)
        os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        data = f.read()
    os.waitpid(pid, 0)
    return pickle.loads(data)


def fill(w: JournalWriter, limit: int = 100_000) -> tuple[int, BaseException | None]:
    """Append 1 KiB records until the writer refuses one; (records written, error)."""
    n = 0
    try:
        while n < limit:
            w.append("fill.x", bytes([n % 256]) * 1000)
            n += 1
    except JournalFull as exc:
        return n, exc
    return n, None


def test_permission_denied(request):
    if os.geteuid() != 0:
        pytest.skip("the test drops root privileges in a child; it runs as root only")
    base = tempfile.mkdtemp(prefix="hft-perm-")      # a path the unprivileged child can reach
    request.addfinalizer(lambda: shutil.rmtree(base, ignore_errors=True))
    os.chmod(base, 0o755)
    tmp_path = Path(base)
    locked = tmp_path / "locked"
    locked.mkdir()
    os.chmod(locked, 0o555)                   # no write permission for anyone but root
    readable = tmp_path / "readable"
    with JournalWriter(readable, segment_size=SEGMENT) as w:
        w.append("a.b", b"x")
    for name in os.listdir(readable):
        os.chmod(readable / name, 0o000)

    def as_nobody():
        os.setgroups([])
        os.setgid(65534)
        os.setuid(65534)                      # root's permission bypass ends here
        out = []
        for make in (lambda: JournalWriter(locked / "j"), lambda: JournalWriter(locked),
                     lambda: JournalReader(readable)):
            try:
                make()
                out.append(None)
            except Exception as exc:
                out.append((type(exc).__name__, getattr(exc, "errno", None),
                            isinstance(exc, JournalIOError)))
        return out

    got = in_child(as_nobody)
    assert not isinstance(got, BaseException), got
    assert got == [("JournalIOError", errno.EACCES, True)] * 3


def test_read_only_filesystem(tmp_path):
    mnt = str(tmp_path / "ro")
    with tmpfs(mnt, 1024):
        path = os.path.join(mnt, "j")
        with JournalWriter(path, segment_size=SEGMENT) as w:
            for i in range(50):
                w.append("a.b", bytes([i]) * i)
        subprocess.run(["mount", "-o", "remount,ro", mnt], check=True)
        with pytest.raises(JournalIOError) as info:
            JournalWriter(path)
        assert info.value.errno == errno.EROFS
        with pytest.raises(JournalIOError):
            JournalWriter(os.path.join(mnt, "new"))
        recs = list(JournalReader(path))       # reading needs no write access
        assert [bytes(r) for r in recs] == [bytes([i]) * i for i in range(50)]
        assert verify(path).ok


def test_disk_full(tmp_path):
    mnt = str(tmp_path / "small")
    with tmpfs(mnt, 300):
        path = os.path.join(mnt, "j")
        w = JournalWriter(path, segment_size=SEGMENT, max_payload=2000)
        n, exc = fill(w)
        assert exc is not None and exc.errno == errno.ENOSPC and "segment" in str(exc)
        with pytest.raises(JournalFull):       # still full: refused again, nothing lost
            w.append("fill.x", b"y" * 1000)
        assert w.append("fill.x", b"") == n + 1   # a record that fits still goes in
        w.close()
        recs = list(JournalReader(path))
        assert len(recs) == n + 1
        assert [bytes(r) for r in recs[:n]] == [bytes([i % 256]) * 1000 for i in range(n)]
        assert verify(path).ok


def test_file_size_limit(tmp_path):
    path = str(tmp_path / "j")
    JournalWriter(path, segment_size=SEGMENT, max_payload=2000).close()

    def limited():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)   # EFBIG instead of being killed
        # below one segment: the first segment fills up, the next cannot be made
        resource.setrlimit(resource.RLIMIT_FSIZE, (SEGMENT // 2, SEGMENT // 2))
        w = JournalWriter(path)
        n, exc = fill(w)
        w.close()
        return n, type(exc).__name__, getattr(exc, "errno", None)

    got = in_child(limited)
    assert not isinstance(got, BaseException), got
    n, name, err = got
    assert (name, err) == ("JournalFull", errno.EFBIG) and n > 50
    assert [bytes(r) for r in JournalReader(path)] == [bytes([i % 256]) * 1000 for i in range(n)]
    assert verify(path).ok


def test_recorder_counts_a_full_disk(tmp_path):
    from hftalloc import MessageBus
    from hftalloc.journal import Recorder

    mnt = str(tmp_path / "small")
    with tmpfs(mnt, 300):
        w = JournalWriter(os.path.join(mnt, "j"), segment_size=SEGMENT, max_payload=2000)
        errors = []
        bus = MessageBus(on_error=lambda exc, msg, sub: errors.append(exc))
        rec = Recorder(bus, w, "md.>")
        for i in range(400):
            bus.publish("md.x", bytes([i % 256]) * 1000)
        stats = bus.stats()
        assert rec.failed > 0 and rec.recorded > 0
        assert rec.recorded + rec.failed == 400
        assert stats.delivered == rec.recorded and stats.errors == rec.failed
        assert len(errors) == rec.failed and isinstance(rec.last_error, JournalFull)
        w.close()
        assert len(list(JournalReader(os.path.join(mnt, "j")))) == rec.recorded
