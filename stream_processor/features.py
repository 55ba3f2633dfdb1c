"""Per-account streaming features: each event is compared with the account's own recent past.

State is bounded: at most ``max_accounts`` accounts (the least recently seen are evicted) and
``history`` recent transactions per account. Feature values depend only on events seen before,
so replaying the same events into a fresh :class:`AccountStates` gives the same vectors.
"""

from __future__ import annotations

import math
from collections import OrderedDict, deque
from dataclasses import dataclass, field

import numpy as np

from fraudstream.schema import Transaction

FEATURES: tuple[tuple[str, str], ...] = (
    ("log_amount", "log(1 + amount)"),
    ("amount_vs_median", "log((1 + amount) / (1 + median of the account's recent amounts)); 0 without history"),
    ("log_history", "log(1 + transactions seen before for the account)"),
    ("count_10m", "the account's transactions in the 10 minutes before this one"),
    ("count_1h", "the account's transactions in the hour before this one"),
    ("count_24h", "the account's transactions in the 24 hours before this one"),
    ("log_gap_s", "log(1 + seconds since the account's previous transaction); 7 days without one"),
    ("new_merchant", "1 if the account has history but never used this merchant"),
    ("new_location", "1 if the account has history but was never in this location"),
    ("small_10m", "transactions under 5.00 by the account in the 10 minutes before (card testing)"),
    ("hour_sin", "sin(2 pi hour / 24), hour of day in UTC"),
    ("hour_cos", "cos(2 pi hour / 24)"),
)  # fmt: skip
"""The model's inputs, in column order, with their definitions."""

FEATURE_NAMES = tuple(name for name, _ in FEATURES)
SMALL_AMOUNT = 5.0
NO_GAP_S = 7 * 86400.0
_I = {name: i for i, name in enumerate(FEATURE_NAMES)}


@dataclass
class AccountState:
    recent: deque  # (event time s, amount), oldest first
    merchants: OrderedDict = field(default_factory=OrderedDict)
    locations: OrderedDict = field(default_factory=OrderedDict)
    seen: int = 0
    last_time: float | None = None
    last_location: str | None = None
    home_location: str | None = None  # the most frequent location so far


class AccountStates:
    """The bounded per-account memory and the feature computation over it."""

    def __init__(self, max_accounts: int = 1_000_000, history: int = 50, max_places: int = 32):
        self.max_accounts = max_accounts
        self.history = history
        self.max_places = max_places
        self._accounts: OrderedDict[str, AccountState] = OrderedDict()
        self.evicted = 0

    def __len__(self) -> int:
        return len(self._accounts)

    def get(self, account_id: str) -> AccountState | None:
        return self._accounts.get(account_id)

    def transform(self, txns: list[Transaction]) -> np.ndarray:
        """Feature rows for ``txns`` in order, each computed before the event joins the state."""
        out = np.empty((len(txns), len(FEATURE_NAMES)), dtype=np.float64)
        for i, txn in enumerate(txns):
            state = self._state(txn.account_id)
            out[i] = self._features(state, txn)
            self._learn(state, txn)
        return out

    def learn(self, txns: list[Transaction]) -> None:
        """Add events to the state without computing features (rebuilding after a restart)."""
        for txn in txns:
            self._learn(self._state(txn.account_id), txn)

    def _state(self, account_id: str) -> AccountState:
        state = self._accounts.get(account_id)
        if state is None:
            state = AccountState(recent=deque(maxlen=self.history))
            self._accounts[account_id] = state
            if len(self._accounts) > self.max_accounts:
                self._accounts.popitem(last=False)
                self.evicted += 1
        else:
            self._accounts.move_to_end(account_id)
        return state

    def _features(self, s: AccountState, txn: Transaction) -> list[float]:
        t = txn.event_time
        c10 = c1h = c24 = small = 0
        amounts = []
        for ts, amount in s.recent:
            amounts.append(amount)
            age = t - ts
            if 0 <= age <= 86400:
                c24 += 1
                if age <= 3600:
                    c1h += 1
                    if age <= 600:
                        c10 += 1
                        small += amount < SMALL_AMOUNT
        has_history = s.seen > 0
        if amounts:
            amounts.sort()
            mid = len(amounts) // 2
            median = amounts[mid] if len(amounts) % 2 else (amounts[mid - 1] + amounts[mid]) / 2
            vs_median = math.log((1 + txn.amount) / (1 + median))
        else:
            vs_median = 0.0
        gap = NO_GAP_S if s.last_time is None else max(0.0, t - s.last_time)
        hour = (t % 86400) / 3600
        return [
            math.log1p(txn.amount),
            vs_median,
            math.log1p(s.seen),
            c10,
            c1h,
            c24,
            math.log1p(gap),
            float(has_history and txn.merchant not in s.merchants),
            float(has_history and txn.location not in s.locations),
            small,
            math.sin(2 * math.pi * hour / 24),
            math.cos(2 * math.pi * hour / 24),
        ]

    def _learn(self, s: AccountState, txn: Transaction) -> None:
        t = txn.event_time
        s.recent.append((t, txn.amount))
        s.seen += 1
        _bump(s.merchants, txn.merchant, self.max_places)
        _bump(s.locations, txn.location, self.max_places)
        s.home_location = max(s.locations, key=s.locations.__getitem__)
        if s.last_time is None or t >= s.last_time:
            s.last_time = t
            s.last_location = txn.location


def _bump(counts: OrderedDict, key: str, limit: int) -> None:
    counts[key] = counts.get(key, 0) + 1
    counts.move_to_end(key)
    if len(counts) > limit:
        counts.popitem(last=False)


def feature(row: np.ndarray, name: str) -> float:
    """One named value of a feature row."""
    return float(row[_I[name]])
