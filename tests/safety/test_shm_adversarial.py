"""Hostile peers and misuse of shared-memory channels: never a crash, a clean error.

A peer is any process that can open the segment (the same user), or another user who
plants a file under a channel's predictable name. Cases that could crash the
interpreter run in a child interpreter (a crash fails the test instead of pytest).
"""

from __future__ import annotations

import copy
import os
import pickle
import signal
import stat
import struct
import subprocess
import sys
import textwrap
import uuid

import pytest

from hftalloc.errors import MessageStateError, SegmentCorrupted, SegmentError
from hftalloc.shm import Channel, ChannelReader, ChannelWriter
from hftalloc.shm import layout as L
from hftalloc.shm.segment import unlink
from hftalloc.shm.status import segment_status

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def name():
    value = f"adv-{uuid.uuid4().hex[:12]}"
    yield value
    try:
        unlink(value)
    except SegmentError:
        pass
    path = f"/dev/shm/hftalloc-{value}"
    if os.path.lexists(path):
        os.unlink(path)


PRELUDE = """
import os, struct, sys
from hftalloc.errors import ChannelFull, SegmentCorrupted, SegmentError
from hftalloc.shm import Channel, ChannelReader, ChannelWriter
from hftalloc.shm import _core
from hftalloc.shm import layout as L
name = sys.argv[1] if len(sys.argv) > 1 else ""
path = "/dev/shm/hftalloc-" + name
"""


