"""Session stores: sequence numbers and sent messages, in memory or in one file per session.

The file store is append-only. Each record is ``<IIBq`` (payload length, CRC-32 of the rest,
kind, sequence number) followed by the payload:

- ``OUT``  a sent message (``seq`` is its MsgSeqNum; an empty payload for a session-level
  message, which a resend gap-fills);
- ``IN``   the next expected incoming MsgSeqNum;
- ``NEXT_OUT`` the next outgoing MsgSeqNum (after a SequenceReset sent by this side);
- ``RESET`` both numbers back to 1 (the file is rewritten from this record).

Durability (``durability=``), i.e. what a crash can lose of the records written so far:

- ``"flush"`` (default): every record is handed to the operating system before the call
  returns (one ``write``). A crash of the process (even SIGKILL) loses nothing; a crash of
  the machine may lose what the OS had not written to disk yet.
- ``"fsync"``: as ``"flush"``, then ``fdatasync``: every record is on disk before the call
  returns (and before the message it describes goes on the wire). Costs a disk flush per
  record.
- ``"none"``: records are buffered in the process (up to ``buffer_size`` bytes) and reach the
  OS on ``flush()``/``close()``, at Logon, Logout and disconnect, and when the buffer fills.
  A crash loses the buffered records: after a restart the session may reuse sequence numbers
  the peer has seen (it answers with a Logout "MsgSeqNum too low"), so this suits sessions
  that reset their numbers on every Logon.

Opening a file replays it. A torn tail (the process died in the middle of a write, or the
machine lost the last page) is detected by the record length and CRC, cut off at the last
good record and counted (``dropped_tail_records``, ``dropped_tail_bytes``); it is never
replayed. A bad record followed by good ones is corruption, not a torn write:
:class:`~hftalloc.fix.errors.FixStoreCorrupted`, and the file is left as it is.
"""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path
from typing import Literal

from hftalloc.fix.errors import FixStoreCorrupted

__all__ = ["DURABILITY", "Durability", "FileStore", "MemoryStore", "SessionStore"]

_REC = struct.Struct("<IIBq")
_BODY = struct.Struct("<Bq")
_HEAD = struct.Struct("<II")
OUT, IN, NEXT_OUT, RESET = 1, 2, 3, 4
_KINDS = (OUT, IN, NEXT_OUT, RESET)
_MAX_RECORD = 1 << 24

Durability = Literal["fsync", "flush", "none"]
DURABILITY: tuple[str, ...] = ("fsync", "flush", "none")


class SessionStore:
    """Base store: next sequence numbers and the sent messages, kept in memory."""

    durability: str = "none"

    def __init__(self) -> None:
        self.next_out = 1
        self.next_in = 1
        self.dropped_tail_bytes = 0
        self.dropped_tail_records = 0
        self._messages: dict[int, bytes] = {}

    def save(self, seq: int, message: bytes | None) -> None:
        """Record a sent message (``None`` for a session-level one); next_out = seq + 1."""
        if message is not None:
            self._messages[seq] = message
        self.next_out = seq + 1

    def get(self, seq: int) -> bytes | None:
        """The sent application message ``seq``, or None (gap-filled on resend)."""
        return self._messages.get(seq)

    def get_range(self, begin: int, end: int) -> dict[int, bytes]:
        """Stored application messages with ``begin <= seq <= end``."""
        return {s: m for s, m in self._messages.items() if begin <= s <= end}

    def set_next_in(self, seq: int) -> None:
        self.next_in = seq

    def set_next_out(self, seq: int) -> None:
        self.next_out = seq

    def reset(self) -> None:
        """Both sequence numbers back to 1, sent messages forgotten."""
        self.next_out = self.next_in = 1
        self._messages.clear()

    def flush(self) -> None:
        """Push buffered records to the operating system."""

    def close(self) -> None:
        self.flush()


class MemoryStore(SessionStore):
    """Everything in memory (nothing survives the process)."""


