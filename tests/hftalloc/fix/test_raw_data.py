"""Data fields (FIX 4.4 length/data pairs such as RawDataLength 95 / RawData 96): read by
their declared length (SOH and '=' inside), bounded by the message end, encoded with their
length, and parsed the same way by simplefix and QuickFIX."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hftalloc.fix import (
    FixEncodeError,
    FixEncoder,
    FixParseError,
    FixRawDataError,
    checksum,
    parse,
)

simplefix = pytest.importorskip("simplefix")

ENC = FixEncoder("CLIENT", "VENUE")
# (length tag, data tag) of FIX 4.4 (fields of type LENGTH and DATA in FIX44.xml)
PAIRS = [(90, 91), (93, 89), (95, 96), (212, 213), (348, 349), (350, 351), (352, 353),
         (354, 355), (356, 357), (358, 359), (360, 361), (362, 363), (364, 365), (445, 446),
         (618, 619), (621, 622)]
BODY_PAIRS = [p for p in PAIRS if p[0] not in (90, 93)]   # 90/91 header, 93/89 trailer
NOS = [(11, "ord-1"), (55, "AAPL"), (54, "1"), (38, 100), (40, "2"), (44, 189.5),
       (60, "20260101-12:00:00.000")]


def framed(body: bytes) -> bytes:
    """``8=FIX.4.4|9=..|<body>10=..|`` with correct BodyLength and CheckSum."""
    head = b"8=FIX.4.4\x019=%d\x01" % len(body)
    return head + body + b"10=%03d\x01" % checksum(head + body)


HEAD = b"35=D\x0149=CLIENT\x0156=VENUE\x0134=2\x0152=20260101-00:00:00.000\x01"


def test_data_with_soh_and_equals_is_read_by_length():
    data = b"a\x01b=c\x0110=000\x01"
    m = parse(framed(HEAD + b"95=%d\x0196=" % len(data) + data + b"\x0158=after\x01"))
    assert m.get_bytes(96) == data and m.get_int(95) == len(data)
    assert bytes(m.get_view(96)) == data and m.get_str(58) == "after"
    assert [t for t, _ in m.fields()][-4:] == [95, 96, 58, 10]


@pytest.mark.parametrize("length_tag, data_tag", PAIRS)
def test_every_pair_round_trips_through_the_encoder(length_tag, data_tag):
    data = b"x=\x01y\x00\xff"
    m = parse(ENC.encode("D", 4, [*NOS, (data_tag, data)]))
    assert m.get_bytes(data_tag) == data and m.get_int(length_tag) == len(data)
    tags = [t for t, _ in m.fields()]
    assert tags[tags.index(length_tag) + 1] == data_tag


@pytest.mark.parametrize("body, tag", [
    (HEAD + b"95=500\x0196=abc\x01", 96),              # length past the end of the message
    (HEAD + b"95=2\x0196=abc\x01", 96),                # data not followed by SOH
    (HEAD + b"95=3\x0158=x\x01", 95),                  # length without its data field
    (HEAD + b"96=abc\x01", 96),                        # data without its length field
    (HEAD + b"95=x3\x0196=abc\x01", 95),               # length not a number
    (HEAD + b"95=1234567890\x0196=abc\x01", 95),       # more than 9 digits
    (HEAD + b"95=0\x0196=\x01", 96),                   # empty data
])
def test_inconsistent_lengths_are_specific_errors(body, tag):
    with pytest.raises(FixParseError) as info:
        parse(framed(body))
    assert info.value.tag == tag
    if not isinstance(info.value, FixRawDataError):
        assert info.value.reason == 4 and tag == 96    # empty data: tag without a value
    else:
        assert info.value.reason == 5


@pytest.mark.parametrize("length, error", [(7, FixParseError), (8, FixRawDataError),
                                           (9, FixRawDataError)])
def test_a_length_reaching_into_the_trailer_is_refused(length, error):
    """``96=`` is followed by ``<SOH>10=xxx<SOH>`` (8 bytes): a length of 7 swallows the
    CheckSum field (no trailer left), 8 and more run past the message."""
    with pytest.raises(error):
        parse(framed(HEAD + b"95=%d\x0196=\x01" % length))


def test_encoder_checks_given_lengths():
    raw = ENC.encode("D", 1, [*NOS, (95, 3), (96, b"a\x01b")])
    assert parse(raw).get_bytes(96) == b"a\x01b"
    with pytest.raises(FixEncodeError):
        ENC.encode("D", 1, [*NOS, (95, 4), (96, b"a\x01b")])      # wrong length
    with pytest.raises(FixEncodeError):
        ENC.encode("D", 1, [*NOS, (95, 3), (58, "x")])             # not followed by data
    with pytest.raises(FixEncodeError):
        ENC.encode("D", 1, [*NOS, (95, 3)])
    with pytest.raises(FixEncodeError):
        ENC.encode("D", 1, [*NOS, (96, b"")])
    with pytest.raises(FixEncodeError):
        ENC.encode("D", 1, [*NOS, (96, 12.5)])
    with pytest.raises(FixEncodeError):
        ENC.encode("D", 1, [*NOS, (58, "a\x01b")])                # SOH outside data fields


# -- against simplefix and QuickFIX ---------------------------------------------------------
raw_data = st.binary(min_size=1, max_size=40)
data_fields = st.lists(st.tuples(st.sampled_from(BODY_PAIRS), raw_data), min_size=1,
                       max_size=4, unique_by=lambda f: f[0])


def _simplefix_pairs(raw: bytes) -> list[tuple[int, bytes]]:
    parser = simplefix.FixParser()
    parser.append_buffer(raw)
    msg = parser.get_message()
    assert msg is not None
    return [(int(t), v) for t, v in msg.pairs]


@given(data_fields)
def test_simplefix_built_raw_data_parses_identically(fields):
    sm = simplefix.FixMessage()
    for tag, value in ((8, "FIX.4.4"), (35, "D"), (49, "CLIENT"), (56, "VENUE"), (34, 5),
                       (52, "20260101-00:00:00.000"), (11, "o1")):
        sm.append_pair(tag, value)
    for (length_tag, data_tag), data in fields:
        sm.append_pair(length_tag, len(data))
        sm.append_pair(data_tag, data)
    raw = sm.encode()
    assert parse(raw).fields() == _simplefix_pairs(raw)


@given(data_fields)
def test_encoder_raw_data_parses_identically_in_simplefix(fields):
    raw = ENC.encode("D", 3, [(11, "o1"), *((pair[1], data) for pair, data in fields)])
    theirs = _simplefix_pairs(raw)
    assert theirs == parse(raw).fields()
    got = {t: v for t, v in theirs}
    for (length_tag, data_tag), data in fields:
        assert got[data_tag] == data and got[length_tag] == b"%d" % len(data)


ascii_data = st.text(st.sampled_from("abc=XYZ 019\x01"), min_size=1, max_size=30)


def test_encoder_raw_data_parses_in_quickfix(qf_dictionary):
    quickfix = pytest.importorskip("quickfix")
    dd = quickfix.DataDictionary(qf_dictionary)

    @given(ascii_data, ascii_data)
    def check(raw_text, xml_text):
        raw = ENC.encode("D", 3, [*NOS, (96, raw_text), (213, xml_text)])
        qm = quickfix.Message(raw.decode(), dd, False)

        def field(tag):   # QuickFIX files header tags (XmlData 212/213) under the header
            return (qm if qm.isSetField(tag) else qm.getHeader()).getField(tag)
        assert field(96) == raw_text and int(field(95)) == len(raw_text)
        assert field(213) == xml_text and int(field(212)) == len(xml_text)
        again = parse(qm.toString().encode())
        assert again.get_bytes(96) == raw_text.encode()
        assert again.get_int(10) == parse(raw).get_int(10)
    check()


@given(st.integers(0, 400), st.binary(max_size=60), st.binary(max_size=20))
def test_lying_lengths_never_read_past_the_message(length, data, tail):
    body = HEAD + b"95=%d\x0196=" % length + data + b"\x01" + tail
    try:
        m = parse(framed(body))
    except FixParseError:
        return
    got = m.get_bytes(96)
    assert len(got) == length and got == (data + b"\x01" + tail)[:length]
