"""The compiled FIX codec: framing, parsing, typed accessors, groups, encoding, bad input."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hftalloc import MessageBus
from hftalloc.errors import BusError
from hftalloc.fix import (
    FixBadBodyLength,
    FixBadChecksum,
    FixBufferTooSmall,
    FixEncodeError,
    FixEncoder,
    FixFieldMissing,
    FixGarbage,
    FixGarbled,
    FixGroupError,
    FixOversize,
    FixParseError,
    FixValueError,
    checksum,
    frame,
    parse,
)

simplefix = pytest.importorskip("simplefix")

ENC = FixEncoder("CLIENT", "VENUE")
NOS = [(11, "ord-1"), (55, "AAPL"), (54, "1"), (38, 100), (40, "2"), (44, 189.5),
       (59, "0"), (60, "20260101-12:00:00.000")]


def wire(fields=NOS, msg_type="D", seq=7):
    return ENC.encode(msg_type, seq, fields, sending_time_ns=1_767_225_600_123_000_000)


def with_checksum(body: bytes) -> bytes:
    """A message ``8=FIX.4.4|9=..|<body>10=..|`` with correct BodyLength and CheckSum."""
    head = b"8=FIX.4.4\x019=%d\x01" % len(body)
    return head + body + b"10=%03d\x01" % (checksum(head + body))


def test_encode_layout_and_trailer():
    w = wire()
    text = w.replace(b"\x01", b"|")
    assert text.startswith(b"8=FIX.4.4|9=")
    assert b"|35=D|49=CLIENT|56=VENUE|34=7|52=20260101-00:00:00.123|11=ord-1|" in text
    body_start = w.index(b"\x0135=") + 1
    body_len = int(w[w.index(b"9=") + 2:body_start - 1])
    assert body_len == len(w) - body_start - 7
    assert w[-7:-4] == b"10=" and int(w[-4:-1]) == sum(w[:-7]) % 256


def test_parse_accessors():
    m = parse(wire())
    assert m.msg_type == "D" and m.seq_num == 7 and m.begin_string == "FIX.4.4"
    assert m.get_str(55) == "AAPL" and m.get_int(38) == 100
    assert m.get_float(44) == 189.5 and m.get_decimal(44) == "189.5"
    assert m.get_bytes(11) == b"ord-1" and bytes(m.get_view(11)) == b"ord-1"
    assert m.has(60) and not m.has(99) and m.get_int(99, None) is None
    with pytest.raises(FixFieldMissing) as info:
        m.get_int(99)
    assert info.value.tag == 99 and info.value.reason == 1 and isinstance(info.value, BusError)
    with pytest.raises(FixValueError):
        m.get_int(55)
    with pytest.raises(FixValueError):
        m.get_float(11)
    tags = [t for t, _ in m.fields()]
    assert tags[:3] == [8, 9, 35] and tags[-1] == 10 and len(m) == len(tags)
    assert m.view().tobytes() == m.tobytes() == wire()


def test_exact_decimal_text_and_float_formatting():
    m = parse(wire([(44, 0.1), (45, 1e-7), (46, 3.0), (47, -2.5), (48, "123.4500")]))
    assert m.get_decimal(44) == "0.1" and m.get_decimal(45) == "0.0000001"
    assert m.get_decimal(46) == "3" and m.get_float(47) == -2.5
    assert m.get_decimal(48) == "123.4500"   # the exact text, trailing zeros kept


def test_repeating_group_market_data():
    fields = [(262, "r1"), (55, "AAPL"), (268, 4)]
    for i in range(4):
        fields += [(269, "0" if i % 2 == 0 else "1"), (270, 100 + i * 0.25), (271, 10 * i + 1)]
    fields.append((100, "after"))
    m = parse(wire(fields, "W"))
    entries = m.group(268)
    assert [e.get_str(269) for e in entries] == ["0", "1", "0", "1"]
    assert [e.get_decimal(270) for e in entries] == ["100", "100.25", "100.5", "100.75"]
    assert [e.get_int(271) for e in entries] == [1, 11, 21, 31]
    assert not entries[-1].has(100) and m.get_str(100) == "after"
    bad = parse(wire([(55, "X"), (268, 3), (269, "0"), (270, 1), (269, "1"), (270, 2)], "W"))
    with pytest.raises(FixGroupError) as info:
        bad.group(268)
    assert info.value.reason == 16


def test_encode_into_a_claimed_bus_block():
    bus = MessageBus(name="fixcodec")
    got = []
    bus.subscribe("fix.t.in.D", lambda msg: got.append(parse(msg.payload).get_str(11)))
    size = len(wire())
    out = bus.claim("fix.t.in.D", size)
    n = ENC.encode_into(out.buffer, "D", 7, NOS, sending_time_ns=1_767_225_600_123_000_000)
    assert n == size
    out.commit()
    bus.close()
    assert got == ["ord-1"]


def test_encoder_refuses_bad_values_and_small_buffers():
    with pytest.raises(FixEncodeError):
        ENC.encode("D", 1, [(58, "a\x01b")])
    with pytest.raises(FixEncodeError):
        ENC.encode("D", 1, [(44, float("nan"))])
    with pytest.raises(FixEncodeError):
        ENC.encode("D", 1, [(58, "")])
    with pytest.raises(FixEncodeError):
        ENC.encode("D", 0, NOS)
    with pytest.raises(FixBufferTooSmall):
        ENC.encode_into(bytearray(40), "D", 1, NOS)
    with pytest.raises(FixEncodeError):
        FixEncoder("A\x01B", "VENUE")
    big = ENC.encode("D", 1, [(58, "x" * 20_000)])   # grows its scratch buffer
    assert parse(big).get_str(58) == "x" * 20_000


def test_body_length_digit_change():
    """BodyLength with 2, 3, 4 and 5 digits: the body is moved in place."""
    for n in (1, 50, 2000, 20000):
        m = parse(ENC.encode("D", 1, [(58, "y" * n)]))
        assert len(m.get_str(58)) == n


@pytest.mark.parametrize("mutate, error", [
    (lambda w: w[:-2] + b"9\x01" if w[-2:-1] != b"9" else w[:-2] + b"8\x01", FixBadChecksum),
    (lambda w: w.replace(b"9=", b"9=1", 1), FixGarbled),
    (lambda w: w.replace(b"9=", b"9=x", 1), FixBadBodyLength),
    (lambda w: b"junk" + w, FixGarbage),
    (lambda w: w.replace(b"8=FIX", b"8=FOX", 1), FixGarbled),
    (lambda w: w[:-1], FixBadBodyLength),
])
def test_garbled_messages(mutate, error):
    with pytest.raises(error):
        parse(mutate(wire()))


def test_field_errors():
    with pytest.raises(FixParseError) as info:
        parse(with_checksum(b"35=D\x0149=A\x0156=\x01"))
    assert info.value.reason == 4 and info.value.tag == 56      # tag without a value
    with pytest.raises(FixParseError) as info:
        parse(with_checksum(b"35=D\x01x9=A\x01"))
    assert info.value.reason == 0                               # tag is not a number
    with pytest.raises(FixParseError):
        parse(with_checksum(b"49=A\x0135=D\x01"))               # MsgType not third
    many = b"35=D\x01" + b"58=x\x01" * 2000
    with pytest.raises(FixParseError):
        parse(with_checksum(many), max_fields=1000)
    assert len(parse(with_checksum(many), max_fields=4000)) == 2004
    with pytest.raises(FixOversize):
        parse(with_checksum(many), max_size=1000)


def test_frame_in_a_stream():
    a, b = wire(seq=1), wire(seq=2)
    stream = b"garbage" + a + b
    skip, size = frame(stream)
    assert (skip, size) == (7, len(a))
    assert frame(stream, 7 + len(a)) == (0, len(b))
    for cut in range(1, len(a)):
        assert frame(a[:cut])[1] == 0          # incomplete: wait for more
    with pytest.raises(FixOversize):
        frame(b"8=FIX.4.4\x019=9999999\x01", max_size=65536)
    with pytest.raises(FixBadBodyLength):
        frame(b"8=FIX.4.4\x019=123456789\x01")
    assert frame(b"xx8=FI") == (2, 0)           # a possible BeginString at the end is kept


def test_released_message_refuses_access():
    m = parse(wire())
    m.release()
    with pytest.raises(ValueError):
        m.get_str(55)
    assert "released" in repr(m)


# -- round trips against simplefix (and QuickFIX) -------------------------------------------
HEADER = {8, 9, 10, 34, 35, 43, 49, 52, 56, 97, 122, 115, 128, 90, 91, 50, 142, 57, 143,
          116, 144, 129, 145, 212, 213, 347, 369, 627, 628, 629, 630, 93, 89}   # header/trailer
# length/data pairs of raw data fields (values that may hold SOH) are outside this codec
_sp = simplefix.FixParser()
HEADER |= {int(t) for t in _sp.raw_len_tags} | {int(t) for t in _sp.raw_data_tags}
tags = st.integers(1, 9999).filter(lambda t: t not in HEADER)
values = st.text(st.characters(min_codepoint=32, max_codepoint=126), min_size=1, max_size=24)
field_lists = st.lists(st.tuples(tags, values), min_size=0, max_size=30)


@given(field_lists)
def test_simplefix_built_messages_parse_identically(fields):
    sm = simplefix.FixMessage()
    sm.append_pair(8, "FIX.4.4")
    sm.append_pair(35, "D")
    sm.append_pair(49, "CLIENT")
    sm.append_pair(56, "VENUE")
    sm.append_pair(34, 12)
    sm.append_pair(52, "20260101-00:00:00.000")
    for tag, value in fields:
        sm.append_pair(tag, value)
    raw = sm.encode()
    parser = simplefix.FixParser()
    parser.append_buffer(raw)
    expected = [(int(t), v) for t, v in parser.get_message().pairs]
    assert parse(raw).fields() == expected


@given(field_lists)
def test_encoder_output_parses_identically_in_simplefix(fields):
    raw = ENC.encode("D", 3, fields)
    parser = simplefix.FixParser()
    parser.append_buffer(raw)
    theirs = [(int(t), v) for t, v in parser.get_message().pairs]
    assert theirs == parse(raw).fields()
    assert theirs[7:-1] == [(t, v.encode()) for t, v in fields]


@given(st.dictionaries(tags, values, max_size=20))
def test_encoder_output_parses_in_quickfix(fields):
    quickfix = pytest.importorskip("quickfix")
    raw = ENC.encode("D", 3, sorted(fields.items()))
    qm = quickfix.Message(raw.decode(), False)
    header = qm.getHeader()
    assert header.getField(35) == "D" and header.getField(49) == "CLIENT"
    assert int(header.getField(34)) == 3
    for tag, value in fields.items():   # QuickFIX files a header tag (e.g. 370) under the header
        where = qm if qm.isSetField(tag) else header
        assert where.getField(tag) == value
    again = parse(qm.toString().encode())   # QuickFIX recomputes 9 and 10: the same values
    assert again.get_int(9) == parse(raw).get_int(9)
    assert again.get_int(10) == parse(raw).get_int(10)


@given(st.binary(max_size=300), st.integers(0, 300))
def test_arbitrary_bytes_never_crash(data, cut):
    for chunk in (data, data[:cut], b"8=FIX.4.4\x019=5\x01" + data):
        try:
            parse(chunk)
        except (FixParseError, ValueError):
            pass
        try:
            frame(chunk)
        except FixParseError:
            pass
