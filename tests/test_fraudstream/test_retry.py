"""The retry helper: transient errors are tried again with doubling waits, others raised."""

import doctest

import pytest

from fraudstream import retry as retry_module
from fraudstream.retry import is_lock_error, retry


def failing(times: int, error: Exception):
    calls = []

    def work():
        calls.append(1)
        if len(calls) <= times:
            raise error
        return len(calls)

    return work, calls


def test_transient_errors_are_retried_with_doubling_waits_up_to_a_cap():
    work, _ = failing(5, RuntimeError("database is locked"))
    waits, told = [], []
    assert retry(work, transient=is_lock_error, sleep=waits.append,
                 on_retry=lambda exc, n: told.append(n)) == 6  # fmt: skip
    assert waits == [0.2, 0.4, 0.8, 1.6, 2.0]
    assert told == [1, 2, 3, 4, 5]


def test_other_errors_and_the_last_attempt_raise():
    work, calls = failing(1, ValueError("no such column"))
    with pytest.raises(ValueError):
        retry(work, transient=is_lock_error, sleep=lambda s: None)
    assert len(calls) == 1
    work, calls = failing(10, RuntimeError("database is busy"))
    with pytest.raises(RuntimeError, match="busy"):
        retry(work, transient=is_lock_error, attempts=3, sleep=lambda s: None)
    assert len(calls) == 3


def test_docstring_examples_run():
    assert doctest.testmod(retry_module).failed == 0
