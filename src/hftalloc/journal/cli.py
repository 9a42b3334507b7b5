"""``python -m hftalloc journal info|dump|verify|replay PATH``.

    info PATH [--json]                  records, topics, time range, size, torn tail
    dump PATH [--topic P] [--from NS] [--to NS] [--seq N] [--limit N] [--hex]
                                        one line per record, payload decoded with
                                        hftalloc.schemas when it is one of them, else hex
    verify PATH                         exit 0 when every record is intact, 1 when a torn
                                        tail or damage was found (each one listed)
    replay PATH [--speed X] [--topic P] publish into an in-process bus and count
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from typing import Any

from hftalloc.errors import JournalError, SchemaError

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="journal_command", required=True)
    p = sub.add_parser("info", help="records, topics, time range and size of a journal")
    p.add_argument("path")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p = sub.add_parser("dump", help="print records")
    p.add_argument("path")
    p.add_argument("--topic", action="append", help="topic pattern (repeatable)")
    p.add_argument("--from", dest="start", type=int, help="first timestamp (ns)")
    p.add_argument("--to", dest="end", type=int, help="timestamps below this (ns)")
    p.add_argument("--seq", type=int, help="start at this sequence number")
    p.add_argument("--limit", type=int, default=0, help="at most this many records")
    p.add_argument("--hex", action="store_true", help="payloads as hex, never decoded")
    p = sub.add_parser("verify", help="check every record; exit 1 on a torn tail or damage")
    p.add_argument("path")
    p = sub.add_parser("replay", help="publish the records into an in-process bus")
    p.add_argument("path")
    p.add_argument("--speed", type=float, default=None,
                   help="paced at the recorded timing, this many times faster (default: "
                        "as fast as possible)")
    p.add_argument("--topic", action="append", help="topic pattern (repeatable)")


def _payload_text(rec: Any, as_hex: bool) -> str:
    data = bytes(rec)
    if not as_hex and data:
        from hftalloc import schemas

        try:
            return repr(schemas.decode(data))
        except (SchemaError, ValueError, KeyError, IndexError):
            pass
    text = data[:64].hex()
    return text + ("..." if len(data) > 64 else "")


def _info(path: str, as_json: bool) -> int:
    from hftalloc.journal import JournalReader

    info = JournalReader(path).info()
    if as_json:
        print(json.dumps(dataclasses.asdict(info), indent=2, default=str))
        return 0
    span = ""
    if info.first_time is not None and info.time_max is not None:
        span = f" ({(info.time_max - info.first_time) / 1e9:.3f} s)"
    print(f"journal   {info.path}")
    print(f"records   {info.records:,} (seq {info.first_seq}..{info.last_seq})")
    print(f"time      {info.first_time} .. {info.time_max} ns{span}")
    print(f"topics    {len(info.topics)}: {', '.join(info.topics)}")
    print(f"size      {info.size_bytes:,} B in {info.segments} segment(s) of "
          f"{info.segment_size:,} B, max payload {info.max_payload:,} B")
    print(f"writer    {'live' if info.writer_alive else 'none'}")
    if info.torn_tail is not None:
        print(f"torn tail {info.torn_tail.path} @ {info.torn_tail.offset} (cut off when a "
              "writer opens the journal)")
    if info.problem:
        print(f"problem   {info.problem}")
    return 0


def _dump(args: argparse.Namespace) -> int:
    from hftalloc.journal import JournalReader

    reader = JournalReader(args.path, topics=args.topic)
    if args.seq is not None:
        records = reader.seek(args.seq)
        if args.start is not None or args.end is not None:
            records.set_window(args.start if args.start is not None else -(1 << 63),
                               args.end if args.end is not None else (1 << 63) - 1)
    else:
        records = reader.records(start_time=args.start, end_time=args.end)
    for shown, rec in enumerate(records, 1):
        print(f"{rec.seq:>10} {rec.timestamp:>20} {rec.topic:<24} {len(rec):>6} B  "
              f"{_payload_text(rec, args.hex)}")
        if args.limit and shown >= args.limit:
            break
    return 0


def _verify(path: str) -> int:
    from hftalloc.journal import verify

    report = verify(path)
    for problem in report.problems:
        print(f"PROBLEM {problem}")
    state = "ok" if report.ok else f"{len(report.problems)} problem(s)"
    print(f"{report.records:,} intact records in {report.segments} segment(s): {state}")
    return 0 if report.ok else 1


def _replay(args: argparse.Namespace) -> int:
    from hftalloc import MessageBus
    from hftalloc.journal import replay

    bus = MessageBus(name="replay")
    seen = {"n": 0}

    def count(msg: Any) -> None:
        seen["n"] += 1

    bus.subscribe(">", count)
    stats = replay(args.path, bus, speed=args.speed, topics=args.topic)
    print(f"replayed {stats.published:,} records ({stats.dropped} dropped) in "
          f"{stats.elapsed:.3f} s ({stats.rate:,.0f} msgs/s), delivered {seen['n']:,}, "
          f"{'original' if stats.original_timestamps else 'new'} timestamps")
    bus.close()
    return 0


def run(args: argparse.Namespace) -> int:
    """Run a parsed ``journal`` command; errors print one line and give exit code 1
    (a missing path or a file that is not a journal: 2)."""
    try:
        if args.journal_command == "info":
            return _info(args.path, args.json)
        if args.journal_command == "dump":
            return _dump(args)
        if args.journal_command == "verify":
            return _verify(args.path)
        return _replay(args)
    except (JournalError, OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        from hftalloc.errors import JournalFormatError, JournalNotFound

        return 2 if isinstance(exc, JournalNotFound | JournalFormatError) else 1
