"""A high-dynamic-range (HDR-style, log-linear) histogram of non-negative integers.

Values below ``2**SUB_BITS`` (256) are counted exactly; above, each power of two is
split into 128 equal buckets, so any recorded value is known to within 1/128 (< 0.8 %)
from 0 ns up to about 4.9 hours. Recording is a few integer operations and one array
increment; the counts live in an ``array('Q')`` that the compiled bus core updates in
place (same layout, see ``bucket_index``).

Layout of :attr:`Histogram.counts`: 4 header slots ``[count, sum, min, max]`` followed
by ``NUM_BUCKETS`` bucket counters.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

__all__ = [
    "HEADER",
    "MAX_VALUE",
    "NUM_BUCKETS",
    "SUB_BITS",
    "Histogram",
    "LatencySummary",
    "bucket_bounds",
    "bucket_index",
]

SUB_BITS = 8
_HALF = 1 << (SUB_BITS - 1)
MAX_BITS = 44
MAX_VALUE = (1 << MAX_BITS) - 1  # larger values land in the last bucket (max stays exact)
NUM_BUCKETS = ((MAX_BITS - SUB_BITS) << (SUB_BITS - 1)) + (1 << SUB_BITS)
HEADER = 4  # count, sum, min, max
_COUNT, _SUM, _MIN, _MAX = range(HEADER)
_NO_MIN = (1 << 64) - 1
STANDARD_PERCENTILES = (50.0, 90.0, 99.0, 99.9)


def bucket_index(value: int) -> int:
    """Bucket of a non-negative ``value`` (values above MAX_VALUE are clamped)."""
    if value < (1 << SUB_BITS):
        return value
    if value > MAX_VALUE:
        value = MAX_VALUE
    shift = value.bit_length() - SUB_BITS
    return (shift << (SUB_BITS - 1)) + (value >> shift)


def bucket_bounds(index: int) -> tuple[int, int]:
    """Smallest and largest value counted in bucket ``index``."""
    if index < (1 << SUB_BITS):
        return index, index
    shift = (index >> (SUB_BITS - 1)) - 1
    low = (index - (shift << (SUB_BITS - 1))) << shift
    return low, low + (1 << shift) - 1


@dataclass(frozen=True, slots=True)
class LatencySummary:
    """Percentiles of a histogram, in the histogram's unit (ns for the bus)."""

    count: int
    mean: float
    p50: int
    p90: int
    p99: int
    p999: int
    max: int

    def format(self, unit: str = "ns") -> str:
        if not self.count:
            return "no samples"
        return (
            f"n={self.count} mean={self.mean:.0f}{unit} p50={self.p50}{unit} "
            f"p90={self.p90}{unit} p99={self.p99}{unit} p99.9={self.p999}{unit} "
            f"max={self.max}{unit}"
        )


class Histogram:
    """Log-linear histogram with exact count, sum, min and max."""

    __slots__ = ("counts",)

    def __init__(self) -> None:
        self.counts = array("Q", bytes(8 * (HEADER + NUM_BUCKETS)))
        self.counts[_MIN] = _NO_MIN

    def __copy__(self) -> Histogram:
        """An independent snapshot (a bus keeps recording into its own counts)."""
        other = Histogram.__new__(Histogram)
        other.counts = array("Q", self.counts)
        return other

    def __deepcopy__(self, memo: Any) -> Histogram:
        return self.__copy__()

    # -- recording ----------------------------------------------------------------
    def record(self, value: int) -> None:
        """Count one non-negative integer value."""
        if value < 0:
            raise ValueError(f"histogram values must be >= 0, got {value}")
        c = self.counts
        c[HEADER + bucket_index(value)] += 1
        c[_COUNT] += 1
        c[_SUM] = (c[_SUM] + value) & _NO_MIN
        if value < c[_MIN]:
            c[_MIN] = value
        if value > c[_MAX]:
            c[_MAX] = min(value, _NO_MIN)

    def record_many(self, values: Iterable[int]) -> None:
        for value in values:
            self.record(value)

    def merge(self, other: Histogram) -> None:
        """Add every sample of ``other`` to this histogram."""
        a, b = self.counts, other.counts
        if not b[_COUNT]:
            return
        for i in range(HEADER, HEADER + NUM_BUCKETS):
            if b[i]:
                a[i] += b[i]
        a[_COUNT] += b[_COUNT]
        a[_SUM] = (a[_SUM] + b[_SUM]) & _NO_MIN
        a[_MIN] = min(a[_MIN], b[_MIN])
        a[_MAX] = max(a[_MAX], b[_MAX])

    def reset(self) -> None:
        c = self.counts
        for i in range(len(c)):
            c[i] = 0
        c[_MIN] = _NO_MIN

    # -- queries --------------------------------------------------------------------
    @property
    def count(self) -> int:
        return self.counts[_COUNT]

    @property
    def min(self) -> int:
        return self.counts[_MIN] if self.counts[_COUNT] else 0

    @property
    def max(self) -> int:
        return self.counts[_MAX]

    @property
    def mean(self) -> float:
        n = self.counts[_COUNT]
        return self.counts[_SUM] / n if n else 0.0

    def percentile(self, q: float) -> int:
        """Smallest value v such that at least q % of the samples are <= v (to 1/128).

        Reports the top of the bucket that holds the q-th sample, clamped to the
        exact min/max; 0 for an empty histogram.
        """
        return self.percentiles((q,))[0]

    def percentiles(self, qs: Iterable[float]) -> list[int]:
        """:meth:`percentile` for several q at once (one pass over the buckets)."""
        qs = list(qs)
        for q in qs:
            if not 0.0 <= q <= 100.0:
                raise ValueError(f"percentile must be within [0, 100], got {q}")
        c = self.counts
        total = c[_COUNT]
        if not total:
            return [0] * len(qs)
        lo, hi = c[_MIN], c[_MAX]
        order = sorted(range(len(qs)), key=qs.__getitem__)
        ranks = [max(1, -(-round(qs[k] * 1000) * total // 100_000)) for k in order]
        out = [0] * len(qs)
        seen = 0
        j = 0
        for i in range(NUM_BUCKETS):
            n = c[HEADER + i]
            if not n:
                continue
            seen += n
            while j < len(order) and ranks[j] <= seen:
                out[order[j]] = min(max(bucket_bounds(i)[1], lo), hi)
                j += 1
            if j == len(order):
                break
        for k in order[j:]:
            out[k] = hi
        return out

    def summary(self) -> LatencySummary:
        p50, p90, p99, p999 = self.percentiles(STANDARD_PERCENTILES)
        return LatencySummary(self.count, self.mean, p50, p90, p99, p999, self.max)

    def copy(self) -> Histogram:
        h = Histogram()
        h.counts = array("Q", self.counts)
        return h

    def __repr__(self) -> str:
        return f"<Histogram {self.summary().format()}>"
