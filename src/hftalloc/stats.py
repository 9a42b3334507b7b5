"""Statistics snapshots of a message bus and their text rendering."""

from __future__ import annotations

from dataclasses import dataclass, field

from coreallocs import AllocatorStats, format_table
from hftalloc.histogram import LatencySummary

__all__ = ["BusStats", "TopicStats"]


@dataclass(frozen=True, slots=True)
class TopicStats:
    """Counters of one topic. ``rejected``: refused with an exception (raise/block policy,
    oversize); ``dropped``: discarded by the ``drop`` policy."""

    topic: str
    published: int
    delivered: int
    dropped: int
    rejected: int
    errors: int


@dataclass(frozen=True, slots=True)
class BusStats:
    """A snapshot of a bus: totals, per-topic counters, pools and latency.

    ``leaked_views`` counts messages whose block could not be recycled at once because
    a subscriber kept a view without ``retain()``; ``deferred`` is how many of those
    are still held back now. ``retained``: messages kept alive by ``retain()``.
    ``blocked``: times a publisher waited for a free block (``block`` policy).
    """

    mode: str
    policy: str
    published: int
    delivered: int
    dropped: int
    rejected: int
    errors: int
    hook_errors: int
    aborted: int
    blocked: int
    leaked_views: int
    deferred: int
    retained: int
    queued: int
    latency: LatencySummary
    pools: list[AllocatorStats] = field(default_factory=list)
    topics: dict[str, TopicStats] = field(default_factory=dict)

    @property
    def pool_in_use(self) -> int:
        return sum(p.in_use for p in self.pools)

    def report(self, *, max_topics: int = 20) -> str:
        """Human-readable multi-line report (totals, latency, topics, pools)."""
        lines = [
            f"bus ({self.mode}, policy={self.policy}): published={self.published} "
            f"delivered={self.delivered} dropped={self.dropped} rejected={self.rejected} "
            f"errors={self.errors} aborted={self.aborted} blocked={self.blocked}",
            f"  leaked views={self.leaked_views} (still deferred={self.deferred}) "
            f"retained={self.retained} queued={self.queued}",
            f"  publish->deliver latency: {self.latency.format()}",
        ]
        if self.topics:
            rows = sorted(self.topics.values(), key=lambda t: -t.published)[:max_topics]
            width = max(len("topic"), *(len(t.topic) for t in rows))
            lines.append(f"  {'topic':<{width}}  {'published':>10}  {'delivered':>10}  "
                         f"{'dropped':>8}  {'rejected':>8}  {'errors':>6}")
            for t in rows:
                lines.append(f"  {t.topic:<{width}}  {t.published:>10}  {t.delivered:>10}  "
                             f"{t.dropped:>8}  {t.rejected:>8}  {t.errors:>6}")
            if len(self.topics) > len(rows):
                lines.append(f"  ... {len(self.topics) - len(rows)} more topics")
        if self.pools:
            lines.append("  " + format_table(self.pools).replace("\n", "\n  "))
        return "\n".join(lines)
