"""Streaming features: each event is compared with its account's and its merchant's own past.

Every model input is declared here once, as a :class:`Feature` in :data:`FEATURES` or
:data:`LABEL_FEATURES`; column order, the forest's inputs and the compiled row follow from the
declarations. Adding a feature is its declaration and the line that computes it
(``self._row.<name> = ...``), then its test and its row in docs/scoring.md
(tests/test_readme.py prints the row it expects).

Windows: *exact* short ones (10 min, 1 h, 24 h) over the account's last ``history`` events, and
*decayed* long ones (1, 7, 30 days: each event weighs ``exp(-age / window)``), which need O(1)
memory per account or merchant. State is bounded (``max_accounts``, ``max_merchants``: the least
recently seen are evicted after a batch); an evicted account that comes back is rebuilt from its
stored events (:meth:`AccountStates.missing`, :meth:`AccountStates.restore`). Feature values
depend only on events seen before, so a replay into a fresh :class:`AccountStates` gives the
same vectors.

Compiled by Cython at install (setup.py; typed by features.pxd, whose struct ``Row`` setup.py
writes from :data:`FEATURES`), or run as plain Python with the same results. A misspelt or
undeclared name raises at the first event; a declared feature left unset raises in plain Python
(tests/test_compiled.py runs it beside the compiled module); a compiled module older than the
declarations stops the import (:func:`_check_row`).
"""

from __future__ import annotations

import math
from array import array
from bisect import bisect_left, bisect_right
from collections import OrderedDict
from dataclasses import dataclass
from operator import attrgetter, getitem
from sys import intern

import cython
import numpy as np
from cython.cimports.libc.math import cos, exp, log, log1p, sin  # math's, as plain Python

from fraudstream.geo import distance_km
from fraudstream.schema import Transaction

COMPILED: bool = cython.compiled
"""True when this module runs compiled by Cython (built at install with a C compiler; setup.py),
False when it runs as plain Python: the same results, about twice the time per event."""
DAY = 86400.0
DECAY_WINDOWS = (("1d", DAY), ("7d", 7 * DAY), ("30d", 30 * DAY))


@dataclass(frozen=True)
class Feature:
    """One model input, declared once: the rest of the code reads it by ``name``."""

    name: str
    definition: str  # as docs/scoring.md's feature table has it (tests/test_readme.py)
    forest: int = 0
    """Its column among the Isolation Forest's inputs, from 1; 0: the forest does not see it."""


FEATURES: tuple[Feature, ...] = (
    Feature("log_amount", "log(1 + amount)"),
    Feature("amount_vs_median", "log((1 + amount) / (1 + median of the account's recent amounts)); 0 without history", forest=1),
    Feature("amount_vs_1d", "log((1 + amount) / (1 + the account's decayed mean amount over 1 day)); 0 without history"),
    Feature("amount_vs_7d", "the same against the account's decayed mean over 7 days"),
    Feature("amount_vs_30d", "the same against the account's decayed mean over 30 days", forest=2),
    Feature("log_history", "log(1 + transactions seen before for the account)"),
    Feature("count_10m", "the account's transactions in the 10 minutes before this one"),
    Feature("count_1h", "the account's transactions in the hour before this one", forest=5),
    Feature("count_24h", "the account's transactions in the 24 hours before this one"),
    Feature("log_sum_24h", "log(1 + the account's spending in the 24 hours before this one)"),
    Feature("count_7d", "the account's decayed transaction count over 7 days"),
    Feature("log_gap_s", "log(1 + seconds since the account's previous transaction); 7 days without one"),
    Feature("new_merchant", "1 if the account has history but never used this merchant"),
    Feature("new_location", "1 if the account has history but was never in this location; 0 when the location is not known"),
    Feature("log_speed_kmh", "log(1 + km/h to travel from the previous transaction's location); 0 if either is not known or not on the map", forest=6),
    Feature("log_home_km", "log(1 + km from the account's most frequent location); 0 if either is not known or not on the map", forest=7),
    Feature("small_10m", "transactions under 5.00 by the account in the 10 minutes before (card testing)", forest=4),
    Feature("hour_sin", "sin(2 pi hour / 24), hour of day in UTC"),
    Feature("hour_cos", "cos(2 pi hour / 24)"),
    Feature("weekday_sin", "sin(2 pi weekday / 7), Monday = 0"),
    Feature("weekday_cos", "cos(2 pi weekday / 7)"),
    Feature("merchant_amount_vs_30d", "log((1 + amount) / (1 + the merchant's decayed mean amount over 30 days)); 0 for a new merchant", forest=3),
    Feature("merchant_log_count_1d", "log(1 + the merchant's decayed transaction count over 1 day)"),
    Feature("merchant_volume_1h_vs_7d", "log((1 + merchant transactions in the last hour, decayed) / (1 + its hourly average over 7 days))"),
    Feature("previous_amount", "the amount of the account's previous transaction; 0 without one"),
)  # fmt: skip
"""The inputs of the supervised model, in column order (:meth:`AccountStates.transform`'s rows).

The Isolation Forest sees the subset with a ``forest`` column: one column per way fraud is
extreme (amount for the account and for the merchant, bursts, card testing, travel). Chosen on
the evaluation set (docs/detection.md): every extra column that ordinary events are extreme on
too (cyclic time, gaps, merchant volume, new merchant) let ordinary events crowd the flag budget.
The supervised model, which learns each column's weight from labels, gets them all."""

