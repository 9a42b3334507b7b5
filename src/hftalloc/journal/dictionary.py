"""The topic dictionary of a journal (``topics.hjt``): topic id -> name.

Append-only entries ``crc32c, id, name length, reserved, name``; ids are 1, 2, 3...
in file order. The writer writes an entry (and, unless ``flush="none"``, fsyncs it)
before the first record that uses the id. Readers stop at the first entry that is
incomplete (being written) or fails its checks.
"""

from __future__ import annotations

import os

from hftalloc.errors import InvalidTopic, JournalCorrupted
from hftalloc.journal._journal import crc32c
from hftalloc.journal.files import journal_error
from hftalloc.journal.format import (
    FILE_HEADER,
    MAX_TOPIC_NAME,
    TOPIC_ENTRY,
    TOPICS_FILE,
    TOPICS_MAGIC,
    file_header,
    parse_file_header,
)
from hftalloc.topics import validate_topic

__all__ = ["TopicDictionary", "TopicWriter"]


class TopicDictionary:
    """Topic names by id, read from (and for the writer, appended to) ``topics.hjt``."""

    def __init__(self, directory: str) -> None:
        self.path = os.path.join(directory, TOPICS_FILE)
        self.names: list[str | None] = [None]     # id 0 is never used
        self.ids: dict[str, int] = {}
        self.offset = 0                            # bytes parsed so far
        self.problem: str | None = None
        self.problem_offset = -1

    def load(self) -> bool:
        """Read entries added since the last call; True when new ones were found."""
        try:
            with open(self.path, "rb") as f:
                if self.offset == 0:
                    head = f.read(FILE_HEADER)
                    if not head:
                        return False
                    parse_file_header(head, TOPICS_MAGIC, self.path, "topics")
                    self.offset = FILE_HEADER
                f.seek(self.offset)
                data = f.read()
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise journal_error(exc, f"cannot read {self.path}") from exc
        return self._parse(data)

    def _parse(self, data: bytes) -> bool:
        pos = 0
        found = False
        self.problem = None
        while pos + TOPIC_ENTRY.size <= len(data):
            crc, tid, size, _ = TOPIC_ENTRY.unpack_from(data, pos)
            end = pos + TOPIC_ENTRY.size + size
            if tid == 0 and size == 0 and crc == 0:
                break
            if size > MAX_TOPIC_NAME or end > len(data):
                if size > MAX_TOPIC_NAME:
                    self._bad(pos, f"topic entry name length {size} out of range")
                break
            raw = data[pos + 4:end]
            if crc32c(raw) != crc or tid != len(self.names):
                self._bad(pos, f"topic entry {tid} fails its checks")
                break
            try:
                name = validate_topic(raw[8:].decode("utf-8"))
            except (UnicodeDecodeError, ValueError):
                self._bad(pos, f"topic entry {tid} holds no valid topic name")
                break
            self.names.append(name)
            self.ids[name] = tid
            pos = end
            found = True
        self.offset += pos
        return found

    def _bad(self, pos: int, text: str) -> None:
        self.problem_offset = self.offset + pos
        self.problem = f"{self.path}: {text} at offset {self.problem_offset}"

    def name(self, tid: int, segment: str, offset: int) -> str:
        """The name of ``tid`` (reloading the file once), else JournalCorrupted."""
        if 0 < tid < len(self.names) and self.names[tid] is not None:
            return self.names[tid]  # type: ignore[return-value]
        self.load()
        if 0 < tid < len(self.names):
            return self.names[tid]  # type: ignore[return-value]
        raise JournalCorrupted(f"{segment}: record at offset {offset} uses topic id {tid}, "
                               f"which the topic dictionary does not hold"
                               + (f" ({self.problem})" if self.problem else ""),
                               segment, offset)


class TopicWriter(TopicDictionary):
    """The writer's side: cuts a damaged or partial tail off, appends new entries."""

    def __init__(self, directory: str, sync: bool) -> None:
        super().__init__(directory)
        self.sync = sync
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise journal_error(exc, f"cannot open {self.path}") from exc
        self.fd = fd
        try:
            if os.fstat(fd).st_size < FILE_HEADER:
                os.ftruncate(fd, 0)
                self._write(file_header(TOPICS_MAGIC), 0)
            self.load()
            if os.fstat(fd).st_size != self.offset:
                os.ftruncate(fd, self.offset)      # a torn or damaged entry is cut off
        except OSError as exc:
            os.close(fd)
            raise journal_error(exc, f"cannot prepare {self.path}") from exc
        except BaseException:
            os.close(fd)
            raise

    def _write(self, data: bytes, offset: int) -> None:
        written = os.pwrite(self.fd, data, offset)
        if written != len(data):
            os.ftruncate(self.fd, offset)
            raise OSError(28, "short write (no space left on device)", self.path)
        if self.sync:
            os.fsync(self.fd)

    def add(self, topic: str) -> int:
        """Give ``topic`` the next id and store it; returns the id."""
        raw = topic.encode("utf-8")
        if len(raw) > MAX_TOPIC_NAME:
            raise InvalidTopic(f"topic of {len(raw)} B is longer than {MAX_TOPIC_NAME} B")
        tid = len(self.names)
        body = TOPIC_ENTRY.pack(0, tid, len(raw), 0)[4:] + raw
        entry = crc32c(body).to_bytes(4, "little") + body
        try:
            self._write(entry, self.offset)
        except OSError as exc:
            raise journal_error(exc, f"cannot store topic {topic!r} in {self.path}") from exc
        self.offset += len(entry)
        self.names.append(topic)
        self.ids[topic] = tid
        return tid

    def fsync(self) -> None:
        if self.fd >= 0:
            os.fsync(self.fd)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

