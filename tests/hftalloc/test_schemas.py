"""Binary schemas: round trips (hypothesis), header checks, in-place encode/decode on the bus."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from reference_core import BUS_CORES, ReferenceBus

from hftalloc import MessageBus, SchemaError
from hftalloc import schemas as S

CORES = BUS_CORES

symbols = st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126), min_size=1,
                  max_size=8)
prices = st.floats(allow_nan=False, allow_infinity=False, width=64)
u8 = st.integers(0, 2**8 - 1)
u32 = st.integers(0, 2**32 - 1)
u64 = st.integers(0, 2**64 - 1)
i64 = st.integers(-(2**63), 2**63 - 1)

RECORDS = st.one_of(
    st.builds(S.Quote, symbols, prices, u32, prices, u32, i64),
    st.builds(S.Trade, symbols, prices, u32, u8, u64, i64),
    st.builds(S.NewOrder, u64, symbols, u8, prices, u32, u8, i64),
    st.builds(S.Cancel, u64, symbols, i64),
    st.builds(S.Fill, u64, symbols, u8, prices, u32, u32, u64, i64),
)


@given(RECORDS, st.integers(0, 16))
def test_round_trip_through_a_plain_buffer(record, offset):
    codec = S.codec_for(record)
    buf = bytearray(offset + codec.size + 3)
    assert S.encode_into(buf, record, offset) == codec.size
    assert S.decode(buf, offset) == record
    assert codec.decode(memoryview(buf), offset) == record
    assert S.message_type(buf, offset) == codec.msg_type
    raw = codec.unpack_from(buf, offset)
    assert raw[codec.fields.index("symbol")].rstrip(b"\0") == record.symbol.encode()
    view = np.frombuffer(buf, dtype=codec.dtype, count=1, offset=offset)[0]
    for name in codec.fields:
        expected = getattr(record, name)
        got = view[name]
        assert (got.rstrip(b"\0").decode() if name == "symbol" else got.item()) == expected


@given(st.lists(RECORDS, min_size=1, max_size=8))
def test_round_trip_in_place_through_bus_blocks(records):
    for Bus in CORES:
        bus = Bus(blocks_per_class=4)
        got = []
        bus.subscribe("x.>", lambda m, got=got: got.append(S.decode(m.payload)))
        for i, record in enumerate(records):
            assert S.publish(bus, f"x.{type(record).__name__}", record) == i + 1
        assert got == records
        assert bus.allocator.in_use == 0


def test_claim_and_pack_into_fast_path():
    bus = MessageBus()
    got = []
    bus.subscribe("md.quote.AAPL", lambda m: got.append(S.QUOTE.decode(m.payload)))
    with bus.claim("md.quote.AAPL", S.QUOTE.size) as msg:
        S.QUOTE.pack_into(msg.buffer, 0, b"AAPL", 189.25, 300, 189.27, 200, 42)
    assert got == [S.Quote("AAPL", 189.25, 300, 189.27, 200, 42)]


def test_header_is_checked():
    buf = bytearray(S.QUOTE.size)
    S.QUOTE.encode_into(buf, S.Quote("A", 1.0, 1, 2.0, 2, 3))
    with pytest.raises(SchemaError, match="not a Trade"):
        S.TRADE.decode(buf + bytes(20))
    with pytest.raises(SchemaError, match="needs 48 B"):
        S.QUOTE.decode(buf[:-1])
    bad_version = bytearray(buf)
    bad_version[0] = 9
    with pytest.raises(SchemaError, match="version 9"):
        S.decode(bad_version)
    bad_type = bytearray(buf)
    bad_type[1] = 77
    with pytest.raises(SchemaError, match="unknown message type 77"):
        S.decode(bad_type)
    with pytest.raises(SchemaError):
        S.message_type(b"\x01")


@pytest.mark.parametrize("symbol", ["TOOLONGSYM", "é", "A\0B", "", 12])
def test_bad_symbols_are_refused(symbol):
    with pytest.raises(SchemaError):
        S.encode_into(bytearray(64), S.Cancel(1, symbol, 0))


def test_out_of_range_fields_are_refused_and_the_claim_is_aborted():
    bus = ReferenceBus()
    bus.subscribe("o.x", lambda m: None)
    with pytest.raises(SchemaError):
        S.publish(bus, "o.x", S.NewOrder(-1, "AAPL", S.BUY, 1.0, 1, S.DAY, 0))
    assert bus.aborted == 1 and bus.published == 0 and bus.allocator.in_use == 0
    with pytest.raises(SchemaError):
        S.codec_for(("not", "a", "record"))


def test_every_layout_fits_the_smallest_class_and_has_unique_type():
    assert len({c.msg_type for c in S.CODECS.values()}) == 5
    assert all(c.size <= 64 and c.dtype.itemsize == c.size for c in S.CODECS.values())