LABEL_FEATURES: tuple[Feature, ...] = (
    Feature("merchant_fraud_share_1d", "share of confirmed fraud among the merchant's labels received in the last day (decayed); 0 without labels"),
    Feature("merchant_fraud_share_7d", "the same over 7 days"),
    Feature("merchant_fraud_share_30d", "the same over 30 days"),
    Feature("merchant_log_labels_30d", "log(1 + the merchant's labels received over 30 days, decayed)"),
    Feature("account_fraud_30d", "the account's confirmed frauds received over 30 days, decayed"),
    Feature("anomaly_score", "the Isolation Forest's score of this event"),
)  # fmt: skip
"""Extra inputs of the supervised model only: what delayed labels taught (:class:`LabelMemory`),
then the anomaly score (last: the scoring core appends it)."""


def _check_declarations(features: tuple[Feature, ...], labels: tuple[Feature, ...]) -> None:
    names = [f.name for f in features + labels]
    if len(set(names)) < len(names):
        twice = sorted({n for n in names if names.count(n) > 1})
        raise ValueError(f"features declared twice: {twice}")
    if labels[-1].name != "anomaly_score":  # the scoring core appends the score last
        raise ValueError("LABEL_FEATURES must end with anomaly_score")
    columns = sorted(f.forest for f in features if f.forest)
    if columns != list(range(1, len(columns) + 1)) or any(f.forest for f in labels):
        raise ValueError(f"the forest's columns (Feature.forest) must be 1, 2, ...: {columns}")


_check_declarations(FEATURES, LABEL_FEATURES)
FEATURE_NAMES = tuple(f.name for f in FEATURES)
WIDTH = len(FEATURE_NAMES)
ANOMALY_FEATURE_NAMES = tuple(f.name for f in sorted(FEATURES, key=lambda f: f.forest) if f.forest)
"""The Isolation Forest's inputs, in its column order (Feature.forest)."""
ANOMALY_COLUMNS = np.array([FEATURE_NAMES.index(n) for n in ANOMALY_FEATURE_NAMES])
LABEL_FEATURE_NAMES = tuple(f.name for f in LABEL_FEATURES)
SUPERVISED_FEATURE_NAMES = FEATURE_NAMES + LABEL_FEATURE_NAMES
SLOT: dict[str, int] = {name: i for i, name in enumerate(SUPERVISED_FEATURE_NAMES)}
"""Each feature's column: in a row of :meth:`AccountStates.transform` (the model inputs), and in
the supervised model's rows (those, then the label inputs)."""
_LABEL_COLUMN = {name: i for i, name in enumerate(LABEL_FEATURE_NAMES[:-1])}  # LabelMemory's
SMALL_AMOUNT = 5.0
NO_GAP_S = 7 * DAY
MIN_TRAVEL_H = 1 / 60  # two events a minute apart in different cities: at most 60x the distance
_TAU = tuple(w for _, w in DECAY_WINDOWS)
# The same numbers as C doubles where compiled (features.pxd): no Python float on the way.
_DAY, _PI = DAY, math.pi
_TAU_1D, _TAU_7D, _TAU_30D = _TAU
_NO_GAP_S, _MIN_TRAVEL_H, _SMALL_AMOUNT = NO_GAP_S, MIN_TRAVEL_H, SMALL_AMOUNT
_WIDTH = WIDTH
if not cython.compiled:  # compiled: features.pxd's inline C, on the arrays' doubles in place
    # (Python's bisect on an array('d') makes a float object of every value it compares:
    # about 36 an event)

    _at = getitem
    _bisect_left, _bisect_right = bisect_left, bisect_right

    class _PlainRow:
        """The row of the event being computed (compiled: features.pxd's struct ``Row``): a
        slot per declared feature, so that setting an undeclared name raises."""

        __slots__ = FEATURE_NAMES

    def _row_fields() -> tuple[str, ...]:
        return _PlainRow.__slots__

    _values = attrgetter(*FEATURE_NAMES)

    def _emit(states: AccountStates, out: array, base: int) -> None:
        """The row into ``out[base:base + WIDTH]``, in declaration order; a new row for the next
        event, so that a feature an event leaves unset is an error, never a stale value."""
        row, states._row = states._row, _PlainRow()
        try:
            out[base : base + _WIDTH] = array("d", _values(row))
        except AttributeError:
            unset = [n for n in FEATURE_NAMES if not hasattr(row, n)]
            raise AttributeError(f"declared in FEATURES, not computed: {unset}") from None


