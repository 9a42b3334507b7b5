"""Fuzzing shared-memory channels: a hostile process scribbles on a live segment.

* ``test_live_segment_fuzz``: a victim process runs a writer and a reader (publish,
  claim/commit/abort, poll, retain/release, wait, stats, re-attach, status, recover)
  while this process writes random values into random fields of the same segment
  (header cursors, descriptors, free rings, owner bytes, topic table, role slots,
  geometry, in any producer's lane) through ``pwrite``, and now and then truncates
  the file. The victim must
  neither crash nor hang, and may only raise errors of the package's hierarchy.
* ``test_attach_path_fuzz``: hypothesis mutates the header of a valid segment; every
  way in (reader, writer, status, recover) either works or raises a clean error.

Both victims are child interpreters (a crash fails the test). Longer runs:
``SHM_FUZZ_SECONDS=120`` (live fuzz) and ``SHM_FUZZ_EXAMPLES=5000`` (attach fuzz).
"""

from __future__ import annotations

import json
import os
import random
import select
import struct
import subprocess
import sys
import time
import uuid

import pytest

from hftalloc.shm import layout as L
from hftalloc.shm.segment import unlink

FUZZ_SECONDS = float(os.environ.get("SHM_FUZZ_SECONDS", "8"))
ATTACH_EXAMPLES = int(os.environ.get("SHM_FUZZ_EXAMPLES", "300"))
GEOMETRY = {"ring_capacity": 16, "blocks_per_class": 8, "num_classes": 3, "max_topics": 8,
            "producers": 2}

pytestmark = pytest.mark.timeout(FUZZ_SECONDS * 4 + 120)

VICTIM = r"""
import json, os, random, sys, time
from coreallocs.errors import AllocatorError
from hftalloc.shm import Channel, ChannelReader, ChannelWriter
from hftalloc.shm.status import recover, segment_status

prefix, geometry, seed = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3])
rng = random.Random(seed)
counts = {}

def note(exc):
    if not isinstance(exc, AllocatorError):   # anything else is a defect
        raise exc
    counts[type(exc).__name__] = counts.get(type(exc).__name__, 0) + 1

def attempt(call, *args, **kwargs):
    try:
        return call(*args, **kwargs)
    except Exception as exc:
        note(exc)

def say(**kw):
    print(json.dumps(kw), flush=True)

round_no = 0
while True:
    line = sys.stdin.readline()
    if not line or line.strip() == "stop":
        break
    name = f"{prefix}-{round_no}"
    ch = Channel(name, **geometry)
    w = ChannelWriter(name, policy=rng.choice(["raise", "drop", "block"]), timeout=0.002)
    w2 = ChannelWriter(name, policy=rng.choice(["raise", "drop", "block"]), timeout=0.002)
    r = ChannelReader(name)
    kept, views = [], []
    def on_msg(m):
        m.payload[:1].tobytes()
        if rng.random() < 0.2:
            kept.append(m.retain())
        elif rng.random() < 0.05:
            views.append(m.payload)          # a leaked view: the block is held back
    r.subscribe("t.>", on_msg)
    say(ready=ch.name)
    deadline = time.monotonic() + 0.25
    ops = 0
    while time.monotonic() < deadline:
        ops += 1
        op = rng.random()
        if op < 0.2:
            attempt(w.publish, f"t.{rng.randrange(12)}", bytes(rng.randrange(300)))
        elif op < 0.3:
            attempt(w2.publish_many, f"t.{rng.randrange(12)}",
                    [bytes(rng.randrange(300)) for _ in range(rng.randrange(1, 6))])
        elif op < 0.45:
            c = attempt(w.claim, f"t.{rng.randrange(4)}", rng.randrange(200))
            if c is not None:
                if rng.random() < 0.8:
                    attempt(c.commit)
                else:
                    attempt(c.abort)
        elif op < 0.65:
            attempt(r.poll, rng.randrange(1, 20))
        elif op < 0.72:
            attempt(r.poll_batch, lambda ms: [on_msg(m) for m in ms], rng.randrange(1, 20))
        elif op < 0.75:
            attempt(r.poll_copies, [], rng.randrange(1, 20))
        elif op < 0.85:
            while kept and rng.random() < 0.7:
                attempt(kept.pop().release)
            if rng.random() < 0.3:
                views.clear()
        elif op < 0.9:
            attempt(r.wait, 0.0005, 0)
        elif op < 0.95:
            attempt(r.stats)
            attempt(w.stats)
        elif rng.random() < 0.5:
            attempt(w.recover_consumer)
        elif rng.random() < 0.5:
            attempt(r.recover_producer)
        else:
            attempt(r.producer_info)
    while kept:
        attempt(kept.pop().release)
    views.clear()
    attempt(w.close)
    attempt(w2.close)
    attempt(r.close)
    # the attach path on the mutated segment: new endpoints, status, recovery
    for endpoint in (ChannelWriter, ChannelReader):
        e = attempt(endpoint, name, attach_timeout=0.05)
        if e is not None:
            attempt(e.close)
    status = segment_status(name)
    attempt(recover, name, timeout=0.05)
    ch.close()
    say(done=ch.name, ops=ops, valid=status.valid)
    round_no += 1
say(counts=counts)
"""


