from datetime import UTC, datetime, timedelta

from fraudstream.schema import Transaction
from stream_processor.features import FEATURE_NAMES, AccountStates, feature

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
    assert len(states.get("A4").recent) == 5


def test_learn_rebuilds_the_same_state_as_transform():
    events = [txn(i, minutes=i * 3, amount=10 + i) for i in range(30)]
    a, b = AccountStates(), AccountStates()
    a.transform(events)
    b.learn(events)
    probe = txn(100, minutes=200, amount=80)
    assert (a.transform([probe]) == b.transform([probe])).all()
