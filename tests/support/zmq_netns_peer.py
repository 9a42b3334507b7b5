"""A ZmqBridge peer driven over stdin/stdout (one JSON object a line), for tests that run
it in another network namespace (``ip netns exec NS python zmq_netns_peer.py ...``).

Child side (``main``)::

    zmq_netns_peer.py pub BIND_ADDRESS HWM HEARTBEAT_MS   # prints {"endpoint": ...}
    zmq_netns_peer.py sub ENDPOINT HWM HEARTBEAT_MS       # prints {"ready": true}

The publisher forwards topic ``t.x`` and numbers its payloads 1, 2, 3... in their first
8 bytes (so payload number == the bridge's sequence number on that stream). The
subscriber tracks, from the payloads alone, the first and last number received, how
many arrived, how many numbers are missing in between and how many came out of order.

Commands: ``{"op": "publish", "count": n, "size": s, "pace_us": p}`` (pub; ``pace_us``
optional: one message every p µs) -> ``{"published": last}``;
``{"op": "poll", "until": n, "timeout": t}`` (sub: poll until payload ``n`` or later
arrived) -> the subscriber's summary; ``{"op": "stats"}``; ``{"op": "exit"}``.
Parent side: :class:`Peer`.
"""

from __future__ import annotations

import json
import os
import select
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from typing import Any

INDEX = struct.Struct("<Q")
TOPIC = "t.x"
REPLY_TIMEOUT = 120.0


def _context(heartbeat_ms: int) -> Any:
    import zmq

    ctx = zmq.Context()
    if heartbeat_ms > 0:  # notice a dead link, reconnect quickly once it is back
        ctx.setsockopt(zmq.HEARTBEAT_IVL, heartbeat_ms)
        ctx.setsockopt(zmq.HEARTBEAT_TIMEOUT, 3 * heartbeat_ms)
        ctx.setsockopt(zmq.CONNECT_TIMEOUT, 3 * heartbeat_ms)
        ctx.setsockopt(zmq.RECONNECT_IVL, 50)
        ctx.setsockopt(zmq.RECONNECT_IVL_MAX, 200)
    return ctx


def _say(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


class _Tally:
    def __init__(self) -> None:
        self.first = self.last = self.received = self.missing = self.disorder = 0

    def __call__(self, msg: Any) -> None:
        (index,) = INDEX.unpack_from(msg.payload)
        if self.received and index <= self.last:
            self.disorder += 1
            return
        if self.received:
            self.missing += index - self.last - 1
        else:
            self.first = index
        self.last = index
        self.received += 1

    def summary(self) -> dict[str, int]:
        return {"first": self.first, "last": self.last, "received": self.received,
                "missing": self.missing, "disorder": self.disorder}


def main(argv: Sequence[str]) -> int:
    from hftalloc import MessageBus
    from hftalloc.net import ZmqBridge

    role, where, hwm, heartbeat_ms = argv[0], argv[1], int(argv[2]), int(argv[3])
    bus = MessageBus()
    bridge = ZmqBridge(bus, context=_context(heartbeat_ms), hwm=hwm)
    tally = _Tally()
    published = 0
    if role == "pub":
        _say({"endpoint": bridge.publish_to(f"tcp://{where}:*", "t.>")})
    else:
        bridge.subscribe_from(where, "t.>")
        bus.subscribe(TOPIC, tally)
        _say({"ready": True})
    for line in sys.stdin:
        cmd = json.loads(line)
        op = cmd["op"]
        if op == "publish":
            pad = bytes(max(0, cmd["size"] - INDEX.size))
            pace = cmd.get("pace_us", 0) / 1e6
            due = time.monotonic()
            for _ in range(cmd["count"]):
                if pace:
                    due += pace
                    ahead = due - time.monotonic()
                    if ahead > 0:
                        time.sleep(ahead)
                published += 1
                bus.publish(TOPIC, INDEX.pack(published) + pad)
            _say({"published": published, "sent": bridge.sent})
        elif op == "poll":
            bridge.poll_until(lambda until=cmd["until"]: tally.last >= until, cmd["timeout"])
            _say({**tally.summary(), "stats": bridge.stats()})
        elif op == "stats":
            _say({**tally.summary(), "stats": bridge.stats()})
        elif op == "exit":
            break
    bridge.close()
    bridge.context.destroy(linger=0)
    return 0


class Peer:
    """The parent's handle on one peer process: ``request(op=...)`` sends a command and
    returns the reply (``send`` + ``reply`` to overlap two peers)."""

    def __init__(self, argv: Sequence[str]) -> None:
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 (closed by close())
        self.proc = subprocess.Popen([*argv], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self._stderr, env=dict(os.environ), text=True)
        self.hello = self.reply()

    @staticmethod
    def argv(role: str, where: str, hwm: int, heartbeat_ms: int = 0) -> list[str]:
        return [sys.executable, os.path.abspath(__file__), role, where, str(hwm),
                str(heartbeat_ms)]

    def send(self, **cmd: Any) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()

    def reply(self, timeout: float = REPLY_TIMEOUT) -> dict[str, Any]:
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        line = self.proc.stdout.readline() if ready else ""
        if not line:
            raise AssertionError(f"peer {self.proc.args[-4:]} gave no reply (exit status "
                                 f"{self.proc.poll()}): {self.errors()}")
        reply: dict[str, Any] = json.loads(line)
        return reply

    def request(self, **cmd: Any) -> dict[str, Any]:
        self.send(**cmd)
        return self.reply()

    def errors(self) -> str:
        self._stderr.seek(0)
        return self._stderr.read().decode(errors="replace")[-4000:]

    def close(self) -> int | None:
        """Ask the peer to exit (killed if it does not); returns its exit status."""
        try:
            if self.proc.poll() is None:
                self.send(op="exit")
            return self.proc.wait(20)
        except (OSError, subprocess.TimeoutExpired, ValueError):
            self.proc.kill()
            self.proc.wait(10)
            return None
        finally:
            for stream in (self.proc.stdin, self.proc.stdout):
                if stream is not None:
                    stream.close()
            self._stderr.close()


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
