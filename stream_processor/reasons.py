"""Readable reasons for a flagged event, read off the event and its feature row alone: the row is
what the models scored and what is stored, computed before the event joined its account's state,
so a reason never says what the state learned from the event itself (the event's own place as
the account's usual one, say)."""

from __future__ import annotations

import math

import numpy as np

from fraudstream.schema import Transaction
from stream_processor.features import SMALL_AMOUNT, named

AMOUNT_RATIO = 3.0  # "amount 9.4x account median" from this ratio up
MIN_MEDIAN = 0.01  # a median of zero amounts (card verifications) is no yardstick
BURST_10M = 2  # earlier transactions in 10 min that make a burst
BURST_1H = 4
QUICK_GAP_S = 60.0
NIGHT_HOURS = range(0, 5)


MERCHANT_SHARE = 0.05  # "merchant: 12% of labels in 7 days were fraud" from this share up
FAST_KMH = 900.0  # faster than a plane


def explain(
    txn: Transaction,
    row: np.ndarray,
    score: float,
    threshold: float,
    *,
    anomalous: bool = True,
    probability: float | None = None,
    supervised_threshold: float | None = None,
) -> list[str]:
    """Reasons, strongest first; never empty (ends with the score that flagged the event).
    ``row``: the model inputs then the label inputs (features.SUPERVISED_FEATURE_NAMES)."""
    f = named(row)
    reasons = _account_reasons(txn, f)
    hour = txn.timestamp.hour
    if hour in NIGHT_HOURS:
        reasons.append(f"unusual hour {hour:02d}:{txn.timestamp.minute:02d} UTC")
    share = f["merchant_fraud_share_7d"]
    if share >= MERCHANT_SHARE:
        reasons.append(f"merchant {txn.merchant}: {share:.0%} of its labels in 7 days were fraud")
    if f["account_fraud_30d"] >= 0.5:
        reasons.append("account had confirmed fraud in the last 30 days")
    if probability is not None and supervised_threshold is not None:
        if probability >= supervised_threshold:
            reasons.append(
                f"fraud probability {probability:.2f} (supervised, threshold {supervised_threshold:.2f})"
            )
    if anomalous:
        reasons.append(f"score {score:.3f} above threshold {threshold:.3f}")
    return reasons


def _account_reasons(txn: Transaction, f: dict[str, float]) -> list[str]:
    """What stands out against the account's own past (``f``: the event's features by name)."""
    reasons = []
    history = math.expm1(f["log_history"])
    if history < 0.5:
        reasons.append("first transaction seen for this account")
    else:
        median = (1 + txn.amount) / math.exp(f["amount_vs_median"]) - 1
        if median >= MIN_MEDIAN and txn.amount / median >= AMOUNT_RATIO:
            reasons.append(f"amount {txn.amount / median:.1f}x account median ({median:,.2f})")
    c10, c1h = f["count_10m"], f["count_1h"]
    if c10 >= BURST_10M:
        reasons.append(f"{int(c10) + 1} transactions in 10 min")
    elif c1h >= BURST_1H:
        reasons.append(f"{int(c1h) + 1} transactions in 1 h")
    small = f["small_10m"]
    if small >= 2:
        reasons.append(
            f"after {int(small)} transactions under {SMALL_AMOUNT:.2f} in 10 min (card testing pattern)"
        )
    speed = math.expm1(f["log_speed_kmh"])
    if speed >= FAST_KMH:
        reasons.append(f"{speed:,.0f} km/h from the previous location")
    if f["new_location"]:
        home_km = math.expm1(f["log_home_km"])  # 0: the usual place is not on the map
        usual = f", {home_km:,.0f} km from the account's usual place" if home_km >= 0.5 else ""
        reasons.append(f"new location {txn.location}{usual}")
    if f["new_merchant"]:
        reasons.append(f"new merchant {txn.merchant}")
    gap = math.expm1(f["log_gap_s"])
    if history >= 0.5 and gap < QUICK_GAP_S:
        reasons.append(f"{gap:.0f} s after the previous transaction")
    return reasons
