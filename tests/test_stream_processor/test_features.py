import math
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from fraudstream.schema import Transaction
from stream_processor import features
from stream_processor.features import (
    ANOMALY_FEATURE_NAMES,
    FEATURE_NAMES,
    SUPERVISED_FEATURE_NAMES,
    AccountStates,
    feature,
)

T0 = datetime(2026, 1, 5, 12, 0, tzinfo=UTC)


def txn(i, account="A1", amount=20.0, minutes=0.0, merchant="Shop", location="Paris"):
    return Transaction(
        f"T{i}", account, amount, merchant, T0 + timedelta(minutes=minutes), location
    )


def test_features_compare_an_event_with_the_accounts_own_past():
    states = AccountStates()
    history = [txn(i, minutes=i * 600) for i in range(10)]  # every 10 hours
    states.transform(history)
    [row] = states.transform([txn(99, amount=200.0, minutes=6000, location="Oslo", merchant="New")])
    assert feature(row, "amount_vs_median") > 2  # log(201 / 21)
    assert feature(row, "new_location") == 1 and feature(row, "new_merchant") == 1
    assert feature(row, "count_24h") == 2
    assert round(feature(row, "log_history"), 3) == round(__import__("math").log1p(10), 3)


def test_first_event_of_an_account_has_neutral_history_features():
    [row] = AccountStates().transform([txn(1)])
    assert feature(row, "amount_vs_median") == 0
    assert feature(row, "new_location") == 0 and feature(row, "new_merchant") == 0
    assert feature(row, "count_10m") == 0


def test_card_testing_burst_is_visible():
    events = [txn(i, amount=1.0, minutes=i) for i in range(4)] + [txn(9, amount=900, minutes=5)]
    rows = AccountStates().transform(events)
    assert feature(rows[-1], "small_10m") == 4
    assert feature(rows[-1], "count_10m") == 4
    assert rows.shape == (5, len(FEATURE_NAMES))


def test_accounts_do_not_share_state():
    rows = AccountStates().transform([txn(1, "A1"), txn(2, "A2", minutes=1)])
    assert feature(rows[1], "count_10m") == 0


def test_state_is_bounded_by_evicting_least_recently_seen_accounts():
    states = AccountStates(max_accounts=3, history=5)
    states.transform([txn(i, f"A{i}", minutes=i) for i in range(5)])
    assert len(states) == 3 and states.evicted == 2
    assert states.get("A0") is None and states.get("A4") is not None
    states.transform([txn(10 + i, "A4", minutes=10 + i) for i in range(20)])
    a4 = states.get("A4")
    assert len(a4.times) == len(a4.amounts) == len(a4.by_amount) == 5


def test_learn_rebuilds_the_same_state_as_transform():
    events = [txn(i, minutes=i * 3, amount=10 + i) for i in range(30)]
    a, b = AccountStates(), AccountStates()
    a.transform(events)
    b.learn(events)
    probe = txn(100, minutes=200, amount=80)
    assert (a.transform([probe]) == b.transform([probe])).all()


def test_travel_speed_and_distance_from_home_use_the_gazetteer():
    from fraudstream.geo import distance_km

    assert 330 < distance_km("London", "Paris") < 360
    assert distance_km("Paris", "Atlantis") is None
    assert distance_km("48.8566,2.3522", "Paris") < 0.01  # "lat,lon" locations work too
    states = AccountStates()
    states.transform([txn(i, minutes=i * 600, location="London") for i in range(5)])
    [row] = states.transform([txn(9, minutes=2400 + 30, location="Paris")])  # 30 min later
    assert 600 < math.expm1(feature(row, "log_speed_kmh")) < 720  # ~344 km in 0.5 h
    assert 330 < math.expm1(feature(row, "log_home_km")) < 360
    [row] = states.transform([txn(10, minutes=2500, location="Atlantis")])
    assert feature(row, "log_speed_kmh") == 0 and feature(row, "log_home_km") == 0


def test_an_unknown_location_is_neither_new_nor_far_and_changes_no_place_of_the_account():
    states = AccountStates()
    states.transform([txn(i, minutes=i * 600, location="London") for i in range(5)])
    [unknown] = states.transform([txn(9, minutes=2430, location=None)])
    assert feature(unknown, "new_location") == 0
    assert feature(unknown, "log_speed_kmh") == 0 and feature(unknown, "log_home_km") == 0
    state = states.get("A1")
    assert state.home_location == "London" and set(state.locations) == {"London"}
    assert state.last_location is None  # the newest event's place is not known
    # Paris 30 minutes after an event of unknown place: no speed from a place not known (a
    # guess), but the distance from home
    [paris] = states.transform([txn(10, minutes=2460, location="Paris")])
    assert feature(paris, "log_speed_kmh") == 0
    assert 330 < math.expm1(feature(paris, "log_home_km")) < 360
    assert feature(paris, "new_location") == 1


def test_a_zero_amount_is_scored_like_any_other():
    states = AccountStates()
    rows = states.transform([txn(i, amount=0.0, minutes=i) for i in range(3)])
    assert np.isfinite(rows).all()
    assert feature(rows[-1], "log_amount") == 0 and feature(rows[-1], "small_10m") == 2


def test_decayed_windows_weigh_recent_amounts_more():
    states = AccountStates()
    old = [txn(i, amount=100.0, minutes=i * 60) for i in range(10)]  # day 0: 100s
    recent = [txn(20 + i, amount=10.0, minutes=20 * 1440 + i * 60) for i in range(10)]  # day 20
    states.transform(old + recent)
    [row] = states.transform([txn(99, amount=10.0, minutes=20 * 1440 + 720)])
    # Against the last day the amount is usual; against 30 days the old 100s still weigh in.
    assert abs(feature(row, "amount_vs_1d")) < 0.05
    assert feature(row, "amount_vs_30d") < -0.3
    assert 9 < feature(row, "count_7d") < 10.5  # the ten of day 20, barely decayed


