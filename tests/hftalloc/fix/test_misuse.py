"""Misuse of the compiled codec from Python raises clear exceptions, never crashes
(each case runs in a child interpreter, so a crash fails the test instead of pytest)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

CASES = {
    "direct_message": """
        from hftalloc.fix import FixMessage
        try:
            FixMessage()
        except TypeError:
            print("ok")
    """,
    "unbound_message": """
        from hftalloc.fix import FixMessage
        m = FixMessage.__new__(FixMessage)
        for call in (lambda: m.get_str(55), lambda: m.msg_type, lambda: m.fields(),
                     lambda: m.group(268), lambda: m.view(), lambda: m.seq_num):
            try:
                call()
            except ValueError:
                pass
            else:
                raise SystemExit("no error")
        print("ok")
    """,
    "unbound_group": """
        from hftalloc.fix import FixGroup
        g = FixGroup.__new__(FixGroup)
        for call in (lambda: g.get_str(55), lambda: g.fields(), lambda: g.has(1)):
            try:
                call()
            except ValueError:
                pass
            else:
                raise SystemExit("no error")
        print("ok")
    """,
    "group_after_release": """
        from hftalloc.fix import FixEncoder, parse
        m = parse(FixEncoder("A", "B").encode("W", 1, [(55, "X"), (268, 1), (269, "0"),
                                                        (270, 1.5)]))
        g = m.group(268)[0]
        m.release()
        try:
            g.get_float(270)
        except ValueError:
            print("ok")
    """,
    "bad_limits": """
        from hftalloc.fix import FixEncoder, parse, frame
        w = FixEncoder("A", "B").encode("0", 1)
        for kw in ({"max_fields": -1}, {"max_fields": 1 << 30}):
            try:
                parse(w, **kw)
            except ValueError:
                pass
            else:
                raise SystemExit("no error")
        for args in ((-1,), (len(w) + 5,)):
            for fn in (parse, frame):
                try:
                    fn(w, *args)
                except ValueError:
                    pass
                else:
                    raise SystemExit("no error")
        print("ok")
    """,
    "encode_into_readonly_and_offsets": """
        from hftalloc.fix import FixEncoder, FixBufferTooSmall
        enc = FixEncoder("A", "B")
        try:
            enc.encode_into(b"x" * 100, "0", 1)
        except (TypeError, BufferError):
            pass
        else:
            raise SystemExit("no error")
        for off in (-1, 101, 95):
            try:
                enc.encode_into(bytearray(100), "0", 1, offset=off)
            except FixBufferTooSmall:
                pass
            else:
                raise SystemExit("no error")
        print("ok")
    """,
    "inbound_buffer_bounds": """
        import io
        from hftalloc.fix._inbound import InboundBuffer

        def refused(call, *errors):
            try:
                call()
            except errors:
                return
            raise SystemExit(f"no error from {call}")
        refused(lambda: InboundBuffer(), TypeError)
        refused(lambda: InboundBuffer.own(10), ValueError)
        b = InboundBuffer.own(256)
        refused(lambda: io.BytesIO(b"x").readinto(b), BufferError, TypeError)  # no window
        for lo, hi in ((-1, 10), (0, 257), (10, 10), (20, 10)):
            refused(lambda: b.arm(lo, hi), ValueError)
        b.arm(0, 256)
        assert io.BytesIO(b"8=FIX" * 10).readinto(b) == 50
        b.received(50)
        refused(lambda: b.received(1), ValueError)                 # the window is used up
        refused(lambda: b.move(0, 300, 0), ValueError)
        refused(lambda: b.move(0, 50, 250), ValueError)
        refused(lambda: b.copy_into(InboundBuffer.own(64), 0, 100), ValueError)
        refused(lambda: b.copy_into(InboundBuffer.own(64), 0, 50, 30), ValueError)
        refused(lambda: b.set_length(257), ValueError)
        refused(lambda: b.peek(0, 300, 1000), ValueError)
        refused(lambda: b.commit(), BufferError)                   # not a bus block
        view = memoryview(b)
        assert bytes(view[:5]) == b"8=FIX" and view.readonly and len(view) == 50
        refused(lambda: b.move(5, 50, 0), BufferError)             # a view is alive
        refused(lambda: b.abort(), BufferError)
        view.release()
        b.abort()
        refused(lambda: memoryview(b), BufferError)                # handed back
        refused(lambda: b.arm(0, 10), BufferError)
        refused(lambda: b.peek(0, 0, 10), BufferError)
        print("ok")
    """,
    "inbound_block_views": """
        import io
        from hftalloc import MessageBus
        from hftalloc.fix import FixEncoder, parse
        from hftalloc.fix._inbound import InboundBuffer

        bus = MessageBus(name="ib")
        got = []
        bus.subscribe("t", lambda m: got.append(parse(m.payload).get_str(112)))
        wire = FixEncoder("A", "B").encode("1", 1, [(112, "hello")])
        blk = InboundBuffer.claim(bus, "t", 128)
        assert io.BytesIO(wire).readinto(blk.arm(0, len(wire))) == len(wire)  # recv_into
        blk.received(len(wire))
        assert not blk.when_written(lambda: None)      # no window export is alive
        m = parse(blk)
        try:
            blk.commit()
        except BufferError:
            pass
        else:
            raise SystemExit("committed under a parsed message")
        m.release()
        assert blk.peek(0, len(wire), 4096) == (0, len(wire), len(wire), "1")
        blk.set_length(len(wire))
        blk.commit()
        assert got == ["hello"]
        try:
            memoryview(blk)
        except BufferError:
            pass
        else:
            raise SystemExit("a committed block is still readable")
        kept = InboundBuffer.claim(bus, "t", 64)        # a claim dropped with a view alive
        v = memoryview(kept)
        del kept
        v.release()
        bus.close()                                     # every block came back
        print("ok")
    """,
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_misuse_in_child(name):
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(CASES[name])],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok", out.stderr
