"""``python -m hftalloc status|cleanup|recover|journal``.

    python -m hftalloc status [--json] [NAME ...]   list segments, owners alive/dead
    python -m hftalloc cleanup [--dry-run] [--invalid] [--force] [NAME ...]
    python -m hftalloc recover NAME                 reclaim blocks of dead peers
    python -m hftalloc journal info|dump|verify|replay PATH   record/replay journals
    python -m hftalloc fix venue --port PORT        FIX 4.4 exchange simulator
"""

from __future__ import annotations

import argparse
import json
import sys

from hftalloc.errors import IpcError
from hftalloc.journal import cli as journal_cli
from hftalloc.shm.status import (
    RoleStatus,
    SegmentStatus,
    cleanup,
    recover,
    segment_status,
    statuses,
)

__all__ = ["main"]


def _who(pid: int, alive: bool | None) -> str:
    if alive is None:
        return "-"
    return f"{abs(pid)} {'alive' if alive else 'DEAD'}"


def _role(role: RoleStatus | None) -> str:
    if role is None or role.alive is None:
        return f"- ({role.state})" if role is not None else "-"
    beat = "" if role.heartbeat_age is None else f" {role.heartbeat_age:.1f}s"
    return _who(role.pid, role.alive) + beat


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)  # pragma: no cover


def format_status(rows: list[SegmentStatus]) -> str:
    """The status table (one line per segment, problems underneath)."""
    if not rows:
        return "no hftalloc segments"
    header = ("segment", "size", "creator", "producer (beat)", "consumer (beat)", "queued",
              "published", "received", "dropped", "gaps", "status")
    table = [header]
    notes = []
    for s in rows:
        verdict = "in use" if s.in_use else "dead: cleanup removes it"
        if not s.valid:
            table.append((s.name, _size(s.size), _who(s.creator_pid, s.creator_alive or None),
                          "", "", "", "", "", "", "", "INVALID"))
            notes.append(f"  {s.name}: {s.problem}")
            continue
        producers = _role(s.producer)
        if len(s.producers) > 1:
            alive = sum(p.role.alive is True for p in s.producers)
            producers = f"{alive}/{len(s.producers)} slots alive"
        table.append((s.name, _size(s.size), _who(s.creator_pid, s.creator_alive),
                      producers, _role(s.consumer), str(s.queued), f"{s.published:,}",
                      f"{s.received:,}", str(s.dropped), str(s.gaps), verdict))
        if len(s.producers) > 1 or s.lost:
            notes.extend(f"  {s.name} slot {p.slot}: {_role(p.role)} policy={p.policy} "
                         f"published={p.published:,} queued={p.queued} dropped={p.dropped} "
                         f"gaps={p.gaps} lost={p.lost}" for p in s.producers)
        held = {size: row for size, row in s.blocks.items() if row[1] or row[3]}
        roles = [s.consumer] + [p.role for p in s.producers]
        if held and any(r is not None and r.alive is False for r in roles):
            notes.append(f"  {s.name}: blocks held (producer/consumer) "
                         + ", ".join(f"{k} B {v[1]}/{v[3]}" for k, v in held.items())
                         + " -> python -m hftalloc recover " + s.name)
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
             for row in table]
    return "\n".join(lines + notes)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["fix"]:  # the FIX tools (hftalloc.fix.cli)
        from hftalloc.fix.cli import main as fix_main

        return fix_main(argv[1:])
    parser = argparse.ArgumentParser(prog="python -m hftalloc",
                                     description="hftalloc shared-memory segments, journals and "
                                                 "FIX tools")
    sub = parser.add_subparsers(dest="command", required=True)
    p_status = sub.add_parser("status", help="list segments and whether their owners live")
    p_status.add_argument("names", nargs="*")
    p_status.add_argument("--json", action="store_true", help="machine-readable output")
    p_clean = sub.add_parser("cleanup", help="unlink segments no live process uses")
    p_clean.add_argument("names", nargs="*")
    p_clean.add_argument("--dry-run", action="store_true", help="only say what would go")
    p_clean.add_argument("--invalid", action="store_true",
                         help="also remove unreadable segments whose creator is gone")
    p_clean.add_argument("--force", action="store_true", help="remove segments in use too")
    p_recover = sub.add_parser("recover", help="reclaim the blocks of a dead producer/consumer")
    p_recover.add_argument("name")
    p_journal = sub.add_parser("journal", help="inspect, verify and replay journals")
    journal_cli.add_arguments(p_journal)
    sub.add_parser("fix", help="FIX 4.4 tools: python -m hftalloc fix venue --port PORT")
    args = parser.parse_args(argv)
    if args.command == "journal":
        return journal_cli.run(args)
    try:
        if args.command == "status":
            rows = [segment_status(n) for n in args.names] if args.names else statuses()
            if args.json:
                print(json.dumps([r.as_dict() for r in rows], indent=2, default=str))
            else:
                print(format_status(rows))
            return 0
        if args.command == "cleanup":
            removed = cleanup(args.names or None, dry_run=args.dry_run, force=args.force,
                              invalid=args.invalid)
            verb = "would remove" if args.dry_run else "removed"
            for name, reason in removed:
                print(f"{verb} {name} ({reason})")
            if not removed:
                print("nothing to clean up")
            return 0
        result = recover(args.name)
        print(json.dumps(result, indent=2, default=str))
        return 0
    except (IpcError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
