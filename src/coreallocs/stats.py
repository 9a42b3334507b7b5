"""Statistics records (allocators, object pools) and a text-table renderer."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, fields
from typing import Any

from coreallocs.errors import NotInitialized

__all__ = ["AllocatorStats", "ObjectPoolStats", "format_table"]


def _missing_field(record: object, name: str) -> Any:
    """``__getattr__`` of the records: only reached for a field that was never set."""
    if name in {f.name for f in fields(record)}:  # type: ignore[arg-type]
        raise NotInitialized(f"this {type(record).__name__} was made with __new__; its fields "
                             f"are set by its constructor")
    raise AttributeError(f"{type(record).__name__!r} object has no attribute {name!r}")


@dataclass(frozen=True, slots=True)
class AllocatorStats:
    """A snapshot of one allocator (or one size class of a slab allocator).

    ``capacity``, ``in_use`` and ``high_water`` count blocks for pools and bytes for
    arenas (see ``unit``). ``bytes_requested`` / ``bytes_reserved`` describe the
    memory currently live: their gap is internal fragmentation.
    """

    name: str
    unit: str  # "blocks" or "bytes"
    block_size: int  # 0 for arenas
    capacity: int
    in_use: int
    high_water: int
    allocations: int
    releases: int
    failures: int
    bytes_requested: int
    bytes_reserved: int
    fallback_allocations: int = 0
    resets: int = 0

    def __getattr__(self, name: str) -> Any:
        return _missing_field(self, name)

    @property
    def available(self) -> int:
        return self.capacity - self.in_use

    @property
    def fragmentation(self) -> float:
        """Share of reserved live bytes that nobody asked for (0.0 when nothing is live)."""
        if self.bytes_reserved == 0:
            return 0.0
        return 1.0 - self.bytes_requested / self.bytes_reserved

    def as_dict(self) -> dict[str, object]:
        data = asdict(self)
        data["fragmentation"] = self.fragmentation
        return data

    def report(self) -> str:
        return format_table([self])


@dataclass(frozen=True)
class ObjectPoolStats:
    """A consistent snapshot of an :class:`~coreallocs.ObjectPool`'s counters."""

    name: str
    max_size: int
    created: int  # objects built by the factory
    reused: int  # acquisitions served from the idle list
    dropped: int  # returned objects discarded (pool full, reset failed, pool closed/cleared)
    detached: int  # objects handed over for good with ``detach()``
    in_use: int  # objects currently held through a guard
    idle: int  # objects waiting in the pool
    high_water: int  # largest ``in_use`` seen
    reclaimed: int  # objects returned by the GC safety net (a guard dropped unreleased)
    reset_failures: int  # ``reset(obj)`` raised; the object was dropped (also in ``dropped``)

    def __getattr__(self, name: str) -> Any:
        return _missing_field(self, name)

    def as_dict(self) -> dict[str, int | str]:
        return asdict(self)


_COLUMNS = (
    ("name", "name", "{}"),
    ("block", "block_size", "{}"),
    ("capacity", "capacity", "{}"),
    ("in use", "in_use", "{}"),
    ("high water", "high_water", "{}"),
    ("allocs", "allocations", "{}"),
    ("releases", "releases", "{}"),
    ("failures", "failures", "{}"),
    ("requested B", "bytes_requested", "{}"),
    ("reserved B", "bytes_reserved", "{}"),
    ("frag", "fragmentation", "{:.1%}"),
)


def format_table(rows: Iterable[AllocatorStats]) -> str:
    """Render stats records as an aligned plain-text table, one row per record."""
    cells = [[title for title, _, _ in _COLUMNS]]
    for row in rows:
        cells.append([fmt.format(getattr(row, attr)) for _, attr, fmt in _COLUMNS])
    widths = [max(len(r[i]) for r in cells) for i in range(len(_COLUMNS))]
    lines = []
    for n, r in enumerate(cells):
        lines.append(
            "  ".join(
                c.rjust(w) if i else c.ljust(w)
                for i, (c, w) in enumerate(zip(r, widths, strict=True))
            )
        )
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)