def run_child(code: str, *args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    """Run PRELUDE + ``code`` in a fresh interpreter (faulthandler on, like pytest)."""
    return subprocess.run([sys.executable, "-X", "faulthandler", "-c",
                           PRELUDE + textwrap.dedent(code), *args], capture_output=True,
                          text=True, timeout=timeout, env=dict(os.environ))


def assert_ok(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 0, f"child died ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    assert proc.stdout.strip().endswith("OK"), proc.stdout + proc.stderr




# -- a. truncation of the segment file (SIGBUS) -----------------------------------------------
def test_truncated_segment_raises_instead_of_sigbus(name):
    proc = run_child("""
    ch = Channel(name, ring_capacity=64, blocks_per_class=64, num_classes=4)
    w = ChannelWriter(name, policy="raise")
    r = ChannelReader(name)
    seen = []
    r.subscribe(">", lambda m: seen.append(m.tobytes()))
    w.publish("t.a", b"before")
    assert r.poll() == 1 and seen == [b"before"]
    fd = os.open(path, os.O_RDWR)
    os.ftruncate(fd, 4096)          # a peer cuts the file: ring and pools are gone
    os.close(fd)
    # the reader's header page is still in the file: nothing new to read, no error yet
    assert r.poll() == 0 and not r.truncated
    for call in (lambda: w.publish("t.a", b"x" * 100), lambda: w.claim("t.a", 10),
                 w.owner_counts, r.owner_counts, r.poll, lambda: r.wait(0), r.stats):
        try:
            call()
        except SegmentCorrupted as exc:
            assert "truncated" in str(exc), exc
        else:
            raise AssertionError(f"{call} did not raise")
    assert w.truncated and r.truncated  # (the creator's own mapping was not touched)
    assert _core.guard_repairs() >= 1
    w.close()
    r.close()
    ch.close()
    print("OK")
    """, name)
    assert_ok(proc)


def test_truncation_while_the_consumer_reads_a_payload(name):
    """The fault happens inside a subscriber (Python code reading the mapping)."""
    proc = run_child("""
    ch = Channel(name, ring_capacity=64, blocks_per_class=64, num_classes=4)
    w = ChannelWriter(name, policy="raise")
    r = ChannelReader(name)
    got = []
    def on_msg(m):
        fd = os.open(path, os.O_RDWR)
        os.ftruncate(fd, 4096)
        os.close(fd)
        got.append(bytes(m.payload))     # faults: reads zeros after the repair
    r.subscribe(">", on_msg)
    w.publish("t.a", b"payload!")
    try:
        r.poll()
    except SegmentCorrupted as exc:
        assert "truncated" in str(exc)
    else:
        raise AssertionError("poll did not raise")
    assert got == [bytes(8)]
    r.close()
    w.close()
    ch.close()
    print("OK")
    """, name)
    assert_ok(proc)


def test_status_of_a_truncated_segment_is_invalid_not_a_crash(name):
    proc = run_child("""
    from hftalloc.shm.status import segment_status
    ch = Channel(name, ring_capacity=64, blocks_per_class=64, num_classes=4)
    fd = os.open(path, os.O_RDWR)
    os.ftruncate(fd, 4096)
    os.close(fd)
    st = segment_status(name)
    assert not st.valid and "bytes" in st.problem, st
    try:
        ChannelReader(name)
    except SegmentError as exc:
        print(exc)
    else:
        raise AssertionError("attached to a truncated segment")
    ch.close()
    print("OK")
    """, name)
    assert_ok(proc)


@pytest.mark.skipif("libasan" in os.environ.get("LD_PRELOAD", ""),
                    reason="under AddressSanitizer the deliberate SIGBUS is ASan's to report")
def test_sigbus_outside_channel_mappings_still_kills_the_process(tmp_path, name):
    """The guard only repairs its own mappings: any other SIGBUS keeps its meaning."""
    victim = tmp_path / "victim"
    proc = run_child("""
    import mmap
    ch = Channel(name, ring_capacity=4, blocks_per_class=2, num_classes=1)
    r = ChannelReader(name)             # the guard is installed now
    with open(sys.argv[2], "w+b") as f:
        f.truncate(8192)
        m = mmap.mmap(f.fileno(), 8192)
        f.truncate(0)
        print("touching", flush=True)
        m[5000]                          # SIGBUS outside every channel mapping
    print("survived")
    """, name, str(victim))
    assert proc.returncode == -signal.SIGBUS, (proc.returncode, proc.stdout, proc.stderr)
    assert "touching" in proc.stdout and "survived" not in proc.stdout
    assert "Bus error" in proc.stderr  # faulthandler (installed before us) still reported it


# -- b. free rings and descriptors that lie -------------------------------------------------------
def test_block_pushed_back_repeatedly_is_never_handed_out_twice(name):
    proc = run_child("""
    ch = Channel(name, ring_capacity=16, blocks_per_class=8, num_classes=1)
    lay = ch.layout
    buf = ch.segment.buffer
    w = ChannelWriter(name, policy="raise")
    claims, errors = [], 0
    for _ in range(5000):
        # the hostile peer puts block 0 back into the free ring and marks it free again
        fh = struct.unpack_from("<Q", buf, L.OFF_FREE_CURSORS)[0]
        struct.pack_into("<I", buf, lay.free_offset + 4 * (fh % lay.free_capacity), 0)
        struct.pack_into("<Q", buf, L.OFF_FREE_CURSORS, fh + 1)
        buf[lay.owners_offset] = L.FREE
        try:
            c = w.claim("t.a", 8)
        except (SegmentCorrupted, ChannelFull):
            errors += 1
            continue
        if c is not None:
            claims.append(c)
    import numpy as np
    ptrs = {np.frombuffer(c, np.uint8).ctypes.data for c in claims}
    assert len(ptrs) == len(claims) <= lay.blocks_per_class, (len(ptrs), len(claims))
    assert errors > 0
    for c in claims:
        c.abort()
    del claims, c
    assert w.claims_live == 0 and w.spares <= lay.blocks_per_class
    w.close()
    ch.close()
    print("OK")
    """, name)
    assert_ok(proc)


def test_descriptor_for_a_block_the_consumer_holds_is_refused(name):
    ch = Channel(name, ring_capacity=8, blocks_per_class=4, num_classes=1)
    w, r = ChannelWriter(name, policy="raise"), ChannelReader(name)
    kept = []
    r.subscribe(">", lambda m: kept.append(m.retain()))
    w.publish("t.a", b"one")
    r.poll()
    block = struct.unpack_from("<I", ch.segment.buffer, ch.layout.ring_offset + 24)[0]
    # the peer queues the same block again, owner byte and all
    w.publish("t.a", b"two")
    struct.pack_into("<I", ch.segment.buffer, ch.layout.ring_offset + 32 + 24, block)
    ch.segment.buffer[ch.layout.owners_offset + (block & 0xFFFFFF)] = L.QUEUED
    with pytest.raises(SegmentCorrupted, match="not a queued block"):
        r.poll()
    assert kept[0].tobytes() == b"one"
    kept.pop().release()
    w.close()
    ch.close()


def test_poll_copies_keeps_what_it_copied_before_a_lying_descriptor(name):
    ch = Channel(name, ring_capacity=8, blocks_per_class=4, num_classes=1)
    w, r = ChannelWriter(name, policy="raise"), ChannelReader(name)
    for payload in (b"one", b"two", b"three"):
        w.publish("t.a", payload)
    # the peer says the second message is 1 MiB long, far past its 64 B block
    struct.pack_into("<I", ch.segment.buffer, ch.layout.ring_offset + 32 + 20, 1 << 20)
    out: list = []
    with pytest.raises(SegmentCorrupted, match="not a block of the channel"):
        r.poll_copies(out)
    assert out == [("t.a", [b"one"], 3)] and r.delivered == 1
    w.close()
    r.close()
    ch.close()


def test_forged_topic_table_and_cursors_raise(name):
    ch = Channel(name, ring_capacity=8, blocks_per_class=4, num_classes=1, max_topics=4)
    w, r = ChannelWriter(name, policy="raise"), ChannelReader(name)
    r.subscribe(">", lambda m: None)
    w.publish("t.a", b"x")
    buf = ch.segment.buffer
    struct.pack_into("<Q", buf, L.OFF_TOPIC_COUNT, 2**40)      # a huge topic count
    with pytest.raises(SegmentCorrupted):
        w.publish("t.new", b"x")
    struct.pack_into("<I", buf, ch.layout.ring_offset + 16, 3)  # topic id past the table
    with pytest.raises(SegmentCorrupted):
        r.poll()
    struct.pack_into("<I", buf, ch.layout.ring_offset + 16, 0)
    assert r.poll() == 1
    struct.pack_into("<Q", buf, L.OFF_HEAD, 2**63)              # head far ahead of tail
    with pytest.raises(SegmentCorrupted, match="head"):
        r.poll()
    w.close()
    r.close()
    ch.close()


# -- c. segments planted by another user ----------------------------------------------------------
def test_world_writable_segment_is_refused(name):
    ch = Channel(name, ring_capacity=4, blocks_per_class=2, num_classes=1)
    path = f"/dev/shm/hftalloc-{name}"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600  # created private
    os.chmod(path, 0o666)
    for endpoint in (ChannelReader, ChannelWriter):
        with pytest.raises(SegmentError, match="mode 0o666"):
            endpoint(name)
    status = segment_status(name)
    assert not status.valid and "0o666" in status.problem
    ch.close()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give a file to another user")
def test_segment_owned_by_another_user_is_refused(name):
    ch = Channel(name, ring_capacity=4, blocks_per_class=2, num_classes=1)
    os.chown(f"/dev/shm/hftalloc-{name}", 65534, 65534)
    for endpoint in (ChannelReader, ChannelWriter):
        with pytest.raises(SegmentError, match="owned by uid 65534"):
            endpoint(name)
    ch.close()


def test_forged_segment_delivers_nothing(name):
    """A planted file with a valid-looking header is refused before any message is read."""
    path = f"/dev/shm/hftalloc-{name}"
    layout = L.Layout(ring_capacity=4, num_classes=1, blocks_per_class=2)
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o644)
    try:
        os.fchmod(fd, 0o644)
        os.ftruncate(fd, layout.total_size)
        header = bytearray(L.HEADER_SIZE)
        layout.write_header(memoryview(header), created_ns=0, pid=1, ticks=0)
        struct.pack_into("<Q", header, L.OFF_READY, 1)
        os.pwrite(fd, bytes(header), 0)
    finally:
        os.close(fd)
    with pytest.raises(SegmentError, match="0o644"):
        ChannelReader(name)


# -- d. symbolic links --------------------------------------------------------------------------
def test_symlink_in_place_of_a_segment_is_refused(name, tmp_path):
    target = tmp_path / "elsewhere"
    target.write_bytes(bytes(8192))
    os.symlink(target, f"/dev/shm/hftalloc-{name}")
    for endpoint in (ChannelReader, ChannelWriter):
        with pytest.raises(SegmentError, match="symbolic link"):
            endpoint(name)
    with pytest.raises(SegmentError, match="already exists"):
        Channel(name)
    assert not segment_status(name).valid
    assert target.read_bytes() == bytes(8192)  # never written through the link


# -- e. copies, pickles and objects made without their factory ------------------------------------
def test_no_compiled_channel_object_can_be_copied_or_pickled(name):
    ch = Channel(name, ring_capacity=8, blocks_per_class=4, num_classes=1)
    w, r = ChannelWriter(name, policy="raise"), ChannelReader(name)
    claim = w.claim("t.a", 4)
    kept = []
    r.subscribe(">", lambda m: kept.append(m.retain()))
    w.publish("t.a", b"m")
    r.poll()
    objects = [claim, kept[0], w._core, r._core, w, r, ch, ch.segment, ch.segment._guard]
    for obj in objects:
        for op in (copy.copy, copy.deepcopy, pickle.dumps):
            with pytest.raises(TypeError):
                op(obj)
    claim.abort()
    kept.pop().release()
    w.close()
    r.close()
    ch.close()


def test_dropping_copies_of_claims_cannot_corrupt_the_producer(name):
    proc = run_child("""
    import copy
    ch = Channel(name, ring_capacity=8, blocks_per_class=2, num_classes=1)
    w = ChannelWriter(name, policy="raise")
    for _ in range(1000):
        c = w.claim("t.a", 4)
        try:
            copy.copy(c)
        except TypeError:
            pass
        del c
    assert w.claims_live == 0 and w.spares <= 2, (w.claims_live, w.spares)
    w.close()
    ch.close()
    print("OK")
    """, name)
    assert_ok(proc)


def test_objects_made_without_their_factory_refuse_every_use():
    proc = run_child("""
    from hftalloc.errors import ChannelClosed, MessageStateError, SegmentError
    from hftalloc.shm import ShmClaim, ShmMessage, _core
    def refused(call, *errors):
        try:
            call()
        except errors:
            return
        raise AssertionError(f"{call} was accepted")
    for cls in (ShmMessage, ShmClaim):
        m = cls.__new__(cls)
        for call in (lambda: m.payload, m.tobytes, m.retain, m.release, m.commit, m.abort,
                     lambda: m.buffer, lambda: memoryview(m), lambda: m.size_class,
                     lambda: m.__enter__()):
            refused(call, MessageStateError, TypeError, BufferError)
        len(m); repr(m)
        del m
    for cls in (_core.ChannelCore, _core.ProducerCore, _core.ConsumerCore):
        core = cls.__new__(cls)
        calls = [core.owner_counts, core._reclaim_consumer, core._reclaim_producer,
                 core._start if hasattr(core, "_start") else core.heartbeat, core.heartbeat,
                 lambda: core._load(0), lambda: core._read_topic(0), lambda: core.queued]
        if cls is _core.ProducerCore:
            calls += [lambda: core.publish("t.a", b"x"), lambda: core.claim("t.a", 1)]
        if cls is _core.ProducerCore:
            calls += [lambda: core.publish_many("t.a", [b"x"])]
        if cls is _core.ConsumerCore:
            calls += [core.poll, lambda: core.wait(0), core.poll_all,
                      lambda: core.poll_batch(print), lambda: core.poll_copies([])]
        for call in calls:
            refused(call, ChannelClosed)
        refused(lambda: core._bind(bytearray(1 << 16), "x", 0, 0, 4, 1, 64, 2, 4, 2, 4096, 4224,
                                   5248, 5376, 8192, 8320), SegmentError)
    refused(lambda: _core.MappingGuard.__new__(_core.MappingGuard), TypeError)
    print("OK")
    """)
    assert_ok(proc)


def test_readonly_views_and_released_messages_stay_refused(name):
    ch = Channel(name, ring_capacity=8, blocks_per_class=4, num_classes=1)
    w, r = ChannelWriter(name, policy="raise"), ChannelReader(name)
    kept = []
    r.subscribe(">", kept.append)
    w.publish("t.a", b"abc")
    r.poll()
    with pytest.raises(MessageStateError):
        kept[0].commit()
    with pytest.raises(MessageStateError):
        kept[0].buffer  # noqa: B018
    w.close()
    r.close()
    ch.close()


def test_unbinding_a_core_with_live_claims_or_retained_messages_is_refused(name):
    from hftalloc.errors import BlocksStillLive

    ch = Channel(name, ring_capacity=8, blocks_per_class=4, num_classes=1)
    w, r = ChannelWriter(name, policy="raise"), ChannelReader(name)
    c = w.claim("t.a", 4)
    with pytest.raises(BlocksStillLive):
        w._core._unbind()
    kept = []
    r.subscribe(">", lambda m: kept.append(m.retain()))
    w.publish("t.a", b"abc")
    r.poll()
    with pytest.raises(BlocksStillLive):
        r._core._unbind()
    assert kept[0].tobytes() == b"abc"  # still mapped
    kept.pop().release()
    c.abort()
    w.close()
    r.close()
    ch.close()


def test_failed_sweep_never_gives_a_block_back_twice(name):
    """A forged free-ring cursor makes the second of two parked blocks fail to go back;
    the retry must not push the first one again."""
    ch = Channel(name, ring_capacity=8, blocks_per_class=4, num_classes=1)
    w, r = ChannelWriter(name, policy="raise"), ChannelReader(name)
    views = []
    r.subscribe(">", lambda m: views.append(m.payload[:]))  # a derived view: parks the block
    w.publish("t.a", b"1")
    w.publish("t.a", b"2")
    r.poll()
    assert r._core.parked == 2
    buf, ftail = ch.segment.buffer, L.OFF_FREE_CURSORS + 64
    fhead_before = struct.unpack_from("<Q", buf, L.OFF_FREE_CURSORS)[0]
    struct.pack_into("<Q", buf, ftail, 1)  # the peer moves its cursor back
    views.clear()
    with pytest.raises(SegmentCorrupted, match="overflow"):
        r._core._sweep()
    struct.pack_into("<Q", buf, ftail, 2)
    assert r._core._sweep() == 0
    fhead = struct.unpack_from("<Q", buf, L.OFF_FREE_CURSORS)[0]
    assert fhead == fhead_before + 2  # each parked block went back exactly once
    ring = struct.unpack_from("<4I", buf, ch.layout.free_offset)
    assert sorted(ring) == [0, 1, 2, 3]
    w.close()
    r.close()
    ch.close()


def test_a_cached_view_reached_by_gc_introspection_never_reads_the_next_message(name):
    """The reader keeps a message and its payload view per block for reuse; a view that
    somebody reached through gc is released (or its message retired) before the block
    carries another message, never rearmed over it."""
    assert_ok(run_child("""
        import gc
        ch = Channel(name, num_classes=1, blocks_per_class=1, ring_capacity=4)
        w = ChannelWriter(name, policy="raise")
        r = ChannelReader(name)
        seen = []

        def owner_name(view):
            try:
                return type(view.obj).__name__
            except ValueError:                      # released
                return None

        def cached_view():
            return next(o for o in gc.get_objects()
                        if isinstance(o, memoryview) and owner_name(o) == "Message")

        def read(view):
            try:
                return bytes(view)
            except ValueError:
                return "released"

        def on_msg(m):
            seen.append(bytes(m.payload))
            seen.append(read(keep))
            if derived is not None:
                seen.append(read(derived))

        r.subscribe("t", on_msg)
        derived = None
        keep = memoryview(b"")
        w.publish("t", b"first")
        assert r.poll() == 1
        keep = cached_view()                        # reached by gc, not by the API
        assert bytes(keep) == b""                   # the block is free: it reads nothing
        w.publish("t", b"again")                    # the same (only) block
        assert r.poll() == 1
        assert seen[2:] == [b"again", "released"], seen
        assert read(keep) == "released"

        keep = cached_view()
        derived = memoryview(keep)                  # exported: it cannot be released
        w.publish("t", b"other")
        assert r.poll() == 1
        assert seen[4] == b"other" and seen[5] in (b"", "released") and seen[6] == b"", seen
        assert bytes(derived) == b""
        del derived, keep
        derived = None
        keep = memoryview(b"")
        w.publish("t", b"third")
        assert r.poll() == 1 and seen[7] == b"third", seen
        assert r.owner_counts() == [[1, 0, 0, 0]] and r.deferred == 0
        r.close(); w.close(); ch.close()
        print("OK")
    """, name))
