"""Merchant profiles that every processor of a group sees whole (Kafka Streams' GlobalKTable).

Events are keyed by account, so one merchant's sales are spread over every partition, and a
processor sees only the share of its own partitions. Each processor keeps what the events it
scored in each partition added to each merchant's decayed counters (a *share*, keyed by
partition and merchant) and publishes the shares that changed, after every batch, on a
compacted topic; every processor reads the whole topic and adds the shares of the partitions it
does not hold to its own merchant state (decayed sums add up once decayed to one time).

A share counts here once this processor's event clock (the newest event it scored) reaches the
share's time: a processor ahead in event time (with less backlog, say) does not make the
merchants' sales arrive early for one behind it. An event's merchant features then count every
partition's sales up to the newest share published before the event's time: what one processor
would count, but for the sales of the other processors' last batch (a share is about two
batches old when read, a second at most with the broker's delays).

When a partition moves, the shares stay counted: the processor losing it publishes its shares
first (the rebalance's flush) and keeps the last ones as another's; the one gaining it takes the
newest share it read as its own and adds to it from there.
"""

from __future__ import annotations

import heapq
import itertools
import json
from collections.abc import Iterable

from stream_processor.contracts import HeldEvent
from stream_processor.features import AccountStates, MerchantState, add_merchant, learn_merchant

_FIELDS = ("decay_time", "count_1h", "count_1d", "count_7d", "count_30d", "sum_30d")


class MerchantTable:
    """The shares of every partition: this processor's (``own``, kept up to date by
    :meth:`learned`) and the others' (read from the topic by :meth:`apply`; ``others``: those
    counted so far), summed into the merchant state that ``states`` computes features from."""

    def __init__(self, states: AccountStates, clock: float = float("-inf")):
        self.states = states
        states.drop_merchants()  # what was rebuilt from stored events: the shares replace it
        self.clock = clock  # the newest event time scored here (epoch s)
        self.own: dict[int, dict[str, MerchantState]] = {}  # partition -> merchant -> share
        self.others: dict[int, dict[str, MerchantState]] = {}
        self._later: list[tuple[float, int, int, str, MerchantState]] = []  # shares ahead of clock
        self._arrivals = itertools.count()  # shares of one time: in the order they came
        self._changed: set[tuple[int, str]] = set()

    def learned(self, events: Iterable[HeldEvent]) -> None:
        """Events just scored here (their features computed): into their partitions' shares."""
        own, changed, clock = self.own, self._changed, self.clock
        for h in events:
            txn = h.txn
            shares = own.get(h.partition)
            if shares is None:
                shares = own[h.partition] = {}
            share = shares.get(txn.merchant)
            if share is None:
                share = shares[txn.merchant] = MerchantState()
            t = txn.event_time
            learn_merchant(share, txn.amount, t)
            changed.add((h.partition, txn.merchant))
            clock = max(clock, t)
        self.advance(clock)

    def advance(self, clock: float) -> None:
        """The event clock reaches ``clock``: the others' shares up to it count."""
        self.clock = clock = max(self.clock, clock)
        later = self._later
        while later and later[0][0] <= clock:
            _t, _n, partition, merchant, share = heapq.heappop(later)
            self._count(partition, merchant, share)

    def changes(self) -> list[tuple[bytes, bytes]]:
        """The shares changed since the last call, as the topic's records (key, value)."""
        records = []
        for partition, merchant in self._changed:
            share = self.own.get(partition, {}).get(merchant)
            if share is not None:
                records.append((encode_key(partition, merchant), encode_share(share)))
        self._changed = set()
        return records

    def apply(self, key: bytes, value: bytes) -> None:
        """A record of the topic: another processor's share, counted once the event clock
        reaches its time (this processor's own partitions are counted here, newer than any
        record of them). A malformed record raises ValueError and changes nothing."""
        partition, merchant = json.loads(key)
        if not isinstance(partition, int) or not isinstance(merchant, str):
            raise ValueError(f"a share's key is [partition, merchant], not {key[:80]!r}")
        share = decode_share(value)
        if partition in self.own:
            return
        if share.decay_time <= self.clock:
            self._count(partition, merchant, share)
        else:
            heapq.heappush(
                self._later, (share.decay_time, next(self._arrivals), partition, merchant, share)
            )

    def assigned(self, partitions: Iterable[int]) -> None:
        """The partitions this processor holds now: the newest share read for a gained one
        becomes its own; those of a lost one stay counted, as another's, until its new holder
        publishes."""
        held = set(partitions)
        for partition in set(self.own) - held:
            self.others[partition] = self.own.pop(partition)
        gained = held - set(self.own)
        if gained:  # their newest shares, also those ahead of the clock, count from now
            for _t, _n, partition, merchant, share in sorted(self._later):
                if partition in gained:
                    self._count(partition, merchant, share)
            self._later = [entry for entry in self._later if entry[2] not in gained]
            heapq.heapify(self._later)
        for partition in gained:
            self.own[partition] = self.others.pop(partition, {})

    def _count(self, partition: int, merchant: str, share: MerchantState) -> None:
        """``share`` replaces the partition's last one in the merchant's state."""
        shares = self.others.setdefault(partition, {})
        total = self.states.merchant(merchant)
        old = shares.get(merchant)
        if old is not None:
            add_merchant(total, old, -1.0)
        add_merchant(total, share)
        shares[merchant] = share


def encode_key(partition: int, merchant: str) -> bytes:
    return json.dumps([partition, merchant]).encode()


def encode_share(share: MerchantState) -> bytes:
    return json.dumps([getattr(share, f) for f in _FIELDS]).encode()


def decode_share(value: bytes) -> MerchantState:
    share = MerchantState()
    for field, number in zip(_FIELDS, json.loads(value), strict=True):
        setattr(share, field, float(number))
    return share
