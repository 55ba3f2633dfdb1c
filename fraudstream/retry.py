"""The one way this project retries work that met a lock or a transient error: a few attempts,
the wait doubling between them; anything else is raised at once.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def is_lock_error(exc: BaseException) -> bool:
    """Whether ``exc`` says a database was locked or busy (SQLite's errors say so in words)."""
    text = str(exc).lower()  # "database is locked", "database table is locked", ...
    return "locked" in text or "busy" in text


def retry(
    work: Callable[[], T],
    *,
    transient: Callable[[BaseException], bool],
    attempts: int = 10,
    first_wait_s: float = 0.2,
    max_wait_s: float = 2.0,
    on_retry: Callable[[BaseException, int], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """``work()``, tried again while it raises an exception ``transient`` accepts, at most
    ``attempts`` times in all; waits ``first_wait_s``, then twice as long each time, never more
    than ``max_wait_s``. ``on_retry(exc, attempt)`` is told before each wait (to log it). The
    last attempt's exception, or any other, is raised.

    >>> tries = []
    >>> def flaky():
    ...     tries.append(1)
    ...     if len(tries) < 3:
    ...         raise RuntimeError("database is locked")
    ...     return "done"
    >>> retry(flaky, transient=is_lock_error, sleep=lambda s: None), len(tries)
    ('done', 3)
    """
    for attempt in range(1, attempts):
        try:
            return work()
        except Exception as exc:
            if not transient(exc):
                raise
            if on_retry is not None:
                on_retry(exc, attempt)
            sleep(min(max_wait_s, first_wait_s * 2 ** (attempt - 1)))
    return work()  # the last attempt
