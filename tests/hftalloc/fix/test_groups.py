"""Nested repeating groups (NoPartyIDs -> NoPartySubIDs, NoAllocs -> NoNestedPartyIDs ->
NoNestedPartySubIDs, NoLegs -> ...): typed access per level, bounded depth and counts, and
messages built by simplefix and QuickFIX."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hftalloc.fix import (
    GROUPS,
    MAX_GROUP_DEPTH,
    FixEncoder,
    FixGroupError,
    FixParseError,
    parse,
)

simplefix = pytest.importorskip("simplefix")

ENC = FixEncoder("CLIENT", "VENUE")
NOS = [(11, "ord-1"), (55, "AAPL"), (54, "1"), (38, 100), (40, "2"), (44, 189.5),
       (60, "20260101-12:00:00.000")]


def parties(model: list[tuple[str, int, list[tuple[str, int]]]]) -> list[tuple[int, object]]:
    """NoPartyIDs fields for ``[(party_id, role, [(sub_id, sub_type), ...]), ...]``."""
    out: list[tuple[int, object]] = [(453, len(model))]
    for pid, role, subs in model:
        out += [(448, pid), (447, "D"), (452, role)]
        if subs:
            out.append((802, len(subs)))
            for sid, stype in subs:
                out += [(523, sid), (803, stype)]
    return out


def read_parties(msg) -> list[tuple[str, int, list[tuple[str, int]]]]:
    return [(p.get_str(448), p.get_int(452),
             [(s.get_str(523), s.get_int(803)) for s in p.group(802)])
            for p in msg.group(453)]


MODEL = [("BROKER1", 1, [("desk-a", 4), ("trader-7", 2)]), ("CLIENT9", 3, []),
         ("CUST", 24, [("acct", 26)])]


def test_parties_with_sub_ids():
    m = parse(ENC.encode("D", 2, [*NOS, *parties(MODEL), (58, "after")]))
    assert read_parties(m) == MODEL
    first = m.group(453)[0]
    assert first.depth == 1 and first.group(802)[0].depth == 2
    assert not first.has(523) and first.get_str(523, None) is None   # nested: not its own
    assert first.get_int(802) == 2 and first.get_str(447) == "D"
    assert m.get_str(58) == "after" and m.duplicate_tag() == 0 and m.check_groups() == 1
    assert first.group(802)[1].get_view(523).tobytes() == b"trader-7"


def test_three_levels_allocs_nested_parties():
    fields = [*NOS, (78, 2),
              (79, "acc1"), (539, 1), (524, "np1"), (525, "D"), (538, 1),
              (804, 2), (545, "s1"), (805, 1), (545, "s2"), (805, 2), (80, 60),
              (79, "acc2"), (80, 40)]
    m = parse(ENC.encode("D", 2, fields))
    allocs = m.group(78)
    assert [a.get_str(79) for a in allocs] == ["acc1", "acc2"]
    assert [a.get_int(80) for a in allocs] == [60, 40]     # after the nested group
    nested = allocs[0].group(539)
    assert [n.get_str(524) for n in nested] == ["np1"]
    subs = nested[0].group(804)
    assert [(s.get_str(545), s.get_int(805)) for s in subs] == [("s1", 1), ("s2", 2)]
    assert subs[0].depth == 3 and allocs[1].group(539) == []


def test_legs_with_nested_stipulations_in_an_execution_report():
    fields = [(37, "o1"), (17, "e1"), (150, "0"), (39, "0"), (55, "SPREAD"), (54, "1"),
              (151, 10), (14, 0), (6, 0), (555, 2),
              (600, "LEG1"), (624, "1"), (683, 2), (688, "A"), (689, "x"), (688, "B"),
              (689, "y"), (566, 1.5),
              (600, "LEG2"), (624, "2"), (566, 2.25)]
    m = parse(ENC.encode("8", 9, fields))
    legs = m.group(555)
    assert [(g.get_str(600), g.get_decimal(566)) for g in legs] == [("LEG1", "1.5"),
                                                                     ("LEG2", "2.25")]
    assert [(s.get_str(688), s.get_str(689)) for s in legs[0].group(683)] == [("A", "x"),
                                                                              ("B", "y")]


@pytest.mark.parametrize("fields, tag", [
    # nested count says 3, two entries follow
    ([(453, 1), (448, "p"), (452, 1), (802, 3), (523, "a"), (803, 1), (523, "b"), (803, 1)],
     802),
    # outer count says 2, one entry
    ([(453, 2), (448, "p"), (452, 1), (802, 1), (523, "a"), (803, 1)], 453),
    # nested entry does not start with its delimiter
    ([(453, 1), (448, "p"), (802, 1), (803, 1)], 802),
    # counts far above what the message can hold: refused before anything is built
    ([(453, 10**15), (448, "p")], 453),
    ([(453, 1), (448, "p"), (802, 999_999_999), (523, "a")], 802),
])
def test_malformed_groups_are_refused(fields, tag):
    m = parse(ENC.encode("D", 2, [*NOS, *fields]))
    with pytest.raises(FixGroupError) as info:
        m.check_groups()
    assert info.value.tag == tag and info.value.reason == 16
    with pytest.raises(FixGroupError):
        m.duplicate_tag()
    with pytest.raises(FixGroupError):
        for p in m.group(453):
            p.group(802)


def test_negative_and_non_numeric_counts():
    m = parse(ENC.encode("D", 2, [*NOS, (453, -1), (448, "p")]))
    with pytest.raises(FixGroupError):
        m.group(453)
    m = parse(ENC.encode("D", 2, [*NOS, (453, "x"), (448, "p")]))
    with pytest.raises(FixParseError) as info:
        m.check_groups()
    assert info.value.reason == 6


def test_depth_is_bounded(monkeypatch):
    """A group table that lets a group nest in itself: the walk stops at MAX_GROUP_DEPTH."""
    monkeypatch.setitem(GROUPS, 5000, (5001, frozenset((5000, 5001))))
    fields = [*NOS]
    for level in range(8):
        fields += [(5000, 1), (5001, f"lvl{level}")]
    m = parse(ENC.encode("D", 2, fields))
    with pytest.raises(FixGroupError) as info:
        m.check_groups()
    assert info.value.tag == 5000 and f"deeper than {MAX_GROUP_DEPTH}" in str(info.value)
    monkeypatch.setitem(GROUPS, 5000, (5001, frozenset((5000, 5001))))
    m = parse(ENC.encode("D", 2, [*NOS, *fields[len(NOS):len(NOS) + 2 * MAX_GROUP_DEPTH]]))
    entry = m.group(5000)[0]
    for _ in range(MAX_GROUP_DEPTH - 1):
        entry = entry.group(5000)[0]
    assert entry.depth == MAX_GROUP_DEPTH and entry.get_str(5001) == f"lvl{MAX_GROUP_DEPTH - 1}"


def test_duplicates_outside_groups_only():
    m = parse(ENC.encode("D", 2, [*NOS, *parties(MODEL)]))
    assert m.duplicate_tag() == 0          # 448 three times, inside the group
    m = parse(ENC.encode("D", 2, [*NOS, (58, "a"), (58, "b")]))
    assert m.duplicate_tag() == 58


# -- built by simplefix and QuickFIX ----------------------------------------------------------
ids = st.text(st.sampled_from("abcXYZ0123-_."), min_size=1, max_size=8)
models = st.lists(st.tuples(ids, st.integers(1, 80),
                            st.lists(st.tuples(ids, st.integers(1, 30)), max_size=4)),
                  min_size=1, max_size=5)


@given(models)
def test_simplefix_built_nested_groups(model):
    sm = simplefix.FixMessage()
    for tag, value in ((8, "FIX.4.4"), (35, "D"), (49, "CLIENT"), (56, "VENUE"), (34, 5),
                       (52, "20260101-00:00:00.000")):
        sm.append_pair(tag, value)
    for tag, value in NOS:
        sm.append_pair(tag, value)
    for tag, value in parties(model):
        sm.append_pair(tag, value)
    m = parse(sm.encode())
    assert read_parties(m) == model
    assert m.duplicate_tag() == 0


def test_quickfix_built_nested_groups():
    quickfix = pytest.importorskip("quickfix")
    fix44 = pytest.importorskip("quickfix44")
    msg = fix44.NewOrderSingle()
    header = msg.getHeader()
    header.setField(quickfix.SenderCompID("CLIENT"))
    header.setField(quickfix.TargetCompID("VENUE"))
    header.setField(quickfix.MsgSeqNum(3))
    header.setField(quickfix.SendingTime())
    msg.setField(quickfix.ClOrdID("c1"))
    msg.setField(quickfix.Symbol("AAPL"))
    msg.setField(quickfix.Side("1"))
    msg.setField(quickfix.TransactTime())
    msg.setField(quickfix.OrdType("2"))
    for pid, role, subs in MODEL:
        party = fix44.NewOrderSingle.NoPartyIDs()
        party.setField(quickfix.PartyID(pid))
        party.setField(quickfix.PartyIDSource("D"))
        party.setField(quickfix.PartyRole(role))
        for sid, stype in subs:
            sub = fix44.NewOrderSingle.NoPartyIDs.NoPartySubIDs()
            sub.setField(quickfix.PartySubID(sid))
            sub.setField(quickfix.PartySubIDType(stype))
            party.addGroup(sub)
        msg.addGroup(party)
    alloc = fix44.NewOrderSingle.NoAllocs()
    alloc.setField(quickfix.AllocAccount("acc1"))
    nested = fix44.NewOrderSingle.NoAllocs.NoNestedPartyIDs()
    nested.setField(quickfix.NestedPartyID("np1"))
    nsub = fix44.NewOrderSingle.NoAllocs.NoNestedPartyIDs.NoNestedPartySubIDs()
    nsub.setField(quickfix.NestedPartySubID("s1"))
    nsub.setField(quickfix.NestedPartySubIDType(7))
    nested.addGroup(nsub)
    alloc.addGroup(nested)
    alloc.setField(quickfix.AllocQty(100))
    msg.addGroup(alloc)
    m = parse(msg.toString().encode())
    assert read_parties(m) == MODEL
    a = m.group(78)[0]
    assert a.get_str(79) == "acc1" and a.get_int(80) == 100
    s = a.group(539)[0].group(804)[0]
    assert (s.get_str(545), s.get_int(805)) == ("s1", 7)


def test_encoder_nested_groups_parse_in_quickfix(qf_dictionary):
    quickfix = pytest.importorskip("quickfix")
    fix44 = pytest.importorskip("quickfix44")
    dd = quickfix.DataDictionary(qf_dictionary)
    raw = ENC.encode("D", 2, [*NOS, *parties(MODEL)])
    qm = quickfix.Message(raw.decode(), dd, True)     # QuickFIX validates the structure
    got = []
    for i in range(1, int(qm.getField(453)) + 1):
        party = fix44.NewOrderSingle.NoPartyIDs()
        qm.getGroup(i, party)
        subs = []
        if party.isSetField(802):
            for k in range(1, int(party.getField(802)) + 1):
                sub = fix44.NewOrderSingle.NoPartyIDs.NoPartySubIDs()
                party.getGroup(k, sub)
                subs.append((sub.getField(523), int(sub.getField(803))))
        got.append((party.getField(448), int(party.getField(452)), subs))
    assert got == MODEL


def test_table_nests_only_known_groups():
    for count_tag, (delimiter, members) in GROUPS.items():
        assert delimiter in members and count_tag not in members
    assert 802 in GROUPS[453][1] and 804 in GROUPS[539][1] and 539 in GROUPS[555][1]
