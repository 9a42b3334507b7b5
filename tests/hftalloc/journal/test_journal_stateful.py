"""Hypothesis state machine: random appends, claims, rolls, reopens, seeks and tail reads
against a list model."""

from __future__ import annotations

import shutil
import tempfile

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from hftalloc.journal import JournalReader, JournalWriter, verify

SEGMENT = 64 * 1024
MAX = 3000
TOPICS = ["md.quote.A", "md.trade.B", "ord.new.C", "x"]


class JournalMachine(RuleBasedStateMachine):
    @initialize()
    def start(self):
        self.dir = tempfile.mkdtemp(prefix="hft-journal-")
        self.path = self.dir + "/j"
        self.writer = JournalWriter(self.path, segment_size=SEGMENT, max_payload=MAX,
                                    index_every=8, index_bytes=4096)
        self.model: list[tuple[str, int, bytes]] = []     # (topic, timestamp, payload)
        self.clock = 0
        self.tail = None
        self.tail_seen = 0

    def teardown(self):
        if getattr(self, "writer", None) is not None:
            self.writer.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    @rule(topic=st.sampled_from(TOPICS), size=st.integers(0, MAX), step=st.integers(-5, 50),
          fill=st.integers(0, 255))
    def append(self, topic, size, step, fill):
        self.clock += step                       # timestamps may go backwards
        data = bytes([fill]) * size
        seq = self.writer.append(topic, data, self.clock)
        self.model.append((topic, self.clock, data))
        assert seq == len(self.model)

    @rule(topic=st.sampled_from(TOPICS), size=st.integers(0, MAX), commit=st.booleans())
    def claim(self, topic, size, commit):
        self.clock += 1
        c = self.writer.claim(topic, size, self.clock)
        with memoryview(c) as mv:
            mv[:] = b"\xab" * size
        if commit:
            assert c.commit() == len(self.model) + 1
            self.model.append((topic, self.clock, b"\xab" * size))
        else:
            c.abort()

    @rule(count=st.integers(1, 40), size=st.integers(1000, MAX))
    def burst(self, count, size):
        """Enough bytes to roll a segment now and then."""
        for _ in range(count):
            self.append("x", size, 1, 7)

    @rule()
    def reopen(self):
        self.writer.close()
        assert verify(self.path).ok
        self.writer = JournalWriter(self.path)
        assert self.writer.next_seq == len(self.model) + 1

    @precondition(lambda self: self.model)
    @rule(data=st.data())
    def seek_seq(self, data):
        seq = data.draw(st.integers(1, len(self.model) + 1))
        got = [(r.seq, r.topic, r.timestamp, bytes(r)) for r in
               _take(JournalReader(self.path).seek(seq), 3)]
        want = [(s, *self.model[s - 1]) for s in range(seq, min(seq + 3, len(self.model) + 1))]
        assert got == want

    @precondition(lambda self: self.model)
    @rule(data=st.data())
    def seek_time(self, data):
        t = data.draw(st.integers(min(m[1] for m in self.model) - 1, self.clock + 1))
        first = next((i for i, m in enumerate(self.model) if m[1] >= t), None)
        got = [r.seq for r in _take(JournalReader(self.path).seek_time(t), 1)]
        assert got == ([] if first is None else [first + 1])

    @rule(pattern=st.sampled_from(["md.>", "*", "ord.*.C", ">"]))
    def filtered(self, pattern):
        from hftalloc.topics import matches

        got = [r.seq for r in JournalReader(self.path, topics=pattern)]
        assert got == [i + 1 for i, m in enumerate(self.model) if matches(pattern, m[0])]

    @rule()
    def tail_read(self):
        """A tail reader opened once picks up whatever was appended since its last read."""
        if self.tail is None:
            self.tail = JournalReader(self.path).tail(timeout=0)
        got = []
        while len(got) + self.tail_seen < len(self.model):
            got.append(next(self.tail))
        want = self.model[self.tail_seen:]
        assert [(r.topic, r.timestamp, bytes(r)) for r in got] == want
        assert [r.seq for r in got] == list(range(self.tail_seen + 1, len(self.model) + 1))
        self.tail_seen = len(self.model)

    @invariant()
    def all_records(self):
        if len(self.model) % 5:
            return                               # a full read now and then keeps it quick
        recs = [(r.topic, r.timestamp, bytes(r)) for r in JournalReader(self.path)]
        assert recs == self.model


def _take(it, n):
    out = []
    for rec in it:
        out.append(rec)
        if len(out) == n:
            break
    return out


JournalMachine.TestCase.settings = settings(stateful_step_count=30, deadline=None)
TestJournalMachine = JournalMachine.TestCase
