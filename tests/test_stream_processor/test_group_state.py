"""What several processors share: each processor's merchant profiles count every partition's
sales, and its label memory every label learned, as one processor's would, once exchanged (the
topics that carry them: tests/test_reliability/test_scale_out.py)."""

from __future__ import annotations

import math
import struct
import zlib

import pytest

from fraudstream.schema import Transaction
from producer.csv_source import read_transactions
from stream_processor import group
from stream_processor.contracts import HeldEvent
from stream_processor.features import AccountStates, LabelMemory, MerchantState, add_merchant
from stream_processor.group import GroupState

FIELDS = ("count_1h", "count_1d", "count_7d", "count_30d", "sum_30d")


@pytest.fixture
def events(small_csv) -> list[Transaction]:
    return [t for _l, t in read_transactions(small_csv) if isinstance(t, Transaction)]


def held(txns: list[Transaction]) -> list[HeldEvent]:
    """As consumed: each account's events in one of two partitions."""
    return [
        HeldEvent(t, zlib.crc32(t.account_id.encode()) % 2, i, None) for i, t in enumerate(txns)
    ]


class Processor:
    def __init__(self, partitions: list[int], name: str = ""):
        self.states = AccountStates()
        self.table = GroupState(self.states, LabelMemory(), sender=name)
        self.partitions = partitions
        self.table.assigned(partitions)

    def score(self, events: list[HeldEvent]) -> None:
        mine = [h for h in events if h.partition in self.partitions]
        self.states.transform([h.txn for h in mine])
        self.table.learned(mine)

    def move(self, partitions: list[int]) -> None:
        self.partitions = partitions
        self.table.assigned(partitions)


def exchange(*processors: Processor) -> None:
    """Every processor's changed shares to every other one, through the topic's records; then
    every clock at the newest event scored (a share of a time no event reached waits)."""
    published = [(p, p.table.snapshot().shares) for p in processors]
    for sender, records in published:
        for receiver in processors:
            if receiver is not sender:
                for key, value in records:
                    receiver.table.apply_share(key, value)
    clock = max(p.table.clock for p in processors)
    for p in processors:
        p.table.advance(clock)


def at(state: MerchantState, t: float) -> dict[str, float]:
    """The merchant's counters decayed to ``t``."""
    copy = MerchantState()
    copy.decay_time = t
    add_merchant(copy, state)
    return {f: getattr(copy, f) for f in FIELDS}


def assert_same_merchants(processor: Processor, alone: AccountStates, merchants, t: float):
    for merchant in merchants:
        got, want = at(processor.states.merchant(merchant), t), at(alone.merchant(merchant), t)
        for field in FIELDS:
            assert math.isclose(got[field], want[field], rel_tol=1e-9, abs_tol=1e-9), (
                merchant, field, got, want,
            )  # fmt: skip


def test_two_processors_count_every_partitions_sales_as_one_processor_does(events):
    alone = AccountStates()
    alone.transform(events)
    a, b = Processor([0]), Processor([1])
    consumed = held(events)
    for start in range(0, len(consumed), 250):  # batches, shares exchanged after each
        batch = consumed[start : start + 250]
        a.score(batch)
        b.score(batch)
        exchange(a, b)
    merchants = {t.merchant for t in events}
    end = events[-1].event_time
    assert_same_merchants(a, alone, merchants, end)
    assert_same_merchants(b, alone, merchants, end)
    # without the other's shares a processor counts about half of each merchant's sales
    half = Processor([0])
    half.score(held(events))
    busiest = max(merchants, key=lambda m: alone.merchant(m).count_30d)
    ratio = (
        at(half.states.merchant(busiest), end)["count_30d"]
        / at(alone.merchant(busiest), end)["count_30d"]
    )
    assert 0.2 < ratio < 0.8


def test_a_partition_that_moves_keeps_each_sale_counted_once(events):
    alone = AccountStates()
    alone.transform(events)
    first, second, third = held(events)[:500], held(events)[500:1000], held(events)[1000:]
    a, b = Processor([0, 1]), Processor([])
    a.score(first)
    exchange(a, b)  # a publishes before partition 1 moves (the rebalance's flush)
    a.move([0])
    b.move([1])
    for batch in (second, third):
        a.score(batch)
        b.score(batch)
        exchange(a, b)
    merchants = {t.merchant for t in events}
    assert_same_merchants(a, alone, merchants, events[-1].event_time)
    assert_same_merchants(b, alone, merchants, events[-1].event_time)


