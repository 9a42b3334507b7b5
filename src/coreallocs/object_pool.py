"""ObjectPool: a thread-safe pool of reusable Python objects with RAII guards.

``pool.acquire()`` hands out a :class:`PooledObject` guard. Use it as a context
manager (``with pool.acquire() as obj:``) or keep it and call ``release()`` /
``detach()``. An empty pool builds a new object with ``factory()``; a released
object goes back to the pool after ``reset(obj)`` unless the pool already holds
``max_size`` idle objects, in which case it is dropped and counted. A guard that
is garbage-collected while still holding its object returns it (counted in
``reclaimed``), so a forgotten ``release()`` does not leak.

Accounting invariant, at any time:
``created - dropped - detached == idle + in_use``.

The pool and its guards are compiled (``coreallocs._objpool``): a pool cycle costs
about as much as a hand-written free list. Thread safety comes from the GIL: every
state change is one C section between the points where Python code may run.
"""

from __future__ import annotations

from coreallocs._objpool import ObjectPool, PooledObject
from coreallocs.stats import ObjectPoolStats

__all__ = ["ObjectPool", "ObjectPoolStats", "PooledObject"]
