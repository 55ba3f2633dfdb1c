"""What the processors of one consumer group share through Kafka, so that each scores an event
with what one processor would know: every partition's merchant sales, and every label learned.

**Merchant shares** (Kafka Streams' GlobalKTable pattern). Events are keyed by account, so one
merchant's sales are spread over every partition. Each processor keeps what the events it
scored in each partition added to each merchant's decayed counters (a *share*, keyed by
partition and merchant) and publishes the shares that changed, after every batch, on a
compacted topic; every processor reads the whole topic and adds the shares of the partitions it
does not hold to its own merchant state (decayed sums add up once decayed to one time). When a
partition moves, the shares stay counted: the processor losing it publishes its shares first
(the rebalance's flush) and keeps the last ones as another's; the one gaining it takes the
newest share it read as its own and adds to it from there.

**What each learned.** Labels are keyed by transaction, so each processor learns those of its
own label partitions. Each publishes what it learned (the event's merchant and account, the
outcome, when it became known) after every batch; the others add it to their label memory.
A processor that does not fit the models publishes drift it sees in its anomaly scores too:
the trainer refits early on it, as on its own.

Both count here once this processor's event clock (the newest event it scored) reaches their
time: a processor ahead in event time (with less backlog, say) does not hand its future to one
behind it. An event's features then count what the other processors knew up to their last
published batch before this processor's clock (a batch or two of wall time late when read, a
second at most with the broker's delays). Each processor publishes a batch's shares once its
events are stored: the events a killed processor consumed and did not store are counted once,
by the processor that consumes them again. Not exact: an event older than a merchant's newest
counts undecayed (as :func:`~stream_processor.features.learn_merchant` does with one
processor), and another processor's share can make a merchant's newest time newer.
"""

from __future__ import annotations

import heapq
import itertools
import json
import math
import struct
import sys
from collections.abc import Iterable
from typing import NamedTuple

from stream_processor.contracts import HeldEvent
from stream_processor.features import (
    AccountStates,
    LabelMemory,
    MerchantState,
    add_merchant,
    learn_merchant,
)

MAX_LATER = 100_000  # records kept for the event clock; beyond, the oldest count at once


class Outgoing(NamedTuple):
    """What to publish for the others: changed shares (key, value) and learned records."""

    shares: list[tuple[bytes, bytes]]
    learned: list[bytes]


