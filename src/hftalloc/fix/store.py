"""Session stores: sequence numbers and sent messages, in memory or in one file per session.

The file store is append-only. Each record is ``<IIBq`` (payload length, CRC-32 of the rest,
kind, sequence number) followed by the payload:

- ``OUT``  a sent message (``seq`` is its MsgSeqNum; an empty payload for a session-level
  message, which a resend gap-fills);
- ``IN``   the next expected incoming MsgSeqNum;
- ``NEXT_OUT`` the next outgoing MsgSeqNum (after a SequenceReset sent by this side);
- ``RESET`` both numbers back to 1 (the file is rewritten from this record).

Opening a file replays it; a torn or corrupt tail (a crash mid-write) is cut off at the
last good record and counted in ``dropped_tail_bytes``.
"""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

from hftalloc.fix.errors import FixStoreCorrupted

__all__ = ["FileStore", "MemoryStore", "SessionStore"]

_REC = struct.Struct("<IIBq")
OUT, IN, NEXT_OUT, RESET = 1, 2, 3, 4
_MAX_RECORD = 1 << 24


class SessionStore:
    """Base store: next sequence numbers and the sent messages, kept in memory."""

    def __init__(self) -> None:
        self.next_out = 1
        self.next_in = 1
        self.dropped_tail_bytes = 0
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

    def __init__(self, path: str | os.PathLike[str]) -> None:
        super().__init__()
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._index: dict[int, tuple[int, int]] = {}
        self._load()
        self._file = open(self.path, "ab")  # noqa: SIM115 (closed by close())
        self._end = self._file.tell()

    # -- replay -----------------------------------------------------------------------------
    def _load(self) -> None:
        if not self.path.exists():
            return
        data = self.path.read_bytes()
        pos = 0
        good = 0
        while pos + _REC.size <= len(data):
            length, crc, kind, seq = _REC.unpack_from(data, pos)
            end = pos + _REC.size + length
            if length > _MAX_RECORD or end > len(data) or kind not in (OUT, IN, NEXT_OUT, RESET):
                break
            if zlib.crc32(data[pos + 8:end]) != crc:
                break
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
            pos = good = end
        if good != len(data):
            self.dropped_tail_bytes = len(data) - good
            with open(self.path, "r+b") as f:
                f.truncate(good)

    # -- writing ----------------------------------------------------------------------------
    def _append(self, kind: int, seq: int, payload: bytes = b"") -> int:
        if len(payload) > _MAX_RECORD:
            raise FixStoreCorrupted(f"record of {len(payload)} B is larger than the limit")
        body = struct.pack("<Bq", kind, seq) + payload
        at = self._end
        self._file.write(struct.pack("<II", len(payload), zlib.crc32(body)) + body)
        self._end += 8 + len(body)
        return at + _REC.size

    def save(self, seq: int, message: bytes | None) -> None:
        at = self._append(OUT, seq, message or b"")
        if message:
            self._index[seq] = (at, len(message))
        self.next_out = seq + 1

    def get(self, seq: int) -> bytes | None:
        where = self._index.get(seq)
        if where is None:
            return None
        self._file.flush()
        with open(self.path, "rb") as f:
            f.seek(where[0])
            data = f.read(where[1])
        if len(data) != where[1]:
            raise FixStoreCorrupted(f"{self.path.name}: message {seq} is cut short")
        return data

    def get_range(self, begin: int, end: int) -> dict[int, bytes]:
        """Stored application messages with ``begin <= seq <= end`` (one file read)."""
        wanted = {s: w for s, w in self._index.items() if begin <= s <= end}
        if not wanted:
            return {}
        self._file.flush()
        out = {}
        with open(self.path, "rb") as f:
            for seq, (at, length) in sorted(wanted.items()):
                f.seek(at)
                out[seq] = f.read(length)
        return out

    def set_next_in(self, seq: int) -> None:
        if seq != self.next_in:
            self._append(IN, seq)
        self.next_in = seq

    def set_next_out(self, seq: int) -> None:
        self._append(NEXT_OUT, seq)
        self.next_out = seq

    def reset(self) -> None:
        self._file.close()
        self._file = open(self.path, "wb")  # noqa: SIM115
        self._end = 0
        self._index.clear()
        self.next_out = self.next_in = 1
        self._append(RESET, 0)
        self.flush()

    def flush(self) -> None:
        if not self._file.closed:
            self._file.flush()

    def close(self) -> None:
        if not self._file.closed:
            self._file.flush()
            self._file.close()