def _check_row(fields: tuple[str, ...]) -> None:
    """The row must hold exactly the declared features, in declaration order (compiled: the
    struct setup.py wrote from FEATURES when the module was built)."""
    if fields != FEATURE_NAMES:
        raise ImportError(
            f"the compiled features' row {fields} is not FEATURES {FEATURE_NAMES}: the module "
            "was built before the declaration changed (make install)"
        )


_check_row(_row_fields())


_WEEKDAYS = tuple(
    (math.sin(2 * math.pi * weekday / 7), math.cos(2 * math.pi * weekday / 7))
    for weekday in range(7)
)  # sin, cos of each weekday (Monday = 0)


class AccountState:
    """One account's memory: its newest ``history`` events and decayed sums."""

    __slots__ = (
        "times", "amounts", "by_amount", "merchants", "locations", "seen", "last_time",
        "last_location", "home_location", "decay_time", "count_1d", "count_7d", "count_30d",
        "sum_1d", "sum_7d", "sum_30d",
    )  # fmt: skip

    def __init__(self) -> None:
        # Arrays of doubles, not lists of floats: a quarter of the memory, and nothing for the
        # cyclic garbage collector to walk (its full passes over a million accounts' lists
        # stalled every batch for a fraction of a second).
        self.times = array("d")  # event times of the newest events, ascending
        self.amounts = array("d")  # their amounts, aligned with ``times``
        self.by_amount = array("d")  # the same amounts sorted (the median in O(1))
        self.merchants: dict[str, int] = {}  # uses, least recently used first
        self.locations: dict[str, int] = {}
        self.seen = 0
        self.last_time = -math.inf  # the newest event time (none before the first event)
        self.last_location: str | None = None
        self.home_location: str | None = None  # the most frequent location so far
        # Decayed counts and sums (one per DECAY_WINDOWS), valid at event time decay_time.
        self.decay_time = 0.0
        self.count_1d = self.count_7d = self.count_30d = 0.0
        self.sum_1d = self.sum_7d = self.sum_30d = 0.0


class MerchantState:
    """Decayed volume and amount profile of one merchant."""

    __slots__ = ("decay_time", "count_1h", "count_1d", "count_7d", "count_30d", "sum_30d")

    def __init__(self) -> None:
        self.decay_time = 0.0
        self.count_1h = self.count_1d = self.count_7d = self.count_30d = self.sum_30d = 0.0


