"""coreallocs: Cython memory allocators with a Python-safe API.

- :class:`Pool`: fixed-size blocks from one contiguous slab, O(1) free list.
- :class:`SlabAllocator`: power-of-two size classes routed to pools in O(1).
- :class:`Arena`: bump allocator with mark/rewind and O(1) reset.
- Blocks support the buffer protocol and release via ``release()``, ``with`` or GC.
- RAII helpers: :class:`ObjectPool` (reusable Python objects), typed boxes
  (``SlabAllocator.box``) and hierarchical :class:`ResourceScope`.

C-level API: ``from coreallocs cimport pool_alloc, pool_free, ...`` (see
``coreallocs/_core.pxd``); compile with ``include_dirs=[coreallocs.get_include()]``.

Allocators, blocks, pools, guards, boxes and scopes refuse ``copy``, ``deepcopy`` and
``pickle`` (TypeError): each owns memory or a loan that a duplicate would share. An
arena :class:`Mark` is an immutable value (a copy is the mark itself).
"""

from __future__ import annotations

import os

from coreallocs._core import Arena, Block, Mark, Pool, SlabAllocator
from coreallocs.boxes import Box
from coreallocs.errors import (
    AllocatorClosed,
    AllocatorError,
    ArenaOverflow,
    BlocksStillLive,
    BufferStillExported,
    DoubleRelease,
    ForeignBlock,
    InvalidAlignment,
    InvalidMark,
    InvalidSize,
    NotInitialized,
    OutOfMemory,
    PoolExhausted,
    SizeTooLarge,
    StaleHandle,
    UseAfterRelease,
)
from coreallocs.object_pool import ObjectPool, ObjectPoolStats, PooledObject
from coreallocs.scope import ResourceScope, ScopeClosed, ScopeGuard
from coreallocs.stats import AllocatorStats, format_table

__version__ = "0.1.0"


def get_include() -> str:
    """Directory to add to ``include_dirs`` when cimporting coreallocs from Cython."""
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


__all__ = [
    "AllocatorClosed",
    "AllocatorError",
    "AllocatorStats",
    "Arena",
    "ArenaOverflow",
    "Block",
    "BlocksStillLive",
    "Box",
    "BufferStillExported",
    "DoubleRelease",
    "ForeignBlock",
    "InvalidAlignment",
    "InvalidMark",
    "InvalidSize",
    "Mark",
    "NotInitialized",
    "ObjectPool",
    "ObjectPoolStats",
    "OutOfMemory",
    "Pool",
    "PoolExhausted",
    "PooledObject",
    "ResourceScope",
    "ScopeClosed",
    "ScopeGuard",
    "SizeTooLarge",
    "SlabAllocator",
    "StaleHandle",
    "UseAfterRelease",
    "format_table",
    "get_include",
]
