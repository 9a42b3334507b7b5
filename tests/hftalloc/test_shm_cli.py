"""``python -m hftalloc status|cleanup|recover`` on segments of live and killed processes."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import uuid

import pytest

from hftalloc.cli import main
from hftalloc.shm import Channel, ChannelReader, ChannelWriter
from hftalloc.shm import layout as L
from hftalloc.shm.segment import Segment, unlink
from hftalloc.shm.status import cleanup, recover, segment_status

pytestmark = pytest.mark.timeout(60)


# creates a channel, holds both roles, keeps one message and one claim, then waits to be killed
OWNER = r"""
import sys, time
from hftalloc.shm import Channel, ChannelReader, ChannelWriter
name = sys.argv[1]
ch = Channel(name, ring_capacity=8, blocks_per_class=4, num_classes=2)
w, r = ChannelWriter(name), ChannelReader(name)
kept = []
r.subscribe(">", lambda m: kept.append(m.retain()))
w.publish("a.b", b"kept")
r.poll()
w.publish("a.b", b"queued")
claim = w.claim("a.b", 100)
print("ready", flush=True)
time.sleep(60)
"""


@pytest.fixture
def name():
    value = f"test-{uuid.uuid4().hex[:12]}"
    yield value
    unlink(value)


@pytest.fixture
def owner(name):
    env = dict(os.environ)
    proc = subprocess.Popen([sys.executable, "-c", OWNER, name], stdout=subprocess.PIPE, env=env)
    ready, _, _ = select.select([proc.stdout], [], [], 20)
    assert ready and proc.stdout.readline() == b"ready\n"
    yield proc
    if proc.poll() is None:
        proc.kill()
    proc.wait(10)
    proc.stdout.close()


def kill(proc) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)


def test_status_of_a_live_segment(name, owner, capsys):
    status = segment_status(name)
    assert status.valid and status.in_use
    assert status.creator_pid == status.producer.pid == status.consumer.pid == owner.pid
    assert status.producer.alive and status.consumer.alive
    assert status.published == 2 and status.received == 1 and status.queued == 1
    assert status.blocks == {64: [2, 0, 1, 1], 128: [3, 1, 0, 0]}
    assert main(["status", name]) == 0
    out = capsys.readouterr().out
    assert f"hftalloc-{name}" in out and f"{owner.pid} alive" in out and "in use" in out
    assert main(["status", "--json", name]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["in_use"] and row["producer"]["pid"] == owner.pid
    assert cleanup([name]) == []  # in use: left alone


def test_killed_owner_shows_dead_then_recover_and_cleanup(name, owner, capsys):
    kill(owner)
    status = segment_status(name)
    assert not status.in_use and status.producer.alive is False
    assert main(["status", name]) == 0
    out = capsys.readouterr().out
    assert "DEAD" in out and "dead: cleanup removes it" in out and "recover" in out
    result = recover(name)
    assert result["consumer"] == {"reclaimed": 1, "requeued": 0}
    assert result["producer"] == {"reclaimed": 1, "lost": 1}  # the open claim, never committed
    assert result["blocks"] == {64: [3, 0, 1, 0], 128: [4, 0, 0, 0]}  # one message queued
    # the channel is usable again: a new consumer gets the queued message
    reader = ChannelReader(name)
    got = []
    reader.subscribe(">", lambda m: got.append(m.tobytes()))
    assert reader.poll() == 1 and got == [b"queued"]
    reader.close()
    assert main(["cleanup", "--dry-run", name]) == 0
    assert "would remove" in capsys.readouterr().out
    assert os.path.exists(f"/dev/shm/hftalloc-{name}")
    assert main(["cleanup", name]) == 0
    assert "removed" in capsys.readouterr().out
    assert not os.path.exists(f"/dev/shm/hftalloc-{name}")
    assert main(["status", name]) == 0 and "no segment" in capsys.readouterr().out


def test_recover_leaves_a_dead_producers_blocks_when_the_consumer_lives(name):
    with Channel(name, ring_capacity=8, blocks_per_class=4, num_classes=1):
        reader = ChannelReader(name)
        writer = ChannelWriter(name)
        writer.claim("a.b", 10)
        # simulate the producer's death: its pid slot points to a process that is gone
        proc = subprocess.Popen([sys.executable, "-c", "pass"])
        proc.wait(10)
        writer._core._store_signed(L.OFF_PRODUCER + L.ROLE_PID, proc.pid)
        result = recover(name)
        assert result["consumer"] == "alive: left alone"
        assert "left to the next producer" in result["producer"]
        assert result["blocks"][64] == [3, 1, 0, 0]
        assert reader.recover_producer() == 1  # the live consumer takes them back itself
        assert reader.owner_counts() == [[4, 0, 0, 0]]
        reader.close()
        writer._core._unbind()  # the "dead" writer's object: just drop its mapping


def test_invalid_segment_is_reported_and_removed_only_on_request(name, capsys):
    seg = Segment(name, create=True, size=4096)
    seg.close()
    status = segment_status(name)
    assert not status.valid and "not initialised" in status.problem
    assert main(["status", name]) == 0 and "INVALID" in capsys.readouterr().out
    assert cleanup([name]) == []
    assert cleanup([name], invalid=True) == [(f"hftalloc-{name}",
                                              f"invalid: {status.problem}")]
    assert not os.path.exists(f"/dev/shm/hftalloc-{name}")


def test_force_removes_a_live_segment_but_mappings_survive(name):
    with Channel(name, ring_capacity=8, blocks_per_class=4, num_classes=1) as ch:
        writer, reader = ChannelWriter(name), ChannelReader(name)
        assert cleanup([name]) == []
        assert cleanup([name], force=True) == [(f"hftalloc-{name}", "forced")]
        got = []
        reader.subscribe(">", lambda m: got.append(m.tobytes()))
        writer.publish("a.b", b"still works")
        reader.poll()
        assert got == [b"still works"]
        writer.close()
        reader.close()
        ch.close()  # unlink of a name that is already gone is fine


def test_cli_errors_are_reported(capsys):
    assert main(["recover", "test-does-not-exist"]) == 1
    assert "no segment" in capsys.readouterr().err
    assert main(["status", "bad/name"]) == 1
