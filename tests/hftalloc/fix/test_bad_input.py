"""Malformed and hostile input sent to the acceptor from a raw socket: each case gets the
FIX spec's answer (ignore, Reject, Logout, disconnect) and a counter."""

from __future__ import annotations

import socket
import time

from hftalloc.fix import checksum

ORDER = [(11, "c1"), (55, "AAPL"), (54, "1"), (38, 10), (40, "2"), (44, 100.5),
         (60, "20260101-00:00:00.000")]


def stats(venue, peer="RAW"):
    return venue.acceptor.sessions[peer].stats


def wait_for(predicate, timeout=5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return False


def corrupt_checksum(data: bytes) -> bytes:
    digit = data[-2:-1]
    return data[:-2] + (b"1" if digit != b"1" else b"2") + b"\x01"


def test_bad_checksum_is_ignored_and_counted(venue, raw_peer):
    p = raw_peer()
    p.logon()
    good = p.enc.encode("1", p.seq, [(112, "after")])
    p.send_raw(corrupt_checksum(p.enc.encode("1", p.seq, [(112, "garbled")])))
    p.send_raw(good)                         # same MsgSeqNum: the garbled one was not counted
    p.seq += 1
    assert p.expect("0").get_str(112) == "after"
    assert stats(venue).bad_checksum == 1 and stats(venue).rejects_out == 0


def test_bad_body_length_is_ignored_and_counted(venue, raw_peer):
    p = raw_peer()
    p.logon()
    good = p.enc.encode("1", p.seq, [(112, "x")])
    at = good.index(b"\x019=") + 3
    end = good.index(b"\x01", at)
    p.send_raw(good[:at] + b"%d" % (int(good[at:end]) - 5) + good[end:])   # 5 B short
    p.send("1", [(112, "ok")])
    assert p.expect("0").get_str(112) == "ok"
    assert stats(venue).bad_body_length == 1


def test_garbage_before_begin_string(venue, raw_peer):
    p = raw_peer()
    p.logon()
    p.send_raw(b"\x00\xffnoise noise")
    p.send("1", [(112, "t")])
    assert p.expect("0").get_str(112) == "t"
    assert stats(venue).garbage_bytes == 13


def test_missing_required_tag_is_rejected(venue, raw_peer):
    p = raw_peer()
    p.logon()
    p.send("D", [f for f in ORDER if f[0] != 11])
    rej = p.expect("3")
    assert (rej.get_int(373), rej.get_int(371), rej.get_int(45)) == (1, 11, 2)
    p.send("D", ORDER)                       # the rejected message used its MsgSeqNum
    assert p.expect("8").get_str(150) == "0"
    assert stats(venue).missing_tags == 1


def test_unknown_msg_type_is_rejected(venue, raw_peer):
    p = raw_peer()
    p.logon()
    p.send("ZZ", [(58, "what")])
    rej = p.expect("3")
    assert rej.get_int(373) == 11 and rej.get_str(372) == "ZZ"
    assert stats(venue).unknown_msg_type == 1


def test_tag_without_value_is_rejected(venue, raw_peer):
    p = raw_peer()
    p.logon()
    body = b"35=D\x0149=RAW\x0156=VENUE\x0134=2\x0152=20260101-00:00:00.000\x0158=\x01"
    head = b"8=FIX.4.4\x019=%d\x01" % len(body)
    p.send_raw(head + body + b"10=%03d\x01" % checksum(head + body))
    rej = p.expect("3")
    assert rej.get_int(373) == 4 and rej.get_int(371) == 58 and rej.get_int(45) == 2


def test_oversized_message_disconnects(venue, raw_peer):
    p = raw_peer()
    p.logon()
    p.send_raw(b"8=FIX.4.4\x019=900000\x0135=D\x01")
    assert p.closed()
    assert stats(venue).oversize == 1


def test_one_byte_at_a_time(venue, raw_peer):
    p = raw_peer()
    p.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    data = p.enc.encode("A", 1, [(98, 0), (108, 30), (141, "Y")])
    data += p.enc.encode("D", 2, ORDER)
    p.seq = 3
    for i in range(len(data)):
        p.send_raw(data[i:i + 1])
    assert p.expect("A")
    assert p.expect("8").get_str(11) == "c1"


def test_first_message_must_be_logon(venue, raw_peer):
    p = raw_peer()
    p.send("D", ORDER)
    assert p.closed()
    assert wait_for(lambda: venue.acceptor.stats.not_logon_first == 1)


def test_logon_timeout_closes_silent_connections(venue, raw_peer):
    p = raw_peer()
    assert p.closed(timeout=6.0)             # the venue fixture waits 3 s for a Logon


def test_seq_too_low_logs_out(venue, raw_peer):
    p = raw_peer()
    p.logon()
    p.send("1", [(112, "a")])
    p.expect("0")
    p.send("1", [(112, "b")], seq=2)          # 2 again, no PossDupFlag
    logout = p.expect("5")
    assert "too low" in logout.get_str(58)
    assert p.closed()
    assert stats(venue).seq_too_low == 1


def test_possdup_below_expected_is_ignored(venue, raw_peer):
    p = raw_peer()
    p.logon()
    p.send("D", ORDER)
    p.expect("8")
    p.send("D", ORDER, seq=2, poss_dup=True, orig_sending_time="20260101-00:00:00.000")
    p.send("1", [(112, "still here")])
    assert p.expect("0").get_str(112) == "still here"
    assert stats(venue).duplicates_ignored == 1


def test_seq_too_high_gets_a_resend_request(venue, raw_peer):
    p = raw_peer()
    p.logon()
    p.send("1", [(112, "x")], seq=5)
    rr = p.expect("2")
    assert (rr.get_int(7), rr.get_int(16)) == (2, 0)
    # fill the gap: 2..4 as a gap fill, then 5 again is processed from the queue
    p.send("4", [(123, "Y"), (36, 5)], seq=2, poss_dup=True,
           orig_sending_time="20260101-00:00:00.000")
    assert p.expect("0").get_str(112) == "x"
    assert stats(venue).resend_requests_out == 1 and stats(venue).gap_fills_in == 1


def test_sequence_reset_reset_mode(venue, raw_peer):
    p = raw_peer()
    p.logon()
    p.send("4", [(36, 50)], seq=999)          # reset mode: MsgSeqNum ignored
    p.seq = 50
    p.send("1", [(112, "after reset")])
    assert p.expect("0").get_str(112) == "after reset"
    p.send("4", [(36, 10)], seq=999)          # backwards: Reject, value out of range
    assert p.expect("3").get_int(373) == 5
    assert stats(venue).sequence_resets_in == 2


def test_resend_request_gets_possdup_and_gap_fill(venue, raw_peer):
    p = raw_peer()
    p.logon()                                 # venue seq 1: Logon
    p.send("D", ORDER)                        # venue seq 2, 3: ack and fill
    assert p.expect("8").get_str(150) == "0"
    assert p.expect("8").get_str(150) == "F"
    p.send("2", [(7, 1), (16, 0)])
    gap = p.expect("4")
    assert gap.seq_num == 1 and gap.get_str(123) == "Y" and gap.get_int(36) == 2
    first = p.expect("8")
    second = p.expect("8")
    assert [first.seq_num, second.seq_num] == [2, 3]
    assert first.get_str(43) == "Y" and first.has(122) and first.get_str(11) == "c1"


def test_wrong_begin_string_logs_out(venue, raw_peer):
    p = raw_peer()
    p.logon()
    from hftalloc.fix import FixEncoder
    old = FixEncoder("RAW", "VENUE", "FIX.4.2")
    p.send_raw(old.encode("1", p.seq, [(112, "x")]))
    assert p.expect("5").get_str(58).startswith("Incorrect BeginString")
    assert p.closed()


def test_wrong_comp_id_after_logon(venue, raw_peer):
    p = raw_peer()
    p.logon()
    from hftalloc.fix import FixEncoder
    p.send_raw(FixEncoder("RAW", "SOMEONE").encode("1", p.seq, [(112, "x")]))
    assert p.expect("3").get_int(373) == 9
    assert p.expect("5")
    assert stats(venue).compid_errors == 1


def test_silent_peer_gets_test_request_then_disconnect(venue, raw_peer):
    p = raw_peer()
    p.logon(heartbeat=1)
    test = p.expect("1", timeout=5)
    assert test.has(112)
    assert p.closed(timeout=5)
    assert stats(venue).heartbeat_timeouts == 1 and stats(venue).test_requests_out == 1


def test_connection_flood_is_bounded(venue):
    venue.acceptor.max_connections = 4
    socks = [socket.create_connection(("127.0.0.1", venue.port)) for _ in range(12)]
    try:
        assert wait_for(lambda: venue.acceptor.connections_refused == 8)
        assert len(venue.acceptor.connections) == 4
        for s in socks[4:]:                  # refused at once
            s.settimeout(1)
            assert s.recv(1) == b""
        for s in socks[:4]:                  # no Logon: closed after the logon timeout
            s.settimeout(6)
            assert s.recv(1) == b""
        assert wait_for(lambda: not venue.acceptor.connections)
    finally:
        for s in socks:
            s.close()


def test_raw_data_length_past_the_end_is_rejected(venue, raw_peer):
    p = raw_peer()
    p.logon()
    p.send("D", [*ORDER, (95, 3), (96, b"a\x01=")])          # a good one, SOH inside
    assert p.expect("8").get_str(150) == "0"
    good = p.enc.encode("D", p.seq, [*ORDER, (95, 3), (96, b"xyz")])
    head, _, _ = good.partition(b"95=3\x01")
    body = head[head.index(b"35="):] + b"95=900\x0196=xyz\x01"   # length past the end
    msg = b"8=FIX.4.4\x019=%d\x01" % len(body) + body
    p.send_raw(msg + b"10=%03d\x01" % checksum(msg))
    p.seq += 1
    rej = p.expect("3")
    assert (rej.get_int(373), rej.get_int(371)) == (5, 96)
    p.send("D", ORDER)                       # the rejected message used its MsgSeqNum
    assert p.expect("8").get_str(150) == "0"
    assert stats(venue).bad_raw_data == 1 and stats(venue).rejects_out == 1


def test_bad_nested_group_count_is_rejected(venue, raw_peer):
    p = raw_peer()
    p.logon()
    parties = [(453, 1), (448, "BRK"), (447, "D"), (452, 1), (802, 1), (523, "desk"),
               (803, 4)]
    p.send("D", [*ORDER, *parties])
    assert p.expect("8").get_str(150) == "0"
    bad = [(453, 1), (448, "BRK"), (447, "D"), (452, 1), (802, 5), (523, "desk"), (803, 4)]
    p.send("D", [*ORDER, *bad])
    rej = p.expect("3")
    assert (rej.get_int(373), rej.get_int(371)) == (16, 802)
    p.send("D", [*ORDER, (453, 10**12), (448, "BRK")])      # more than the message holds
    rej = p.expect("3")
    assert (rej.get_int(373), rej.get_int(371)) == (16, 453)
    assert stats(venue).bad_groups == 2 and venue.app.stats.orders == 1
