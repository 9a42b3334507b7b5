"""``python -m hftalloc fix venue``: run the exchange simulator as a FIX 4.4 acceptor.

    python -m hftalloc fix venue --port 9878 [--sender VENUE] [--allow CLIENT ...]
                                 [--store-dir DIR] [--durability flush] [--heartbeat 30]
                                 [--no-fill]

Prints ``listening on HOST:PORT`` once it accepts connections, and the venue and session
statistics on exit (SIGINT or SIGTERM).
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys

from hftalloc.fix.store import DURABILITY
from hftalloc.fix.venue import Venue, VenueApp
from hftalloc.loops import run

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m hftalloc fix",
                                     description="FIX 4.4 tools")
    sub = parser.add_subparsers(dest="command", required=True)
    venue = sub.add_parser("venue", help="exchange simulator (FIX 4.4 acceptor)")
    venue.add_argument("--host", default="127.0.0.1")
    venue.add_argument("--port", type=int, default=9878, help="0: any free port")
    venue.add_argument("--sender", default="VENUE", help="the venue's SenderCompID")
    venue.add_argument("--allow", nargs="*", default=None,
                       help="CompIDs allowed to log on (default: any)")
    venue.add_argument("--store-dir", default=None, help="file stores (default: memory)")
    venue.add_argument("--durability", choices=DURABILITY, default="flush",
                       help="file store durability (see docs/hftalloc-fix.md)")
    venue.add_argument("--heartbeat", type=int, default=30)
    venue.add_argument("--depth", type=int, default=10, help="market data levels per side")
    venue.add_argument("--no-fill", action="store_true",
                       help="acknowledge orders and leave them resting")
    venue.add_argument("--max-connections", type=int, default=64)
    return parser


async def _serve(args: argparse.Namespace) -> Venue:
    venue = Venue(host=args.host, port=args.port, sender=args.sender,
                  allowed=set(args.allow) if args.allow else None, store_dir=args.store_dir,
                  heartbeat=args.heartbeat, durability=args.durability,
                  app=VenueApp(depth=args.depth, fill=not args.no_fill))
    venue.acceptor.max_connections = args.max_connections
    port = await venue.start()
    print(f"listening on {args.host}:{port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await venue.stop()
    return venue


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        venue = run(_serve(args))
    except OSError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(venue.report(), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
