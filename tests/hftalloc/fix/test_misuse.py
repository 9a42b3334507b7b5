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
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_misuse_in_child(name):
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(CASES[name])],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok", out.stderr
