"""Reasons agree with the features they explain, and with the account's past recomputed from
scratch: every number a reason quotes is the one its event was scored on."""

from __future__ import annotations

import math
import re
import statistics
from collections import Counter
from datetime import UTC, datetime, timedelta

import numpy as np
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from fraudstream.geo import distance_km
from fraudstream.schema import Transaction
from stream_processor.features import (
    LABEL_FEATURE_NAMES,
    MIN_TRAVEL_H,
    AccountStates,
    feature,
)
from stream_processor.reasons import AMOUNT_RATIO, FAST_KMH, MIN_MEDIAN, explain

T0 = datetime(2026, 1, 5, 12, 0, tzinfo=UTC)
PLACES = ["Dublin", "Paris", "Madrid", "Athens", "Atlantis", None]  # Atlantis: not on the map
NEW_LOCATION = re.compile(r"new location (.+?)(?:, ([\d,]+) km from the account's usual place)?$")
SPEED = re.compile(r"([\d,]+) km/h from the previous location")
MEDIAN = re.compile(r"amount ([\d.]+)x account median \(([\d,.]+)\)")


def reasons_of(txn: Transaction, row: np.ndarray) -> list[str]:
    """The reasons of ``txn`` scored on ``row`` (the label inputs 0), flagged by the forest."""
    full = np.concatenate([row, np.zeros(len(LABEL_FEATURE_NAMES))])
    return explain(txn, full, 0.9, 0.5)


def number(text: str) -> float:
    return float(text.replace(",", ""))


def test_a_new_place_is_never_called_usual_by_the_event_that_brings_it():
    # An account with one earlier transaction, in Athens; then one in Dublin 40 minutes later.
    # Dublin is new, and Athens (not Dublin) is the usual place: the reason says how far it is,
    # the distance stored in log_home_km.
    states = AccountStates()
    sydney = Transaction("T1", "A", 20.0, "Shop", T0, "Athens")
    dublin = Transaction("T2", "A", 20.0, "Shop", T0 + timedelta(minutes=40), "Dublin")
    states.transform([sydney])
    [row] = states.transform([dublin])
    km = distance_km("Athens", "Dublin")
    assert math.isclose(math.expm1(feature(row, "log_home_km")), km, rel_tol=1e-9)
    reasons = reasons_of(dublin, row)
    assert f"new location Dublin, {km:,.0f} km from the account's usual place" in reasons
    assert f"{km / (40 / 60):,.0f} km/h from the previous location" in reasons


events = st.lists(
    st.tuples(
        st.sampled_from(["A1", "A2"]),
        st.floats(0, 600),  # minutes after the previous event: bursts, quick trips, long gaps
        st.sampled_from([0.0, 1.0, 20.0, 35.5, 400.0, 5000.0]),
        st.sampled_from(["Shop", "Fuel", "Grocer"]),
        st.sampled_from(PLACES),
    ),
    min_size=1,
    max_size=40,
)


@hypothesis_settings(max_examples=150, deadline=None)
@given(events)
def test_every_reason_agrees_with_the_stored_features_and_the_accounts_past(generated):
    states = AccountStates()
    past: dict[str, list[Transaction]] = {}
    minutes = 0.0
    for i, (account, gap, amount, merchant, place) in enumerate(generated):
        minutes += gap
        txn = Transaction(
            f"T{i}", account, amount, merchant, T0 + timedelta(minutes=minutes), place
        )
        [row] = states.transform([txn])  # one event a batch: the state right before it
        before = past.setdefault(account, [])
        check_reasons(txn, row, reasons_of(txn, row), before)
        before.append(txn)


def check_reasons(txn: Transaction, row, reasons: list[str], before: list[Transaction]) -> None:
    assert ("first transaction seen for this account" in reasons) == (not before)
    places = Counter(t.location for t in before if t.location is not None)

    # a new location: known, with history, never seen there; its distance from the usual place
    [new] = [NEW_LOCATION.match(r) for r in reasons if NEW_LOCATION.match(r)] or [None]
    is_new = bool(before) and txn.location is not None and txn.location not in places
    assert (new is not None) == is_new == (feature(row, "new_location") == 1)
    if new is not None:
        assert new.group(1) == txn.location
        top = max(places.values(), default=0)
        usual = [p for p, n in places.items() if n == top]  # ties: any of them; none: unknown
        away = [distance_km(p, txn.location) for p in usual]
        if new.group(2) is None:
            assert math.expm1(feature(row, "log_home_km")) < 0.5
            assert not away or any(d is None or d < 0.5 for d in away)
        else:
            km = number(new.group(2))
            assert km == round(math.expm1(feature(row, "log_home_km")))
            assert any(d is not None and abs(d - km) <= 0.5 + 1e-6 for d in away)

    # the speed from the previous event's place, both known and on the map
    [fast] = [SPEED.match(r) for r in reasons if SPEED.match(r)] or [None]
    speed = None
    if before and before[-1].location and txn.location:
        km = distance_km(before[-1].location, txn.location)
        hours = (txn.timestamp - before[-1].timestamp).total_seconds() / 3600
        speed = km / max(hours, MIN_TRAVEL_H) if km else None
    if fast is None:
        assert speed is None or speed < FAST_KMH * (1 + 1e-9)
    else:
        assert speed is not None and speed >= FAST_KMH * (1 - 1e-9)
        assert abs(number(fast.group(1)) - speed) <= 0.5 + 1e-6 * speed

    # the amount against the median of the account's past amounts
    [ratio] = [MEDIAN.match(r) for r in reasons if MEDIAN.match(r)] or [None]
    if before:
        median = statistics.median(t.amount for t in before)
        stands_out = median >= MIN_MEDIAN and txn.amount / median >= AMOUNT_RATIO * (1 + 1e-6)
        if ratio is None:
            assert not stands_out
        else:
            assert median >= MIN_MEDIAN and txn.amount / median >= AMOUNT_RATIO * (1 - 1e-6)
            assert math.isclose(number(ratio.group(2)), round(median, 2), abs_tol=0.011)
            assert math.isclose(float(ratio.group(1)), txn.amount / median, abs_tol=0.051)
    else:
        assert ratio is None
