"""The on-disk format of a journal: file names, headers, record and entry layouts.

A journal is a directory::

    segment-000000000001.hjs   records (memory-mapped, preallocated, rolled at a fixed size)
    segment-000000000002.hjs
    topics.hjt                 topic dictionary: one entry per topic id
    index.hji                  sparse index: (seq, time, segment, offset) every N records
    writer.lock                held (flock) by the live writer

Every file starts with a magic and the format version; all integers are little-endian.
Records are 8-byte aligned::

    0  u32 length      header + payload bytes, stored last (0: not written yet,
                       0xFFFFFFFF: end of this segment, continue in the next one)
    4  u32 crc32c      of bytes 8..length, then of the length word
    8  u64 seq         1, 2, 3 ... without gaps over the whole journal
    16 i64 timestamp   ns (CLOCK_MONOTONIC by default; the bus's publish stamp)
    24 u32 topic id    key into the topic dictionary
    28 u32 flags
    32 payload         then zero padding to the next multiple of 8
"""

from __future__ import annotations

import os
import re
import struct
from dataclasses import dataclass

from hftalloc.errors import JournalCorrupted, JournalFormatError

__all__ = [
    "END_OF_SEGMENT",
    "FORMAT_VERSION",
    "INDEX_ENTRY",
    "INDEX_FILE",
    "LOCK_FILE",
    "RECORD_HEADER",
    "SEGMENT_HEADER",
    "TOPICS_FILE",
    "SegmentHeader",
    "crc_of",
    "file_header",
    "pad8",
    "parse_file_header",
    "segment_name",
    "segment_numbers",
]

FORMAT_VERSION = 1
SEGMENT_MAGIC = b"HFTJSEG\x00"
TOPICS_MAGIC = b"HFTJTOP\x00"
INDEX_MAGIC = b"HFTJIDX\x00"
TOPICS_FILE = "topics.hjt"
INDEX_FILE = "index.hji"
LOCK_FILE = "writer.lock"
_SEGMENT_RE = re.compile(r"^segment-(\d{12})\.hjs$")

END_OF_SEGMENT = 0xFFFFFFFF
RECORD_HEADER = 32
MAX_RECORD_PAYLOAD = (1 << 30)           # hard ceiling of max_payload (1 GiB)
MAX_SEGMENT_SIZE = (1 << 32) - 4096      # offsets are u32
MIN_SEGMENT_SIZE = 64 * 1024
INT64_MIN = -(1 << 63)

# magic, version, header size, flags, segment size, segment number, first seq,
# max payload, reserved, time max before the first record, created (realtime ns),
# created (monotonic ns), reserved, crc32c of bytes 0..60
_SEGMENT = struct.Struct("<8sHHIQQQIIqqq4xI")
SEGMENT_HEADER = 128                    # records start here (the struct is padded with zeros)
assert _SEGMENT.size <= SEGMENT_HEADER

# magic, version, header size, reserved
_FILE = struct.Struct("<8sHHI")
FILE_HEADER = _FILE.size                # 16: topics and index files

# topic entry: crc32c (of the rest), id, name length, reserved; then the UTF-8 name
TOPIC_ENTRY = struct.Struct("<IIHH")
MAX_TOPIC_NAME = 1024
# index entry: seq, time max of the records before it, segment, offset, crc32c of bytes 0..24
INDEX_ENTRY = struct.Struct("<QqIII4x")


def pad8(n: int) -> int:
    return (n + 7) & ~7


def crc_of(data: bytes | memoryview) -> int:
    from hftalloc.journal._journal import crc32c

    return crc32c(data)


def segment_name(number: int) -> str:
    return f"segment-{number:012d}.hjs"


def segment_numbers(directory: str) -> list[int]:
    """The segment numbers present in ``directory``, ascending."""
    found = []
    for name in os.listdir(directory):
        m = _SEGMENT_RE.match(name)
        if m:
            found.append(int(m.group(1)))
    return sorted(found)


@dataclass(frozen=True, slots=True)
class SegmentHeader:
    """The geometry and starting point of one segment file."""

    segment_size: int
    number: int
    first_seq: int
    max_payload: int
    time_max_before: int
    created_realtime_ns: int
    created_monotonic_ns: int

    def pack(self) -> bytes:
        body = _SEGMENT.pack(SEGMENT_MAGIC, FORMAT_VERSION, SEGMENT_HEADER, 0, self.segment_size,
                             self.number, self.first_seq, self.max_payload, 0,
                             self.time_max_before, self.created_realtime_ns,
                             self.created_monotonic_ns, 0)
        body = body[:-4] + struct.pack("<I", crc_of(body[:-4]))
        return body.ljust(SEGMENT_HEADER, b"\x00")

    @classmethod
    def parse(cls, data: bytes, path: str, file_size: int) -> SegmentHeader:
        """Validate a segment header (untrusted bytes) and return it."""
        if len(data) < _SEGMENT.size:
            raise JournalFormatError(f"{path}: {len(data)} bytes, too short for a journal segment")
        (magic, version, header_size, _flags, size, number, first_seq, max_payload, _r,
         time_max, created_rt, created_mono, crc) = _SEGMENT.unpack_from(data)
        if magic != SEGMENT_MAGIC:
            raise JournalFormatError(f"{path}: not an hftalloc journal segment (magic {magic!r})")
        if version != FORMAT_VERSION:
            raise JournalFormatError(f"{path}: journal format version {version}, this hftalloc "
                                     f"reads version {FORMAT_VERSION}")
        if crc != crc_of(data[:_SEGMENT.size - 4]):
            raise JournalCorrupted(f"{path}: segment header checksum mismatch", path, 0)
        if header_size != SEGMENT_HEADER or not MIN_SEGMENT_SIZE <= size <= MAX_SEGMENT_SIZE \
                or size % 8 or not 0 <= max_payload <= min(MAX_RECORD_PAYLOAD, size) \
                or first_seq < 1:
            raise JournalCorrupted(f"{path}: segment header out of range (size={size}, "
                                   f"max_payload={max_payload}, first_seq={first_seq})", path, 0)
        if file_size < size:
            raise JournalCorrupted(f"{path}: file is {file_size} bytes, its header says {size}",
                                   path, file_size)
        return cls(size, number, first_seq, max_payload, time_max, created_rt, created_mono)


def file_header(magic: bytes) -> bytes:
    return _FILE.pack(magic, FORMAT_VERSION, FILE_HEADER, 0)


def parse_file_header(data: bytes, magic: bytes, path: str, what: str) -> None:
    """Refuse a topics/index file that is not one, or of another version."""
    if len(data) < FILE_HEADER:
        raise JournalFormatError(f"{path}: too short for a journal {what} file")
    got, version, size, _ = _FILE.unpack_from(data)
    if got != magic:
        raise JournalFormatError(f"{path}: not an hftalloc journal {what} file (magic {got!r})")
    if version != FORMAT_VERSION:
        raise JournalFormatError(f"{path}: journal format version {version}, this hftalloc "
                                 f"reads version {FORMAT_VERSION}")
    if size != FILE_HEADER:
        raise JournalCorrupted(f"{path}: header size {size}", path, 0)
