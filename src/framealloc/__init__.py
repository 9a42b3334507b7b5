"""framealloc: a double-buffered frame allocator and game loop on top of coreallocs.

- :class:`FrameAllocator`: N rotating frame buffers (2 by default) of scratch
  memory -- blocks and numpy arrays -- reset in O(1) by ``swap()``; frame ``k``'s
  data stays readable in frame ``k+1``. Views that outlive their frame are caught
  by ``swap()`` (policies ``strict`` / ``warn`` / ``detach``), handles go stale.
- :class:`PersistentArea`: pool-backed memory for data that outlives frames.
- :class:`FrameObjects`: frame-scoped Python records (``allocator.objects(cls)``),
  taken back at ``swap()`` unless still referenced.
- :class:`GameLoop`: fixed-timestep update / variable render loop with per-frame
  statistics, headless or with a pygame window; ``gc="frame"`` paces the cyclic GC
  by frames (:class:`FrameGC`).
"""

from __future__ import annotations

from framealloc.allocator import FrameAllocator
from framealloc.clocks import FixedStepClock, ManualClock
from framealloc.errors import FrameLeakError, FrameLeakWarning, FrameOverflow, StaleFrameError
from framealloc.gcpolicy import FrameGC, GCPressureWarning, GCTotals
from framealloc.loop import Frame, GameLoop
from framealloc.objects import FrameObjects
from framealloc.persistent import PersistentArea
from framealloc.policies import LeakPolicy, OverflowPolicy
from framealloc.stats import FrameAllocatorStats, LoopStats

__version__ = "0.1.0"

__all__ = [
    "FixedStepClock",
    "Frame",
    "FrameAllocator",
    "FrameAllocatorStats",
    "FrameGC",
    "FrameLeakError",
    "FrameLeakWarning",
    "FrameObjects",
    "FrameOverflow",
    "GCPressureWarning",
    "GCTotals",
    "GameLoop",
    "LeakPolicy",
    "LoopStats",
    "ManualClock",
    "OverflowPolicy",
    "PersistentArea",
    "StaleFrameError",
]
