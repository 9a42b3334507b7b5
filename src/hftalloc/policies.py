"""The bus's modes, exhaustion policies and message states: one definition for every core.

The compiled message module (``hftalloc._message``) declares the same numbers as C enums
in ``_message.pxd`` and refuses to import if they differ from the ones here.
"""

from __future__ import annotations

__all__ = [
    "ABORTED",
    "BLOCK",
    "CLAIMED",
    "COMMITTED",
    "DROP",
    "IN_FLIGHT",
    "MODES",
    "NOT_INITIALISED",
    "POLICIES",
    "RAISE",
    "RELEASED",
    "RETAINED",
    "STATE_NAMES",
]

MODES = ("sync", "async")
"""``sync``: publish runs the subscribers inline; ``async``: a task on the loop does."""

POLICIES = ("raise", "drop", "block")
"""What a full size class does to a publish: raise BusFull, drop it (counted), or wait."""
RAISE, DROP, BLOCK = range(3)

# Message states. Every state below CLAIMED gives no access to the memory.
NOT_INITIALISED = 0  # made without its owner (``Message.__new__``): every call refuses
RELEASED = 1  # the memory went back (or waits, held by a leaked view)
COMMITTED = 2  # a claim handed over to its channel (the memory is no longer the claimer's)
ABORTED = 3  # a claim given back without publishing
CLAIMED = 4  # writable by its claimer until commit/abort
IN_FLIGHT = 5  # published, subscribers running
RETAINED = 6  # dispatch over, kept by retain()
STATE_NAMES = ("not initialised", "released", "committed", "aborted", "claimed",
               "in flight", "retained")
