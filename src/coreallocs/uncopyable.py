"""Objects that own memory or a running loop cannot be copied or pickled.

A copy of a frame allocator, a game loop, a bridge or a network listener would share
the original's buffers, sockets, subscriptions and counters (a copy's ``swap()`` would
reset the original's frame), and a pickle cannot carry raw memory or live sockets. Such
objects refuse ``copy.copy``, ``copy.deepcopy`` and ``pickle`` with a ``TypeError``.
"""

from __future__ import annotations

from typing import Any, NoReturn

__all__ = ["Uncopyable"]


class Uncopyable:
    """Mixin: ``copy``, ``deepcopy`` and ``pickle`` raise ``TypeError``."""

    __slots__ = ()

    def _refuse(self, what: str) -> NoReturn:
        raise TypeError(
            f"{type(self).__name__} objects cannot be {what}: they own memory or state "
            f"that a second object would share; create a new one instead")

    def __copy__(self) -> NoReturn:
        self._refuse("copied")

    def __deepcopy__(self, memo: dict[int, Any]) -> NoReturn:
        self._refuse("copied")

    def __reduce_ex__(self, protocol: Any) -> NoReturn:
        self._refuse("pickled")

    def __reduce__(self) -> NoReturn:
        self._refuse("pickled")

    def __getstate__(self) -> NoReturn:
        self._refuse("pickled")