class GroupState:
    """Merchant shares (this processor's, ``own``, kept up to date by :meth:`learned`; the
    others', read by :meth:`apply_share`, ``others`` those counted so far) summed into the
    merchant state ``states`` computes features from; labels learned here (:meth:`label_learned`)
    and by the others (:meth:`apply_learned`), all in ``memory``; drift seen by the others."""

    def __init__(
        self,
        states: AccountStates,
        memory: LabelMemory,
        clock: float = float("-inf"),
        sender: str = "",
    ):
        self.states, self.memory = states, memory
        states.drop_merchants()  # what was rebuilt from stored events: the shares replace it
        # A merchant's state is the sum of its shares: one evicted could not be rebuilt from
        # them, and the shares of every merchant are kept anyway.
        states.max_merchants = sys.maxsize
        self.clock = clock  # the newest event time scored here (epoch s)
        self.sender = sender  # names this processor's records: its own are not counted twice
        self.own: dict[int, dict[str, MerchantState]] = {}  # partition -> merchant -> share
        self.others: dict[int, dict[str, MerchantState]] = {}
        # What others published ahead of the clock: (time, arrival, partition, merchant, share)
        # for a share, (time, arrival, None, merchant, label) for a learned label.
        self._later: list[tuple] = []
        self._arrivals = itertools.count()  # records of one time: in the order they came
        self._changed: set[tuple[int, str]] = set()
        self._learned: list[list] = []  # labels learned and drifts seen here, to publish
        self._stored: list[Outgoing] = []  # snapshots whose events are stored: publishable
        self.drift_in = 0  # the newest model version another processor saw drift in

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
            _t, _n, partition, merchant, what = heapq.heappop(later)
            self._release(partition, merchant, what)

    def snapshot(self) -> Outgoing:
        """What changed here since the last snapshot (the shares as they are now): to publish
        once the events it counts are stored (:meth:`stored`). Published sooner, a processor
        killed before its write would hand the next holder a share that counts events it will
        consume and count again."""
        shares = []
        for partition, merchant in self._changed:
            share = self.own.get(partition, {}).get(merchant)
            if share is not None:
                shares.append((encode_key(partition, merchant), encode_share(share)))
        learned = [json.dumps(v).encode() for v in self._learned]
        self._changed, self._learned = set(), []
        return Outgoing(shares, learned)

    def stored(self, outgoing: Outgoing) -> None:
        """The events of ``outgoing`` (a :meth:`snapshot`) are stored: it may be published."""
        if outgoing.shares or outgoing.learned:
            self._stored.append(outgoing)

    def publishable(self) -> list[Outgoing]:
        """The snapshots stored since the last call, oldest first."""
        out, self._stored = self._stored, []
        return out

    def label_learned(self, merchant: str, account_id: str, is_fraud: int, at: float) -> None:
        """A label learned here (into ``memory`` already), for the others."""
        self._learned.append(["label", self.sender, merchant, account_id, is_fraud, at])

    def drift_seen(self, version: int) -> None:
        """Drift in the scores of model ``version`` here (a processor that does not fit the
        models): for the trainer, which refits early."""
        self._learned.append(["drift", self.sender, version])

    def apply_learned(self, value: bytes) -> None:
        """A record of the learned topic: another processor's label, into the label memory
        once the event clock reaches the time it became known, or the model version it saw
        drift in (``drift_in``). A malformed record raises ValueError and changes nothing."""
        record = json.loads(value)
        if not isinstance(record, list) or not record or record[0] not in ("label", "drift"):
            raise ValueError(f"a learned record is a label or a drift, not {value[:80]!r}")
        if record[0] == "drift":
            _kind, sender, version = record
            if not isinstance(version, int):
                raise ValueError(f"a drift names a model version, not {value[:80]!r}")
            if sender != self.sender:
                self.drift_in = max(self.drift_in, version)
            return
        _kind, sender, merchant, account_id, is_fraud, at = record
        if not (isinstance(merchant, str) and isinstance(account_id, str)
                and is_fraud in (0, 1) and isinstance(at, int | float) and math.isfinite(at)):  # fmt: skip
            raise ValueError(f"a learned label is [sender, merchant, account, 0 or 1, time], "
                             f"not {value[:80]!r}")  # fmt: skip
        if sender == self.sender:
            return
        if at <= self.clock:
            self.memory.add(merchant, account_id, is_fraud, float(at))
        else:
            self._wait(float(at), None, merchant, (account_id, is_fraud, float(at)))

    def apply_share(self, key: bytes, value: bytes) -> None:
        """A record of the topic: another processor's share, counted once the event clock
        reaches its time (this processor's own partitions are counted here, newer than any
        record of them). A malformed record raises ValueError and changes nothing."""
        partition, merchant = decode_key(key)
        if partition in self.own:
            return
        share = decode_share(value)
        if share.decay_time <= self.clock:
            self._count(partition, merchant, share)
        else:
            self._wait(share.decay_time, partition, merchant, share)

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
                if partition in gained:  # (None for a label: not a partition)
                    self._count(partition, merchant, share)
            self._later = [entry for entry in self._later if entry[2] not in gained]
            heapq.heapify(self._later)
        for partition in gained:
            self.own[partition] = self.others.pop(partition, {})

    def _wait(self, t: float, partition: int | None, merchant: str, what) -> None:
        """Keep a record until the event clock reaches ``t`` (a processor whose clock stands
        still, one with no partition say, counts the oldest at once beyond MAX_LATER)."""
        heapq.heappush(self._later, (t, next(self._arrivals), partition, merchant, what))
        if len(self._later) > MAX_LATER:
            _t, _n, partition, merchant, what = heapq.heappop(self._later)
            self._release(partition, merchant, what)

    def _release(self, partition: int | None, merchant: str, what) -> None:
        if partition is None:
            self.memory.add(merchant, *what)
        else:
            self._count(partition, merchant, what)

    def _count(self, partition: int, merchant: str, share: MerchantState) -> None:
        """``share`` replaces the partition's last one in the merchant's state."""
        shares = self.others.setdefault(partition, {})
        total = self.states.merchant(merchant)
        old = shares.get(merchant)
        if old is not None:
            add_merchant(total, old, -1.0)
        add_merchant(total, share)
        shares[merchant] = share


# A share's record: the key "partition:merchant" (UTF-8; the first colon ends the partition),
# the value its six counters as little-endian doubles. Tens of thousands a second go through a
# processor: JSON took most of the cost of sharing.
_SHARE = struct.Struct("<6d")


def encode_key(partition: int, merchant: str) -> bytes:
    return b"%d:%s" % (partition, merchant.encode())


def decode_key(key: bytes | None) -> tuple[int, str]:
    """ValueError unless ``key`` is "partition:merchant"."""
    partition, colon, merchant = (key or b"").partition(b":")
    if not colon or not partition.isdigit():
        raise ValueError(f"a share's key is partition:merchant, not {(key or b'')[:80]!r}")
    return int(partition), merchant.decode()


def encode_share(share: MerchantState) -> bytes:
    return _SHARE.pack(share.decay_time, share.count_1h, share.count_1d, share.count_7d,
                       share.count_30d, share.sum_30d)  # fmt: skip


def decode_share(value: bytes | None) -> MerchantState:
    """A share from its record; ValueError unless it is six finite numbers, counts not below 0."""
    try:
        numbers = _SHARE.unpack(value or b"")
    except struct.error as exc:
        raise ValueError(f"a share is {_SHARE.size} bytes, not {len(value or b'')}") from exc
    if not all(math.isfinite(x) for x in numbers) or min(numbers[1:]) < 0:
        raise ValueError(f"a share's counters are finite and not below 0, not {numbers}")
    share = MerchantState()
    (share.decay_time, share.count_1h, share.count_1d, share.count_7d, share.count_30d,
     share.sum_30d) = numbers  # fmt: skip
    return share
