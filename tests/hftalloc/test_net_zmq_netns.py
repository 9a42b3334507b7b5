"""ZmqBridge between two network namespaces joined by a veth pair (Linux, root or
CAP_NET_ADMIN; skipped with the reason elsewhere).

A publisher peer runs in namespace ``a`` and a subscriber peer in namespace ``b``, each
``ip netns exec NS python tests/support/zmq_netns_peer.py ...`` with the installed
package. ZeroMQ over TCP does not lose frames to a lossy link (TCP retransmits); frames
are lost where PUB/SUB drops them: past the high-water mark while the subscriber is slow
(the link's loss makes it slower still) and while a connection is down. The tests
create those losses and check that the receiver's ``gaps`` equal exactly the payload
numbers it misses, and that everything published is either received or in ``gaps``.
"""

from __future__ import annotations

import json
import time

import pytest

zmq = pytest.importorskip("zmq")

from netns import NetnsPair, netns_unavailable  # noqa: E402
from zmq_netns_peer import Peer  # noqa: E402

pytestmark = pytest.mark.timeout(240)

SIZE = 1024  # payload bytes: each message spans a TCP segment or more
LOSS_PERCENT = 10
SMALL_TCP_BUFFERS = "4096 16384 65536"  # bounds what the kernel can hold between the peers


@pytest.fixture(scope="module")
def netns_available():
    reason = netns_unavailable()
    if reason is not None:
        pytest.skip(reason)


class Link:
    """Namespaces ``a`` and ``b`` joined by a veth pair, and the peers started in them."""

    def __init__(self, pair: NetnsPair) -> None:
        self.pair = pair
        self.peers: list[Peer] = []

    def start(self, side: str, role: str, where: str, hwm: int, heartbeat_ms: int = 0) -> Peer:
        peer = Peer(self.pair.run(side, Peer.argv(role, where, hwm, heartbeat_ms)))
        self.peers.append(peer)
        return peer

    def start_both(self, hwm: int, heartbeat_ms: int = 0) -> tuple[Peer, Peer]:
        pub = self.start("a", "pub", self.pair.addr["a"], hwm, heartbeat_ms)
        endpoint = pub.hello["endpoint"]
        assert endpoint.startswith(f"tcp://{self.pair.addr['a']}:")
        return pub, self.start("b", "sub", endpoint, hwm, heartbeat_ms)

    def shrink_tcp_buffers(self) -> int:
        """Make the kernel's TCP buffers small in both namespaces (where allowed); returns
        an upper bound of the bytes they can hold between the two peers."""
        total = 0
        for side in "ab":
            for name in ("tcp_rmem", "tcp_wmem"):
                self.pair.write_sysctl(side, f"net/ipv4/{name}", SMALL_TCP_BUFFERS)
                total += int(self.pair.read_sysctl(side, f"net/ipv4/{name}").split()[2])
        return total

    def rx_bytes(self, side: str) -> int:
        done = self.pair.exec(side, "ip", "-s", "-j", "link", "show", self.pair.dev[side])
        return int(json.loads(done.stdout)[0]["stats64"]["rx"]["bytes"])


@pytest.fixture
def link(netns_available):
    with NetnsPair() as pair:
        link = Link(pair)
        try:
            yield link
        finally:
            statuses = [peer.close() for peer in link.peers]
    assert statuses == [0] * len(statuses), [p.errors() for p in link.peers]


def sync(pub: Peer, sub: Peer) -> tuple[int, dict]:
    """Publish one small message at a time until the subscriber has received the last one
    published; then each message published so far is either received or counted."""
    deadline = time.monotonic() + 90
    while True:
        published = pub.request(op="publish", count=1, size=SIZE)["published"]
        state = sub.request(op="poll", until=published, timeout=0.5)
        if state["last"] == published:
            return published, state
        assert time.monotonic() < deadline, f"the subscriber never caught up: {state}"