class AccountStates:
    """The bounded per-account and per-merchant memory, and the feature computation over it."""

    def __init__(
        self,
        max_accounts: int = 1_000_000,
        history: int = 50,
        max_places: int = 32,
        max_merchants: int = 200_000,
    ):
        self.max_accounts = max_accounts
        self.history = history
        self.max_places = max_places
        self.max_merchants = max_merchants
        self._accounts: OrderedDict[str, AccountState] = OrderedDict()
        self._merchants: OrderedDict[str, MerchantState] = OrderedDict()
        self.evicted = 0
        if not cython.compiled:  # compiled: a C struct in the object (features.pxd)
            self._row = _PlainRow()  # the features of the event being computed, by name

    def __len__(self) -> int:
        return len(self._accounts)

    def get(self, account_id: str) -> AccountState | None:
        return self._accounts.get(account_id)

    def transform(self, txns: list[Transaction]) -> np.ndarray:
        """Feature rows for ``txns`` in order, each computed before the event joins the state.
        Accounts beyond ``max_accounts`` are evicted after the batch, never during it: the batch
        is stored before the next one, so an evicted account can be rebuilt (:meth:`restore`)."""
        n = len(txns)
        # Row after row into one buffer of doubles, seen by NumPy without a copy (compiled: a C
        # store a value, with no Python float made for it).
        values = array("d", bytes(8 * n * _WIDTH))
        out = values  # compiled: a typed view of its memory (features.pxd)
        base = 0
        for txn in txns:
            state = self._state(txn.account_id)
            merchant = self._merchant(txn.merchant)
            t = txn.event_time  # a property: read once per event
            amount = txn.amount
            log_amount = log1p(amount)  # the event's features into the row, by name
            self._row.log_amount = log_amount
            self._account_amounts(state, log_amount)
            self._account_windows(state, t)
            self._travel(state, txn, t)
            self._calendar(t)
            self._merchant_profile(merchant, log_amount, t)
            _emit(self, out, base)  # the row into its columns
            self._learn_account(state, txn, amount, t)
            learn_merchant(merchant, amount, t)
            base += _WIDTH
        self.trim()
        return np.frombuffer(values, dtype=np.float64).reshape(n, _WIDTH)

    def learn(self, txns: list[Transaction]) -> None:
        """Add events to the state without computing features (rebuilding after a restart)."""
        for txn in txns:
            t = txn.event_time
            amount = txn.amount
            self._learn_account(self._state(txn.account_id), txn, amount, t)
            learn_merchant(self._merchant(txn.merchant), amount, t)
        self.trim()

    def trim(self) -> None:
        """Evict the least recently seen accounts beyond ``max_accounts``."""
        accounts = self._accounts
        while len(accounts) > self.max_accounts:
            accounts.popitem(last=False)
            self.evicted += 1

    def drop_accounts(self) -> None:
        """Forget every account (partitions moved between processors: what is in memory may be
        stale); the caller restores them from their stored events (:meth:`restore`,
        :meth:`not_loaded`). The merchants stay."""
        self._accounts.clear()

    def drop_merchants(self) -> None:
        """Forget every merchant (several processors: a :class:`~stream_processor.merchants.
        MerchantTable` rebuilds them from every processor's shares)."""
        self._merchants.clear()

    def merchant(self, name: str) -> MerchantState:
        """The merchant's state (a new one if unknown), as the features read it."""
        return self._merchant(name)

    def not_loaded(self, count: int) -> None:
        """``count`` accounts with stored events were not loaded at start (beyond
        ``max_accounts``): counted as evicted, so they are rebuilt when they come back."""
        self.evicted += max(0, count)

    def missing(self, account_ids: set[str]) -> list[str]:
        """Which of ``account_ids`` may have been evicted: those not in memory, once any was.
        Before that, every account with stored events is in memory (or counted by
        :meth:`not_loaded`): one not in memory is new, and nothing needs looking up."""
        if not self.evicted:
            return []
        accounts = self._accounts
        return [a for a in account_ids if a not in accounts]

    def restore(self, history: list[Transaction]) -> int:
        """Rebuild evicted accounts from their stored events (oldest first): account state
        only, the merchants already counted these events. Returns the accounts rebuilt."""
        rebuilt: dict[str, AccountState] = {}
        for txn in history:
            state = rebuilt.get(txn.account_id)
            if state is None:
                if txn.account_id in self._accounts:
                    continue  # in memory already: its state is newer than the stored events
                state = rebuilt[txn.account_id] = AccountState()
            self._learn_account(state, txn, txn.amount, txn.event_time)
        self._accounts.update(rebuilt)  # the most recently seen: about to be used
        return len(rebuilt)

    def _state(self, account_id: str) -> AccountState:
        state = self._accounts.get(account_id)
        if state is None:
            state = self._accounts[account_id] = AccountState()
        else:
            self._accounts.move_to_end(account_id)
        return state

    def _merchant(self, name: str) -> MerchantState:
        state = self._merchants.get(name)
        if state is None:
            state = self._merchants[name] = MerchantState()
            if len(self._merchants) > self.max_merchants:
                self._merchants.popitem(last=False)
        else:
            self._merchants.move_to_end(name)
        return state

    def _account_amounts(self, s: AccountState, log_amount: float) -> None:
        """The amount against the account's median and decayed means; its history's length."""
        by_amount = s.by_amount
        n = len(by_amount)
        if n:
            mid = n // 2
            if n % 2:
                median = _at(by_amount, mid)
            else:
                median = (_at(by_amount, mid - 1) + _at(by_amount, mid)) / 2
            self._row.amount_vs_median = log_amount - log1p(median)
        else:
            self._row.amount_vs_median = 0.0
        # The decayed mean is sum / count, both decayed alike (one per DECAY_WINDOWS).
        c1, c7, c30 = s.count_1d, s.count_7d, s.count_30d
        self._row.amount_vs_1d = log_amount - log1p(s.sum_1d / c1) if c1 > 1e-9 else 0.0
        self._row.amount_vs_7d = log_amount - log1p(s.sum_7d / c7) if c7 > 1e-9 else 0.0
        self._row.amount_vs_30d = log_amount - log1p(s.sum_30d / c30) if c30 > 1e-9 else 0.0
        self._row.log_history = log1p(s.seen)

    def _account_windows(self, s: AccountState, t: float) -> None:
        """Exact windows by bisection on the time-ordered history (events at or before t), and
        the decayed count over 7 days."""
        times, amounts = s.times, s.amounts
        hi = _bisect_right(times, t, 0, len(times))
        lo24 = _bisect_left(times, t - _DAY, 0, hi)
        lo1h = _bisect_left(times, t - 3600, lo24, hi)
        lo10 = _bisect_left(times, t - 600, lo1h, hi)
        sum24 = 0.0
        for k in range(lo24, hi):  # in order, as sum() adds them (before Python 3.12)
            sum24 += _at(amounts, k)
        small = 0
        for k in range(lo10, hi):
            if _at(amounts, k) < _SMALL_AMOUNT:
                small += 1
        self._row.count_10m = hi - lo10
        self._row.count_1h = hi - lo1h
        self._row.count_24h = hi - lo24
        self._row.log_sum_24h = log1p(sum24)
        self._row.small_10m = small
        self._row.previous_amount = _at(amounts, hi - 1) if hi else 0.0  # newest at or before t
        age = max(0.0, t - s.decay_time)
        self._row.count_7d = s.count_7d * exp(-age / _TAU_7D)

    def _travel(self, s: AccountState, txn: Transaction, t: float) -> None:
        """The gap since the account's newest event, what is new to it, the speed from its
        previous location and the distance from its home."""
        has_history = s.seen > 0
        location = txn.location  # None: not known, and then neither new nor far (never a guess)
        if not has_history:
            gap, speed = _NO_GAP_S, 0.0
        else:
            gap = max(0.0, t - s.last_time)
            km = distance_km(s.last_location, location) if s.last_location and location else None
            speed = log1p(km / max(gap / 3600, _MIN_TRAVEL_H)) if km else 0.0
        home_km = distance_km(s.home_location, location) if s.home_location and location else None
        self._row.log_gap_s = log1p(gap)
        self._row.new_merchant = float(has_history and txn.merchant not in s.merchants)
        self._row.new_location = float(
            has_history and location is not None and location not in s.locations
        )
        self._row.log_speed_kmh = speed
        self._row.log_home_km = log1p(home_km) if home_km else 0.0

    def _calendar(self, t: float) -> None:
        """The hour of the day and the day of the week, as points on a circle."""
        hour = (t % _DAY) / 3600
        day = int(t // _DAY)
        self._row.hour_sin = sin(2 * _PI * hour / 24)
        self._row.hour_cos = cos(2 * _PI * hour / 24)
        # 1970-01-01: a Thursday
        self._row.weekday_sin, self._row.weekday_cos = _WEEKDAYS[(day + 3) % 7]

    def _merchant_profile(self, m: MerchantState, log_amount: float, t: float) -> None:
        """The amount against the merchant's usual, its volume: decayed to this event's time."""
        m_age = max(0.0, t - m.decay_time)
        if m.count_30d > 1e-9:
            self._row.merchant_amount_vs_30d = log_amount - log1p(m.sum_30d / m.count_30d)
        else:
            self._row.merchant_amount_vs_30d = 0.0
        m_1h = m.count_1h * exp(-m_age / 3600)
        self._row.merchant_log_count_1d = log1p(m.count_1d * exp(-m_age / _DAY))
        m_7d = m.count_7d * exp(-m_age / _TAU_7D)
        self._row.merchant_volume_1h_vs_7d = log((1 + m_1h) / (1 + m_7d / 168))

    def _learn_account(self, s: AccountState, txn: Transaction, amount: float, t: float) -> None:
        """Add one event (``t``: its event time) to the account's state."""
        times, amounts, by_amount = s.times, s.amounts, s.by_amount
        n = len(times)
        if not n or t >= _at(times, n - 1):
            times.append(t)
            amounts.append(amount)
        else:  # a late event: keep the history in event-time order
            at = _bisect_right(times, t, 0, n)
            times.insert(at, t)
            amounts.insert(at, amount)
        by_amount.insert(_bisect_right(by_amount, amount, 0, len(by_amount)), amount)  # insort
        if len(times) > self.history:  # forget the earliest event
            del times[0]
            gone = amounts.pop(0)
            del by_amount[_bisect_left(by_amount, gone, 0, len(by_amount))]
        s.seen += 1
        # Interned: a million accounts share one copy of each name instead of one each.
        _bump(s.merchants, intern(txn.merchant), self.max_places)
        location = txn.location
        if location is not None:  # an unknown place counts towards no location
            location = intern(location)
            evicted = _bump(s.locations, location, self.max_places)
            home = s.home_location
            if evicted is not None and evicted == home:
                s.home_location = max(s.locations, key=s.locations.__getitem__)
            elif home is None or (home != location and s.locations[location] > s.locations[home]):
                # The first most frequent in least-recently-used order, as max() over the dict
                # would find: only the bumped location can overtake it.
                s.home_location = location
        if t >= s.last_time:  # the newest event's place, None when unknown: no speed from it
            s.last_time = t
            s.last_location = location
        # Decayed sums move forward in time only; a late event counts as if at decay_time.
        age = t - s.decay_time
        f1 = f7 = f30 = 1.0  # a late event: no decay (x * 1.0 is exactly x)
        if age > 0:
            f1, f7, f30 = exp(-age / _TAU_1D), exp(-age / _TAU_7D), exp(-age / _TAU_30D)
            s.decay_time = t
        s.count_1d = s.count_1d * f1 + 1.0
        s.count_7d = s.count_7d * f7 + 1.0
        s.count_30d = s.count_30d * f30 + 1.0
        s.sum_1d = s.sum_1d * f1 + amount
        s.sum_7d = s.sum_7d * f7 + amount
        s.sum_30d = s.sum_30d * f30 + amount


def learn_merchant(m: MerchantState, amount: float, t: float) -> None:
    """Add one sale (``t``: its event time) to the merchant's decayed counters."""
    age = t - m.decay_time
    if age > 0:
        m.count_1h *= exp(-age / 3600)
        m.count_1d *= exp(-age / _DAY)
        m.count_7d *= exp(-age / _TAU_7D)
        f30 = exp(-age / _TAU_30D)
        m.count_30d *= f30
        m.sum_30d *= f30
        m.decay_time = t
    m.count_1h += 1
    m.count_1d += 1
    m.count_7d += 1
    m.count_30d += 1
    m.sum_30d += amount


def add_merchant(m: MerchantState, part: MerchantState, sign: float = 1.0) -> None:
    """Add ``part`` (another share of the merchant's sales) to ``m``, or take it away (``sign``
    -1). Decayed sums add up once decayed to one time: the later of the two."""
    t = max(m.decay_time, part.decay_time)
    a, b = t - m.decay_time, t - part.decay_time  # each one's age at t
    m.count_1h = max(0.0, m.count_1h * exp(-a / 3600) + sign * part.count_1h * exp(-b / 3600))
    m.count_1d = max(0.0, m.count_1d * exp(-a / _DAY) + sign * part.count_1d * exp(-b / _DAY))
    f30, g30 = exp(-a / _TAU_30D), exp(-b / _TAU_30D)
    m.count_7d = max(0.0, m.count_7d * exp(-a / _TAU_7D) + sign * part.count_7d * exp(-b / _TAU_7D))
    m.count_30d = max(0.0, m.count_30d * f30 + sign * part.count_30d * g30)
    m.sum_30d = max(0.0, m.sum_30d * f30 + sign * part.sum_30d * g30)
    m.decay_time = t


class LabelMemory:
    """What confirmed labels taught so far: decayed fraud shares per merchant and account.
    Windows run on the time a label was received (``labelled_at``): a share over 7 days is
    "among the labels that arrived in the last 7 days". Only received labels count."""

    def __init__(self, max_keys: int = 1_000_000):
        self.max_keys = max_keys
        self._merchants: OrderedDict[str, list[float]] = OrderedDict()  # t, (fraud, n) x 3
        self._accounts: OrderedDict[str, list[float]] = OrderedDict()  # t, fraud_30d
        self.labels = 0
        self.frauds = 0

    def add(self, merchant: str, account_id: str, is_fraud: int, labelled_at: float) -> None:
        self.labels += 1
        self.frauds += is_fraud
        m = self._merchants.get(merchant)
        if m is None:
            m = self._merchants[merchant] = [labelled_at, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]
            if len(self._merchants) > self.max_keys:
                self._merchants.popitem(last=False)
        age = max(0.0, labelled_at - m[0])  # an older label counts as if received at m[0]
        m[0] = max(m[0], labelled_at)
        for k, tau in enumerate(_TAU):
            f = math.exp(-age / tau)  # 1.0 for age 0: x * 1.0 is exactly x
            m[1 + 2 * k] = m[1 + 2 * k] * f + is_fraud
            m[2 + 2 * k] = m[2 + 2 * k] * f + 1.0
        if is_fraud:
            a = self._accounts.get(account_id)
            if a is None:
                a = self._accounts[account_id] = [labelled_at, 0.0]
                if len(self._accounts) > self.max_keys:
                    self._accounts.popitem(last=False)
            if labelled_at > a[0]:
                a[1] *= math.exp(-(labelled_at - a[0]) / _TAU[2])
                a[0] = labelled_at
            a[1] += 1.0

    def features(self, txns: list[Transaction]) -> np.ndarray:
        """The label-derived columns (LABEL_FEATURE_NAMES but ``anomaly_score``) for each event."""
        out = np.zeros((len(txns), len(_LABEL_COLUMN)))
        if not self.labels:
            return out
        shares = [_LABEL_COLUMN[f"merchant_fraud_share_{window}"] for window, _ in DECAY_WINDOWS]
        labels_30d = _LABEL_COLUMN["merchant_log_labels_30d"]
        account_30d = _LABEL_COLUMN["account_fraud_30d"]
        for i, txn in enumerate(txns):
            t = txn.event_time
            m = self._merchants.get(txn.merchant)
            if m is not None:
                age = max(0.0, t - m[0])
                for k, tau in enumerate(_TAU):
                    n = m[2 + 2 * k] * math.exp(-age / tau)
                    if n > 1e-9:
                        out[i, shares[k]] = m[1 + 2 * k] / m[2 + 2 * k]
                out[i, labels_30d] = math.log1p(m[6] * math.exp(-age / _TAU[2]))
            a = self._accounts.get(txn.account_id)
            if a is not None:
                out[i, account_30d] = a[1] * math.exp(-max(0.0, t - a[0]) / _TAU[2])
        return out


def _bump(counts: dict, key: str, limit: int) -> str | None:
    """Count one use of ``key`` and make it the most recent; returns the key evicted, if any."""
    counts[key] = counts.pop(key, 0) + 1  # re-inserted last: dicts keep insertion order
    if len(counts) > limit:
        evicted = next(iter(counts))
        del counts[evicted]
        return evicted
    return None


def feature(row: np.ndarray, name: str) -> float:
    """One named value of a feature row (model inputs, then label inputs)."""
    return float(row[SLOT[name]])


def named(row: np.ndarray) -> dict[str, float]:
    """Every value of a feature row by name (model inputs, then label inputs if it has them)."""
    return dict(zip(SUPERVISED_FEATURE_NAMES, row.tolist(), strict=False))
