"""Counters of one FIX session (or of an acceptor's connections)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

__all__ = ["SessionStats"]


@dataclass
class SessionStats:
    """What a session sent, received, rejected and dropped; every anomaly has a counter."""

    messages_in: int = 0
    messages_out: int = 0
    app_in: int = 0
    app_out: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    logons: int = 0
    logouts: int = 0
    disconnects: int = 0
    heartbeats_out: int = 0
    test_requests_out: int = 0
    heartbeat_timeouts: int = 0
    resend_requests_in: int = 0
    resend_requests_out: int = 0
    resent: int = 0
    gap_fills_out: int = 0
    gap_fills_in: int = 0
    sequence_resets_in: int = 0
    duplicates_ignored: int = 0
    queued_out_of_order: int = 0
    queue_overflows: int = 0
    seq_too_low: int = 0
    rejects_out: int = 0
    rejects_in: int = 0
    garbled: int = 0
    bad_checksum: int = 0
    bad_body_length: int = 0
    garbage_bytes: int = 0
    oversize: int = 0
    missing_tags: int = 0
    bad_raw_data: int = 0        # length/data pairs that do not fit (Reject 373=5)
    bad_groups: int = 0          # malformed repeating groups (Reject 373=16)
    unknown_msg_type: int = 0
    compid_errors: int = 0
    bad_begin_string: int = 0
    not_logon_first: int = 0
    app_errors: int = 0          # application callbacks that raised (logged, session goes on)
    inbound_reads: int = 0       # reads from the transport
    inbound_in_place: int = 0    # messages committed on the bus from the block they landed in
    inbound_copied: int = 0      # messages published on the bus as a copy
    inbound_moved_bytes: int = 0  # bytes moved: carried to the next block, tails compacted
    inbound_reclaims: int = 0    # a message moved to a block of its MsgType or size
    inbound_claim_failures: int = 0  # no bus block (full, too large): own buffer instead

    def as_dict(self) -> dict[str, int]:
        return asdict(self)

    def add(self, other: SessionStats) -> None:
        """Add ``other``'s counters to these."""
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))

    def format(self) -> str:
        """Non-zero counters as ``name=value`` pairs."""
        return " ".join(f"{k}={v}" for k, v in self.as_dict().items() if v) or "(idle)"
