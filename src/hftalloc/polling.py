"""``poll_until``: drive any polled transport until a condition holds or time runs out."""

from __future__ import annotations

import time
from collections.abc import Callable


def poll_until(poll: Callable[[], int], wait: Callable[[float], object],
               predicate: Callable[[], bool], timeout: float, *,
               max_wait: float = 0.05) -> bool:
    """Call ``poll()`` until ``predicate()`` is true or ``timeout`` seconds pass.

    ``poll()`` returns how many messages it handled; when it handled none, ``wait(s)``
    sleeps for up to ``s`` seconds (at most ``max_wait``) or until work arrives.
    Returns ``predicate()``.
    """
    deadline = time.monotonic() + timeout
    while not predicate():
        left = deadline - time.monotonic()
        if left <= 0:
            return predicate()
        if not poll():
            wait(min(left, max_wait))
    return True