def test_merchant_profile_compares_an_amount_with_the_merchants_usual():
    states = AccountStates()
    states.transform(
        [txn(i, f"A{i}", amount=40.0, minutes=i, merchant="Grocer") for i in range(50)]
    )
    [row] = states.transform([txn(99, "B", amount=4000.0, minutes=60, merchant="Grocer")])
    assert feature(row, "merchant_amount_vs_30d") > 4  # log(4001 / 41)
    assert feature(row, "merchant_volume_1h_vs_7d") > 2  # 50 sales in the last hour
    [row] = states.transform([txn(100, "B", amount=40.0, minutes=61, merchant="New Shop")])
    assert feature(row, "merchant_amount_vs_30d") == 0


def test_previous_amount_is_the_amount_of_the_accounts_newest_earlier_transaction():
    states = AccountStates()
    rows = states.transform([
        txn(1, amount=10.0, minutes=0),
        txn(2, amount=20.0, minutes=5),
        txn(3, "A2", amount=99.0, minutes=6),  # another account's
        txn(4, amount=30.0, minutes=10),
    ])  # fmt: skip
    assert [feature(r, "previous_amount") for r in rows] == [0.0, 10.0, 0.0, 20.0]
    # In event time: a late event's previous is the newest before it, not the last received.
    [late] = states.transform([txn(5, amount=40.0, minutes=7)])
    [after] = states.transform([txn(6, amount=50.0, minutes=20)])
    [earliest] = states.transform([txn(7, amount=60.0, minutes=-5)])
    assert feature(late, "previous_amount") == 20.0
    assert feature(after, "previous_amount") == 30.0
    assert feature(earliest, "previous_amount") == 0.0
    # An input of the supervised model only.
    assert "previous_amount" in SUPERVISED_FEATURE_NAMES
    assert "previous_amount" not in ANOMALY_FEATURE_NAMES


def test_the_declaration_gives_the_columns():
    assert FEATURE_NAMES == tuple(f.name for f in features.FEATURES)
    assert features.WIDTH == len(FEATURE_NAMES) == len(set(FEATURE_NAMES))
    assert [FEATURE_NAMES[c] for c in features.ANOMALY_COLUMNS] == list(ANOMALY_FEATURE_NAMES)
    forest = sorted((f.forest, f.name) for f in features.FEATURES if f.forest)
    assert tuple(name for _, name in forest) == ANOMALY_FEATURE_NAMES
    assert all(SUPERVISED_FEATURE_NAMES[features.SLOT[n]] == n for n in SUPERVISED_FEATURE_NAMES)
    with pytest.raises(ValueError, match="declared twice"):
        features._check_declarations(features.FEATURES[:2] * 2, features.LABEL_FEATURES)


def test_a_row_that_disagrees_with_the_declaration_is_refused():
    features._check_row(FEATURE_NAMES)  # what setup.py writes, and the plain-Python row
    without = tuple(n for n in FEATURE_NAMES if n != "previous_amount")
    for stale in (without, (*FEATURE_NAMES, "extra"), FEATURE_NAMES[::-1]):
        with pytest.raises(ImportError, match="make install"):
            features._check_row(stale)


def test_every_feature_is_finite_for_odd_inputs():
    states = AccountStates()
    rows = states.transform([
        txn(1, amount=0.01, minutes=0, location="0,0"),
        txn(2, amount=1e9, minutes=0, location="90,180"),  # same instant, far away
        txn(3, amount=5.0, minutes=-60, location="x"),  # out of order
    ])  # fmt: skip
    assert np.isfinite(rows).all()


@hypothesis_settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.floats(0, 2 * 24 * 60),  # minutes after T0: any order, late events included
            st.sampled_from([0.5, 3.0, 4.99, 5.0, 20.0, 120.0, 999.0]),
            st.sampled_from(["Paris", "Oslo", "Madrid"]),
        ),
        min_size=1,
        max_size=40,
    ),
    st.integers(3, 60),
)
def test_exact_windows_median_and_home_match_a_brute_force_over_the_kept_history(events, history):
    states = AccountStates(history=history)
    kept: list[tuple[float, float]] = []  # the newest `history` events by event time
    places: dict[str, int] = {}
    for i, (minutes, amount, place) in enumerate(events):
        event = txn(i, amount=amount, minutes=minutes, location=place)
        [row] = states.transform([event])
        t = event.event_time
        before = [(ts, a) for ts, a in kept if ts <= t]

        def window(seconds, before=before, t=t):
            return [a for ts, a in before if t - ts <= seconds]

        assert feature(row, "count_10m") == len(window(600))
        assert feature(row, "count_1h") == len(window(3600))
        assert feature(row, "count_24h") == len(window(86400))
        assert feature(row, "small_10m") == sum(a < 5 for a in window(600))
        assert feature(row, "log_sum_24h") == pytest.approx(math.log1p(sum(window(86400))))
        median = float(np.median([a for _ts, a in kept])) if kept else None
        expected = math.log1p(amount) - math.log1p(median) if kept else 0.0
        assert feature(row, "amount_vs_median") == pytest.approx(expected)
        assert feature(row, "previous_amount") == (before[-1][1] if before else 0.0)
        kept = sorted([*kept, (t, amount)], key=lambda e: e[0])[-history:]
        places[place] = places.pop(place, 0) + 1  # least recently used first, like the state
        assert states.get("A1").home_location == max(places, key=places.__getitem__)
