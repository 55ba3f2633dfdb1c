"""Wall-time counters around functions, for the per-stage benchmarks (stages, loop)."""

from __future__ import annotations

import functools
import time
from collections import Counter


def timed(owner, name: str, key: str, totals: Counter) -> None:
    """Replace ``owner.name`` (a function or method) with one that adds its wall time to
    ``totals[key]``."""
    original = getattr(owner, name)

    @functools.wraps(original)
    def wrapper(*args, **kwargs):
        started = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            totals[key] += time.perf_counter() - started

    setattr(owner, name, wrapper)