def _values(rng: random.Random, bound: int) -> int:
    return rng.choice([0, 1, 2, bound - 1, bound, bound + 1, 2**31, 2**32 - 1, 2**63,
                       2**64 - 1, rng.randrange(2**64), rng.randrange(bound + 3)])


def mutate(fd: int, layout: L.Layout, rng: random.Random) -> str:
    """Write one random value into one random field of the segment (of a random
    producer's lane); returns the field."""
    bpc, ring = layout.blocks_per_class, layout.ring_capacity
    lane = layout.lane_offset(rng.randrange(layout.producers))
    field = rng.choice(["cursor", "cursor", "descriptor", "descriptor", "free", "free", "owner",
                        "owner", "topic", "role", "geometry", "raw", "truncate"])
    if field == "cursor":
        off = rng.choice([L.OFF_HEAD, L.OFF_TAIL, L.OFF_NEXT_SEQ, L.OFF_LAST_SEQ,
                          L.OFF_TOPIC_COUNT, L.OFF_PUBLISHED, L.OFF_RECEIVED, L.OFF_GAPS,
                          L.OFF_SPARES, L.OFF_LOST] +
                         [L.OFF_FREE_CURSORS + c * L.LINE + k for c in range(layout.num_classes)
                          for k in (0, 64)])
        os.pwrite(fd, struct.pack("<Q", _values(rng, ring)), lane + off)
        if rng.random() < 0.1:
            os.pwrite(fd, struct.pack("<I", rng.randrange(3)), L.OFF_WAITING)
    elif field == "descriptor":
        d = lane + layout.ring_offset + rng.randrange(ring) * L.DESC_SIZE
        part = rng.randrange(6)
        if part < 2:
            os.pwrite(fd, struct.pack("<Q", _values(rng, 2**20)), d + 8 * part)
        elif part == 5:  # a plausible block reference: class and index in range, or just over
            blk = (rng.randrange(layout.num_classes + 1) << 24) | rng.randrange(bpc + 1)
            os.pwrite(fd, struct.pack("<I", blk), d + 24)
        else:
            os.pwrite(fd, struct.pack("<I", _values(rng, 2**12) & 0xFFFFFFFF), d + 4 * (part + 2))
    elif field == "free":
        c = rng.randrange(layout.num_classes)
        off = lane + layout.free_offset + 4 * (c * layout.free_capacity + rng.randrange(
            layout.free_capacity))
        os.pwrite(fd, struct.pack("<I", rng.choice([rng.randrange(bpc + 2), 2**32 - 1])), off)
    elif field == "owner":
        g = rng.randrange(layout.total_blocks)
        os.pwrite(fd, bytes([rng.choice([0, 1, 2, 3, 4, 255])]), lane + layout.owners_offset + g)
    elif field == "topic":
        t = rng.randrange(layout.max_topics)
        entry = lane + layout.topics_offset + t * L.TOPIC_ENTRY
        if rng.random() < 0.5:
            os.pwrite(fd, struct.pack("<H", rng.choice([0, 1, 3, 254, 255, 65535])), entry)
        else:
            os.pwrite(fd, bytes(rng.randrange(256) for _ in range(4)), entry + 2)
    elif field == "role":
        base = rng.choice([lane + L.OFF_PRODUCER, L.OFF_CONSUMER])
        off = base + 8 * rng.randrange(8)
        os.pwrite(fd, struct.pack("<q", rng.choice([0, -1, 1, os.getpid(), -os.getpid(),
                                                    2**31, -(2**62)])), off)
    elif field == "geometry":
        off = rng.choice([L.OFF_MAGIC, L.OFF_VERSION, L.OFF_RING_CAPACITY, L.OFF_NUM_CLASSES,
                          L.OFF_MIN_SIZE, L.OFF_BLOCKS_PER_CLASS, L.OFF_MAX_TOPICS,
                          L.OFF_FREE_CAPACITY, L.OFF_READY, L.OFF_TOTAL_SIZE, L.OFF_POOLS,
                          L.OFF_PRODUCERS, L.OFF_LANE_SIZE, L.OFF_POOLS_END])
        os.pwrite(fd, struct.pack("<I", _values(rng, 64) & 0xFFFFFFFF), off)
    elif field == "raw":
        off = lane + rng.randrange(layout.pools_offset)
        os.pwrite(fd, bytes(rng.randrange(256) for _ in range(rng.randrange(1, 16))), off)
    else:
        if rng.random() < 0.05:  # rare: most rounds should exercise the other fields
            os.ftruncate(fd, rng.choice([0, 4096, layout.pools_offset, layout.total_size // 2]))
        else:
            field = "none"
    return field


def test_live_segment_fuzz():
    prefix = f"fz-{uuid.uuid4().hex[:8]}"
    layout = L.Layout(**GEOMETRY)
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    proc = subprocess.Popen([sys.executable, "-X", "faulthandler", "-c", VICTIM, prefix,
                             json.dumps(GEOMETRY), str(seed)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ))
    fields: dict[str, int] = {}
    rounds = 0
    end = time.monotonic() + FUZZ_SECONDS

    def read_line(timeout: float) -> dict:
        ready, _, _ = select.select([proc.stdout], [], [], timeout)
        assert ready, f"victim hung (seed {seed}, round {rounds})"
        line = proc.stdout.readline()
        assert line, f"victim died ({proc.wait(5)}), seed {seed}: {proc.stderr.read()}"
        return json.loads(line)

    try:
        while time.monotonic() < end:
            proc.stdin.write("go\n")
            proc.stdin.flush()
            name = read_line(10)["ready"]
            fd = os.open(f"/dev/shm/{name}", os.O_RDWR)
            try:
                while True:
                    if select.select([proc.stdout], [], [], 0.0002)[0]:
                        break
                    field = mutate(fd, layout, rng)
                    fields[field] = fields.get(field, 0) + 1
            finally:
                os.close(fd)
            done = read_line(10)
            assert done["done"] == name and done["ops"] > 0
            rounds += 1
        proc.stdin.write("stop\n")
        proc.stdin.flush()
        counts = read_line(10)["counts"]
        assert proc.wait(10) == 0, proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
        for i in range(rounds + 2):
            unlink(f"{prefix}-{i}")
    mutations = sum(n for f, n in fields.items() if f != "none")
    print(f"\nlive fuzz: seed {seed}, {rounds} rounds, {mutations} mutations {fields}, "
          f"errors raised {counts}")
    assert rounds >= 3 and mutations >= 1000
    assert counts.get("SegmentCorrupted", 0) > 0  # the mutations were seen and refused


ATTACH_VICTIM = r"""
import os, struct, sys
from hypothesis import given, settings, strategies as st, HealthCheck
from coreallocs.errors import AllocatorError
from hftalloc.shm import Channel, ChannelReader, ChannelWriter
from hftalloc.shm import layout as L
from hftalloc.shm.status import recover, segment_status

prefix, examples = sys.argv[1], int(sys.argv[2])
GEOMETRY = dict(ring_capacity=8, blocks_per_class=4, num_classes=2, max_topics=4, producers=2)
LANE = L.Layout(**GEOMETRY).lane_size
FIELDS = [L.OFF_PRODUCERS, L.OFF_LANE_SIZE, L.OFF_POOLS_END, L.OFF_PRODUCER + L.ROLE_SESSION,
          LANE + L.OFF_PRODUCER, LANE + L.OFF_PRODUCER + 24, LANE + L.OFF_HEAD,
          LANE + L.OFF_TAIL, LANE + L.OFF_TOPIC_COUNT, LANE + L.OFF_FREE_CURSORS,
          LANE + L.OFF_FREE_CURSORS + 64, LANE + L.OFF_SPARES, LANE + L.OFF_LOST,
          L.OFF_SPARES, L.OFF_LOST,
          L.OFF_MAGIC, L.OFF_VERSION, L.OFF_HEADER_SIZE, L.OFF_READY, L.OFF_TOTAL_SIZE,
          L.OFF_RING_CAPACITY, L.OFF_NUM_CLASSES, L.OFF_MIN_SIZE, L.OFF_BLOCKS_PER_CLASS,
          L.OFF_MAX_TOPICS, L.OFF_FREE_CAPACITY, L.OFF_RING, L.OFF_TOPICS, L.OFF_FREE,
          L.OFF_OWNERS, L.OFF_POOLS, L.OFF_PRODUCER, L.OFF_PRODUCER + 24, L.OFF_CONSUMER,
          L.OFF_CONSUMER + 24, L.OFF_HEAD, L.OFF_TAIL, L.OFF_TOPIC_COUNT, L.OFF_FREE_CURSORS,
          L.OFF_FREE_CURSORS + 64]
counter = [0]
outcomes = {}

def clean(call, *args, **kw):
    try:
        result = call(*args, **kw)
    except AllocatorError as exc:
        outcomes[type(exc).__name__] = outcomes.get(type(exc).__name__, 0) + 1
        return None
    outcomes["ok"] = outcomes.get("ok", 0) + 1
    return result

mutation = st.tuples(st.sampled_from(FIELDS), st.sampled_from([4, 8]),
                     st.one_of(st.integers(0, 64), st.sampled_from([2**31, 2**32 - 1, 2**63,
                                                                     2**64 - 1]),
                               st.integers(0, 2**64 - 1)))

@settings(max_examples=examples, deadline=None, database=None,
          suppress_health_check=list(HealthCheck))
@given(mutations=st.lists(mutation, min_size=1, max_size=4), size=st.sampled_from(
    [None, 0, 100, 4096, 6000]))
def attach(mutations, size):
    counter[0] += 1
    name = f"{prefix}-{counter[0]}"
    ch = Channel(name, **GEOMETRY)
    try:
        buf = ch.segment.buffer
        for off, width, value in mutations:
            struct.pack_into("<Q" if width == 8 else "<I", buf, off,
                             value & (2**(8 * width) - 1))
        if size is not None:
            os.truncate(f"/dev/shm/{ch.name}", size)
        w = clean(ChannelWriter, name, policy="raise", attach_timeout=0.01)
        w2 = clean(ChannelWriter, name, policy="drop", attach_timeout=0.01)
        r = clean(ChannelReader, name, attach_timeout=0.01)
        if w is not None:
            clean(w.publish, "t.a", b"x" * 10)
            clean(w.claim, "t.b", 70)
        if w2 is not None:
            clean(w2.publish_many, "t.c", [b"y" * 20] * 3)
        if r is not None:
            r.subscribe(">", lambda m: m.tobytes())
            clean(r.poll)
            clean(r.poll_batch, lambda ms: [m.tobytes() for m in ms])
            clean(r.poll_copies, [])
            clean(r.recover_producers)
        again = clean(Channel.open_or_create, name, timeout=0.01, **GEOMETRY)
        if again is not None:
            again.close()
        for e in (w, w2, r):
            if e is not None:
                clean(e.close)
        segment_status(name)
        clean(recover, name, timeout=0.01)
    finally:
        ch.close()

attach()
print(outcomes)
print("OK")
"""


def test_attach_path_fuzz():
    prefix = f"fa-{uuid.uuid4().hex[:8]}"
    proc = subprocess.run([sys.executable, "-X", "faulthandler", "-c", ATTACH_VICTIM, prefix,
                           str(ATTACH_EXAMPLES)], capture_output=True, text=True,
                          timeout=ATTACH_EXAMPLES + 120, env=dict(os.environ))
    assert proc.returncode == 0, f"attach fuzz died ({proc.returncode}):\n{proc.stdout}\n" \
                                 f"{proc.stderr[-4000:]}"
    assert proc.stdout.strip().endswith("OK"), proc.stdout
    print(f"\nattach fuzz: {ATTACH_EXAMPLES} examples, outcomes {proc.stdout.splitlines()[0]}")
    assert "SegmentError" in proc.stdout or "SegmentCorrupted" in proc.stdout


def test_fuzz_helpers_cover_every_field():
    """The mutator reaches every field kind (so the live fuzz is not silently narrow)."""
    layout = L.Layout(**GEOMETRY)
    rng = random.Random(1)
    path = f"/dev/shm/hftalloc-fzh-{uuid.uuid4().hex[:8]}"
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
    try:
        os.ftruncate(fd, layout.total_size)
        seen = {mutate(fd, layout, rng) for _ in range(2000)}
    finally:
        os.close(fd)
        os.unlink(path)
    assert seen >= {"cursor", "descriptor", "free", "owner", "topic", "role", "geometry",
                    "raw", "truncate"}