def assert_accounted(published: int, state: dict) -> None:
    """Received + gaps == published (from the first message the subscription caught; the
    ones before it were published before the subscription reached the publisher), and the
    gaps are exactly the payload numbers that never arrived."""
    stats = state["stats"]
    assert state["received"] == stats["received"]
    assert state["received"] + stats["gaps"] == published - state["first"] + 1, state
    assert state["missing"] == stats["gaps"], state
    assert state["disorder"] == 0 and stats["anomalies"] == 0, state
    nothing_else = ("malformed", "multipart", "filtered", "topic_limit", "too_large", "errors",
                    "in_dropped", "in_rejected", "in_too_large", "in_invalid", "in_closed",
                    "in_errors")
    assert {k: stats[k] for k in nothing_else} == dict.fromkeys(nothing_else, 0), stats


def stream(pub: Peer, sub: Peer, count: int, pace_us: float = 0) -> None:
    """The subscriber polls while the publisher sends ``count`` messages, one every
    ``pace_us`` µs (0: as fast as it can)."""
    start = sub.request(op="stats")["last"]
    sub.send(op="poll", until=start + count, timeout=2.0)  # sync() waits for the rest
    pub.request(op="publish", count=count, size=SIZE, pace_us=pace_us)
    sub.reply()


def test_bus_traffic_crosses_the_veth_pair(link):
    pub, sub = link.start_both(hwm=100_000)
    sync(pub, sub)
    before = link.rx_bytes("b")
    stream(pub, sub, 2000)
    published, state = sync(pub, sub)
    assert_accounted(published, state)
    assert state["stats"]["gaps"] == 0  # 2000 frames stay below the high-water mark
    assert link.rx_bytes("b") - before > 2000 * SIZE  # all of it went over the veth pair


@pytest.mark.parametrize("loss", [0, LOSS_PERCENT], ids=["no-loss", f"{LOSS_PERCENT}%-loss"])
def test_drops_past_the_high_water_mark_are_counted_exactly(link, loss):
    buffered = link.shrink_tcp_buffers()
    hwm = 64
    pub, sub = link.start_both(hwm=hwm)
    sync(pub, sub)
    injector = None
    if loss:
        injector = link.pair.inject_loss(loss)
        if injector is None:
            pytest.skip(link.pair.loss_unavailable or "no loss mechanism")
    # a steady stream the subscriber reads as it comes: TCP retransmits what the link
    # loses, and what piles up past the high-water marks meanwhile is dropped
    stream(pub, sub, 2000, pace_us=100)
    published, state = sync(pub, sub)
    assert_accounted(published, state)
    # a subscriber that does not read while far more is published than the high-water
    # marks, ZeroMQ's batches and the kernel's buffers can hold: PUB must drop
    burst = 2 * hwm + 4 * (buffered + 4 * 8192) // SIZE + 100
    pub.request(op="publish", count=burst, size=SIZE)
    published, state = sync(pub, sub)
    assert_accounted(published, state)
    assert state["stats"]["gaps"] > 0
    if injector is not None:
        assert injector.dropped() > 0, injector.mechanism  # the link did lose packets


def test_gaps_across_a_reconnect(link):
    pub, sub = link.start_both(hwm=1000, heartbeat_ms=100)
    sync(pub, sub)
    stream(pub, sub, 200)
    link.pair.set_link("a", up=False)
    deadline = time.monotonic() + 60
    while sub.request(op="poll", until=2**63, timeout=0.2)["stats"]["disconnects"] == 0:
        assert time.monotonic() < deadline, "the heartbeat never noticed the dead link"
    pub.request(op="publish", count=100, size=SIZE)  # no connection: PUB drops all of them
    link.pair.set_link("a", up=True)
    published, state = sync(pub, sub)  # after ZeroMQ reconnected and resubscribed
    assert_accounted(published, state)
    assert state["stats"]["gaps"] >= 100 and state["stats"]["disconnects"] >= 1