class FileStore(SessionStore):
    """One append-only, checksummed file per session (see the module docstring)."""

    def __init__(self, path: str | os.PathLike[str], *, durability: Durability = "flush",
                 buffer_size: int = 65536) -> None:
        if durability not in DURABILITY:
            raise ValueError(f"durability must be one of {DURABILITY}, not {durability!r}")
        if buffer_size < 0:
            raise ValueError(f"buffer_size must be >= 0, not {buffer_size}")
        super().__init__()
        self.path = Path(path)
        self.durability = durability
        self.buffer_size = buffer_size
        self.records_written = 0
        self.syncs = 0
        self._pending = bytearray()
        self._index: dict[int, tuple[int, int]] = {}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        created = not self.path.exists()
        self._load()
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self._end = os.fstat(self._fd).st_size
        if created and durability == "fsync":
            self._sync_dir()

    # -- replay -----------------------------------------------------------------------------
    def _load(self) -> None:
        if not self.path.exists():
            return
        data = self.path.read_bytes()
        pos = 0
        while pos < len(data):
            end = _record_end(data, pos)
            if end < 0:
                break
            length, _crc, kind, seq = _REC.unpack_from(data, pos)
            payload_at = pos + _REC.size
            if kind == OUT:
                if length:
                    self._index[seq] = (payload_at, length)
                self.next_out = seq + 1
            elif kind == IN:
                self.next_in = seq
            elif kind == NEXT_OUT:
                self.next_out = seq
            else:
                self.next_out = self.next_in = 1
                self._index.clear()
            pos = end
        if pos == len(data):
            return
        # a bad record: a torn tail unless a good record follows somewhere after it
        if _good_record_after(data, pos):
            raise FixStoreCorrupted(
                f"{self.path}: record at offset {pos} is corrupt but records follow it "
                "(not a torn write); the file was left untouched")
        self.dropped_tail_bytes = len(data) - pos
        self.dropped_tail_records = 1
        with open(self.path, "r+b") as f:
            f.truncate(pos)
            if self.durability == "fsync":
                os.fsync(f.fileno())

    # -- writing ----------------------------------------------------------------------------
    def _append(self, kind: int, seq: int, payload: bytes = b"") -> int:
        """Write one record per the durability policy; returns the payload's offset."""
        if len(payload) > _MAX_RECORD:
            raise FixStoreCorrupted(f"record of {len(payload)} B is larger than the limit")
        body = _BODY.pack(kind, seq) + payload
        record = _HEAD.pack(len(payload), zlib.crc32(body)) + body
        at = self._end
        self._end += len(record)
        self.records_written += 1
        if self.durability == "none":
            self._pending += record
            if len(self._pending) >= self.buffer_size:
                self._write_pending()
        else:
            _write_all(self._fd, record)
            if self.durability == "fsync":
                os.fdatasync(self._fd)
                self.syncs += 1
        return at + _REC.size

    def _write_pending(self) -> None:
        if self._pending:
            _write_all(self._fd, self._pending)
            self._pending.clear()

    def save(self, seq: int, message: bytes | None) -> None:
        at = self._append(OUT, seq, message or b"")
        if message:
            self._index[seq] = (at, len(message))
        self.next_out = seq + 1

    def _read(self, at: int, length: int) -> bytes:
        self._write_pending()
        return os.pread(self._fd_read(), length, at)

    def _fd_read(self) -> int:
        fd = getattr(self, "_rfd", -1)
        if fd < 0:
            fd = self._rfd = os.open(self.path, os.O_RDONLY)
        return fd

    def get(self, seq: int) -> bytes | None:
        where = self._index.get(seq)
        if where is None:
            return None
        data = self._read(*where)
        if len(data) != where[1]:
            raise FixStoreCorrupted(f"{self.path.name}: message {seq} is cut short")
        return data

    def get_range(self, begin: int, end: int) -> dict[int, bytes]:
        """Stored application messages with ``begin <= seq <= end``."""
        wanted = sorted((s, w) for s, w in self._index.items() if begin <= s <= end)
        out = {}
        for seq, (at, length) in wanted:
            data = self._read(at, length)
            if len(data) != length:
                raise FixStoreCorrupted(f"{self.path.name}: message {seq} is cut short")
            out[seq] = data
        return out

    def set_next_in(self, seq: int) -> None:
        if seq != self.next_in:
            self._append(IN, seq)
        self.next_in = seq

    def set_next_out(self, seq: int) -> None:
        self._append(NEXT_OUT, seq)
        self.next_out = seq

    def reset(self) -> None:
        self._pending.clear()
        os.ftruncate(self._fd, 0)
        self._end = 0
        self._index.clear()
        self.next_out = self.next_in = 1
        self._append(RESET, 0)
        self.flush()

    def flush(self) -> None:
        """Hand buffered records to the OS (``"none"``; the other policies never buffer)."""
        if self._fd >= 0:
            self._write_pending()

    def sync(self) -> None:
        """Flush, then force the file to disk (whatever the policy)."""
        if self._fd >= 0:
            self._write_pending()
            os.fsync(self._fd)
            self.syncs += 1

    def close(self) -> None:
        if self._fd >= 0:
            self._write_pending()
            if self.durability == "fsync":
                os.fsync(self._fd)
            os.close(self._fd)
            self._fd = -1
        rfd = getattr(self, "_rfd", -1)
        if rfd >= 0:
            os.close(rfd)
            self._rfd = -1

    @property
    def closed(self) -> bool:
        return self._fd < 0

    def _sync_dir(self) -> None:
        fd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def __del__(self) -> None:
        if getattr(self, "_fd", -1) >= 0:
            self.close()


def _write_all(fd: int, data: bytes | bytearray) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def _record_end(data: bytes, pos: int) -> int:
    """End offset of the record at ``pos`` if it is complete and intact, else -1."""
    if pos + _REC.size > len(data):
        return -1
    length, crc, kind, _seq = _REC.unpack_from(data, pos)
    end = pos + _REC.size + length
    if length > _MAX_RECORD or end > len(data) or kind not in _KINDS:
        return -1
    if zlib.crc32(memoryview(data)[pos + _HEAD.size:end]) != crc:
        return -1
    return end


def _good_record_after(data: bytes, bad: int) -> bool:
    """True when an intact record chain reaching the end of ``data`` starts after ``bad``.

    A torn write leaves nothing valid behind it; finding intact records that end exactly
    at the end of the file means a record in the middle was damaged.
    """
    for pos in range(bad + 1, len(data) - _REC.size + 1):
        at = pos
        while True:
            end = _record_end(data, at)
            if end < 0:
                break
            if end == len(data):
                return True
            at = end
    return False