def test_a_malformed_share_is_refused_and_changes_nothing(events):
    a = Processor([0])
    a.score(held(events[:100]))
    before = {m: at(a.states.merchant(m), 0.0) for m in {t.merchant for t in events[:100]}}
    share = struct.Struct("<6d").pack
    key = b"1:M"
    bad = [(b"no colon", share(1, 1, 1, 1, 1, 1)), (b"x:M", share(1, 1, 1, 1, 1, 1)),
           (None, share(1, 1, 1, 1, 1, 1)), (key, b"[1, 2]"), (key, None),
           (key, share(1, math.nan, 1, 1, 1, 1)), (key, share(math.inf, 1, 1, 1, 1, 1)),
           (key, share(1, 1, -5, 1, 1, 1)), (b"1:\xff", share(1, 1, 1, 1, 1, 1))]  # fmt: skip
    for key, value in bad:
        with pytest.raises((ValueError, TypeError)):
            a.table.apply_share(key, value)
    assert before == {m: at(a.states.merchant(m), 0.0) for m in before}


def test_a_share_ahead_of_the_event_clock_waits_for_it(events):
    a, b = Processor([0]), Processor([1])
    consumed = held(events)
    b.score(consumed[:1000])  # b is ahead in event time
    a.score(consumed[:200])
    merchant = consumed[999].txn.merchant
    before = at(a.states.merchant(merchant), consumed[999].txn.event_time)
    for key, value in b.table.snapshot().shares:
        a.table.apply_share(key, value)
    assert at(a.states.merchant(merchant), consumed[999].txn.event_time) == before
    a.score(consumed[200:1000])  # a's clock reaches b's: b's share counts
    alone = AccountStates()
    alone.transform(events[:1000])
    assert_same_merchants(a, alone, {t.merchant for t in events[:1000]}, events[999].event_time)


def test_labels_learned_by_one_processor_reach_the_others_label_memory(events):
    a, b = Processor([0], "a"), Processor([1], "b")
    consumed = held(events)
    a.score(consumed[:800])
    b.score(consumed[:400])  # b is behind in event time
    alone = LabelMemory()
    for t in events[:300]:  # a learns these labels, known 3 days after their events
        at = t.event_time + 3 * 86400
        a.table.memory.add(t.merchant, t.account_id, t.is_fraud, at)
        a.table.label_learned(t.merchant, t.account_id, t.is_fraud, at)
        alone.add(t.merchant, t.account_id, t.is_fraud, at)
    records = a.table.snapshot().learned
    assert len(records) == 300 and a.table.snapshot().learned == []
    for value in records:
        a.table.apply_learned(value)  # its own: not counted twice
        b.table.apply_learned(value)
    later = events[800:900]
    assert (a.table.memory.features(later) == alone.features(later)).all()
    assert b.table.memory.labels < 300  # those known after b's clock wait for it
    b.score(consumed[400:800])
    assert (b.table.memory.features(later) == alone.features(later)).all()
    for bad in (
        b"not json",
        b'["label", "x", "M", "A", 2, 1.0]',
        b'["label", "x", "M", "A", 1]',
        b'["drift", "x", "v1"]',
    ):
        with pytest.raises((ValueError, TypeError)):
            b.table.apply_learned(bad)


def test_a_processor_whose_clock_stands_still_keeps_a_bounded_number_of_records(
    events, monkeypatch
):
    monkeypatch.setattr(group, "MAX_LATER", 10)
    a, idle = Processor([0]), Processor([])  # idle scores nothing: its clock stays
    a.score(held(events[:300]))
    shares = a.table.snapshot().shares
    assert len(shares) > 10
    for key, value in shares:
        idle.table.apply_share(key, value)
    assert len(idle.table._later) == 10  # the oldest counted at once
    assert sum(len(m) for m in idle.table.others.values()) == len(shares) - 10
