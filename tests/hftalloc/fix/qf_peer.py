"""A QuickFIX peer in its own process, driven by JSON lines on stdin (answers on stdout).

    python qf_peer.py initiator|acceptor SETTINGS_FILE

QuickFIX's Python binding runs its own threads and can crash the interpreter on some
shutdown paths (SocketAcceptor.stop()), so the tests run it here, in a child process,
never inside pytest, and the process ends with os._exit after its last answer.
Commands: ``state``, ``orders`` (start, count), ``resend_request`` (begin),
``jump`` (by), ``reset`` (by), ``quit``. Every answer carries the current state.
"""

from __future__ import annotations

import json
import os
import sys
import threading

import quickfix as fix
import quickfix44 as fix44


def copy_sid(sid):
    return fix.SessionID(sid.getBeginString().getValue(), sid.getSenderCompID().getValue(),
                         sid.getTargetCompID().getValue())


class Peer(fix.Application):
    def __init__(self, venue: bool) -> None:
        super().__init__()
        self.venue = venue
        self.sid = None
        self.lock = threading.Lock()
        self.logons = 0
        self.session_rejects: list[str] = []
        self.resend_requests = 0
        self.sequence_resets = 0
        self.fills: set[str] = set()
        self.acks: set[str] = set()
        self.orders: set[str] = set()
        self.order_msgs = 0
        self.snapshots = 0
        self.exec_id = 0

    def onCreate(self, sid):
        self.sid = copy_sid(sid)

    def onLogon(self, sid):
        with self.lock:
            self.logons += 1

    def onLogout(self, sid):
        pass

    def toAdmin(self, msg, sid):
        pass

    def fromAdmin(self, msg, sid):
        mt = msg.getHeader().getField(35)
        with self.lock:
            if mt == "3":
                self.session_rejects.append(msg.toString().replace("\x01", "|"))
            elif mt == "2":
                self.resend_requests += 1
            elif mt == "4":
                self.sequence_resets += 1

    def toApp(self, msg, sid):
        pass

    def fromApp(self, msg, sid):
        mt = msg.getHeader().getField(35)
        if mt == "8":
            with self.lock:
                (self.fills if msg.getField(150) == "F" else self.acks).add(msg.getField(11))
        elif mt == "W":
            with self.lock:
                self.snapshots += 1
        elif mt == "D" and self.venue:
            with self.lock:
                self.order_msgs += 1
                self.orders.add(msg.getField(11))
                n = self.order_msgs
            for exec_type, status, leaves, cum in (("0", "0", 100, 0), ("F", "2", 0, 100)):
                with self.lock:
                    self.exec_id += 1
                    exec_id = self.exec_id
                er = fix44.ExecutionReport()
                for tag, value in ((37, f"Q{n}"), (17, f"X{exec_id}"), (150, exec_type),
                                   (39, status), (55, msg.getField(55)), (54, msg.getField(54)),
                                   (151, leaves), (14, cum),
                                   (6, msg.getField(44) if cum else 0), (11, msg.getField(11))):
                    er.setField(tag, str(value))
                fix.Session.sendToTarget(er, self.sid)
        elif mt == "V" and self.venue:
            snap = fix44.MarketDataSnapshotFullRefresh()
            snap.setField(fix.MDReqID(msg.getField(262)))
            snap.setField(fix.Symbol("AAPL"))
            for level in range(10):
                for side, px in (("0", 99.99 - level * 0.01), ("1", 100.01 + level * 0.01)):
                    g = fix44.MarketDataSnapshotFullRefresh.NoMDEntries()
                    g.setField(fix.MDEntryType(side))
                    g.setField(fix.MDEntryPx(round(px, 2)))
                    g.setField(fix.MDEntrySize(100 * (level + 1)))
                    snap.addGroup(g)
            fix.Session.sendToTarget(snap, self.sid)

    def state(self) -> dict:
        with self.lock:
            return {"logons": self.logons, "fills": len(self.fills), "acks": len(self.acks),
                    "orders": len(self.orders), "order_msgs": self.order_msgs,
                    "session_rejects": self.session_rejects[:5],
                    "resend_requests": self.resend_requests,
                    "sequence_resets": self.sequence_resets, "snapshots": self.snapshots}


def order(i: int):
    m = fix44.NewOrderSingle()
    m.setField(fix.ClOrdID(f"c{i}"))
    m.setField(fix.Side(fix.Side_BUY))
    m.setField(fix.TransactTime())
    m.setField(fix.OrdType(fix.OrdType_LIMIT))
    m.setField(fix.Symbol("AAPL"))
    m.setField(fix.OrderQty(100))
    m.setField(fix.Price(100.5))
    return m


def main() -> None:
    role, settings_path = sys.argv[1], sys.argv[2]
    peer = Peer(venue=role == "acceptor")
    settings = fix.SessionSettings(settings_path)
    store = fix.FileStoreFactory(settings)
    engine = (fix.SocketInitiator if role == "initiator" else fix.SocketAcceptor)(
        peer, store, settings)
    engine.start()

    def reply(**extra) -> None:
        sys.stdout.write(json.dumps({**peer.state(), **extra}) + "\n")
        sys.stdout.flush()

    reply(event="started")
    for line in sys.stdin:
        cmd = json.loads(line)
        name = cmd["cmd"]
        session = fix.Session.lookupSession(peer.sid) if peer.sid is not None else None
        if name == "orders":
            for i in range(cmd["start"], cmd["start"] + cmd["count"]):
                fix.Session.sendToTarget(order(i), peer.sid)
            reply()
        elif name == "resend_request":
            rr = fix44.ResendRequest()
            rr.setField(fix.BeginSeqNo(cmd.get("begin", 1)))
            rr.setField(fix.EndSeqNo(0))
            fix.Session.sendToTarget(rr, peer.sid)
            reply()
        elif name == "jump":
            session.setNextSenderMsgSeqNum(session.getExpectedSenderNum() + cmd["by"])
            reply(next=session.getExpectedSenderNum())
        elif name == "reset":
            new = session.getExpectedSenderNum() + cmd["by"]
            reset = fix44.SequenceReset()
            reset.setField(fix.NewSeqNo(new))
            fix.Session.sendToTarget(reset, peer.sid)
            session.setNextSenderMsgSeqNum(new)
            reply(next=new)
        elif name == "quit":
            reply()
            break
        else:
            reply()
    # SocketAcceptor.stop() of the Python binding can segfault while its threads call
    # back into Python; the results are reported, so the process ends without it
    os._exit(0)


if __name__ == "__main__":
    main()
