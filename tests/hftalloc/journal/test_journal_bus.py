"""The journal and the bus: recording, replaying, tailing a writer in another process."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time

import pytest

from hftalloc import MessageBus
from hftalloc.journal import JournalReader, JournalWriter, Recorder, replay

SEGMENT = 64 * 1024


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_recorder_reconciles_with_the_bus(tmp_path, mode):
    import asyncio

    path = str(tmp_path / "j")
    w = JournalWriter(path, segment_size=SEGMENT)
    bus = MessageBus(mode=mode, policy="block" if mode == "async" else "raise")
    stamps: list[tuple[int, int]] = []
    bus.subscribe("md.>", lambda msg: stamps.append((msg.seq, msg.publish_ns)))
    rec = Recorder(bus, w, ["md.quote.*", "md.trade.*"])

    async def drive():
        for i in range(500):
            bus.publish(["md.quote.A", "md.trade.A", "md.other.A", "ord.new.A"][i % 4],
                        i.to_bytes(4, "little") * (i % 20))
            if i % 50 == 0:
                await asyncio.sleep(0)
        await bus.join()

    if mode == "async":
        asyncio.run(drive())
    else:
        for i in range(500):
            bus.publish(["md.quote.A", "md.trade.A", "md.other.A", "ord.new.A"][i % 4],
                        i.to_bytes(4, "little") * (i % 20))
    stats = bus.stats()
    routed = {t: s.delivered for t, s in stats.topics.items()}
    # each md.quote/md.trade message went to two subscribers: ours and the recorder
    assert rec.recorded == 250 and rec.failed == 0
    assert routed["md.quote.A"] + routed["md.trade.A"] == 2 * rec.recorded
    w.close()
    recs = list(JournalReader(path))
    assert [r.topic for r in recs] == ["md.quote.A", "md.trade.A"] * 125
    by_bus_seq = dict(stamps)
    wanted = [i for i in range(500) if i % 4 < 2]
    assert [bytes(r) for r in recs] == [i.to_bytes(4, "little") * (i % 20) for i in wanted]
    # the recorded timestamps are the bus's own publish stamps
    assert [r.timestamp for r in recs] == [by_bus_seq[i + 1] for i in wanted]
    rec.stop()
    assert all(not s.active for s in rec.subscriptions)


def test_replay_as_fast_as_possible_and_paced(tmp_path):
    path = str(tmp_path / "j")
    with JournalWriter(path, segment_size=SEGMENT) as w:
        for i in range(300):
            w.append(f"md.{'ab'[i % 2]}", bytes([i % 256]) * (i % 70), 1_000_000 * i)
    bus = MessageBus()
    got = []
    bus.subscribe(">", lambda msg: got.append((msg.topic, msg.tobytes())))
    stats = replay(path, bus)
    want = [(f"md.{'ab'[i % 2]}", bytes([i % 256]) * (i % 70)) for i in range(300)]
    assert got == want and stats.published == 300 and stats.dropped == 0
    got.clear()
    stats = replay(path, bus, topics="md.a", start_seq=101)
    assert got == want[100::2]
    got.clear()
    start = time.perf_counter()
    stats = replay(path, bus, speed=10.0, topics="md.a", start_seq=201)   # 100 ms of records
    took = time.perf_counter() - start
    assert got == want[200::2] and stats.published == 50
    assert took >= 0.0096       # paced: not before the recorded span (98 ms / 10, less 0.1 ms)
    with pytest.raises(ValueError):
        replay(path, bus, speed=0)


@pytest.mark.parametrize("speed", [None, 50.0])
def test_replay_keeps_the_original_timestamps(tmp_path, speed):
    path = str(tmp_path / "j")
    w = JournalWriter(path, segment_size=SEGMENT)
    live = MessageBus()
    original = []
    live.subscribe("md.>", lambda msg: original.append((msg.topic, msg.publish_ns,
                                                         msg.tobytes())))
    Recorder(live, w, "md.>")
    for i in range(200):
        live.publish(f"md.{i % 3}", bytes([i]) * (i % 9))
        if i % 50 == 0:
            time.sleep(0.001)
    w.close()
    again = MessageBus()
    seen = []
    again.subscribe("md.>", lambda msg: seen.append((msg.topic, msg.publish_ns, msg.tobytes())))
    stats = replay(path, again, speed=speed)
    assert stats.original_timestamps and stats.published == 200
    assert seen == original


def test_replay_counts_drops(tmp_path):
    path = str(tmp_path / "j")
    with JournalWriter(path, segment_size=SEGMENT) as w:
        for _ in range(20):
            w.append("md.x", b"x" * 60)
    bus = MessageBus(policy="drop", blocks_per_class=4)
    held = []
    bus.subscribe(">", lambda msg: held.append(msg.retain()) if len(held) < 4 else None)
    stats = replay(path, bus)
    assert stats.published + stats.dropped == 20 and stats.dropped == 16
    assert bus.stats().dropped == 16


WRITER = textwrap.dedent("""
    import sys, time
    from hftalloc.journal import JournalWriter
    w = JournalWriter(sys.argv[1], segment_size=64 * 1024, max_payload=2000)
    print("ready", flush=True)
    for i in range(1, 3001):
        w.append("live.x", bytes([i % 256]) * (i % 1000))
        if i % 100 == 0:
            time.sleep(0.002)
    w.append("live.end", b"")
    w.close()
""")


def test_tail_follows_a_writer_in_another_process(tmp_path):
    path = str(tmp_path / "j")
    proc = subprocess.Popen([sys.executable, "-c", WRITER, path], stdout=subprocess.PIPE,
                            text=True, env=dict(os.environ))
    try:
        assert proc.stdout.readline().strip() == "ready"
        reader = JournalReader(path)
        seen = []
        for rec in reader.tail(timeout=30):
            if rec.topic == "live.end":
                break
            seen.append((rec.seq, bytes(rec)))
        assert [s for s, _ in seen] == list(range(1, 3001))
        assert all(data == bytes([s % 256]) * (s % 1000) for s, data in seen)
        assert len(reader.numbers) > 10      # it followed the writer across segment rolls
    finally:
        proc.wait(timeout=30)
    assert proc.returncode == 0


def test_tail_ends_after_an_idle_timeout(tmp_path):
    path = str(tmp_path / "j")
    with JournalWriter(path, segment_size=SEGMENT) as w:
        w.append("a.b", b"1")
        start = time.monotonic()
        assert [r.seq for r in JournalReader(path).tail(timeout=0.05)] == [1]
        assert time.monotonic() - start >= 0.05
