"""Readable reasons for a flagged event, read off its feature row and the account's state."""

from __future__ import annotations

import math

import numpy as np

from fraudstream.schema import Transaction
from stream_processor.features import SMALL_AMOUNT, AccountState, feature

AMOUNT_RATIO = 3.0  # "amount 9.4x account median" from this ratio up
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
    state: AccountState | None,
    *,
    anomalous: bool = True,
    probability: float | None = None,
    supervised_threshold: float | None = None,
) -> list[str]:
    """Reasons, strongest first; never empty (ends with the score that flagged the event).

    ``row`` holds the model inputs then the label inputs (features.SUPERVISED_FEATURE_NAMES).
    """
    reasons = []
    history = math.expm1(feature(row, "log_history"))
    if history < 0.5:
        reasons.append("first transaction seen for this account")
    else:
        ratio_log = feature(row, "amount_vs_median")
        median = (1 + txn.amount) / math.exp(ratio_log) - 1
        if median > 0 and txn.amount / median >= AMOUNT_RATIO:
            reasons.append(f"amount {txn.amount / median:.1f}x account median ({median:,.2f})")
    c10, c1h = feature(row, "count_10m"), feature(row, "count_1h")
    if c10 >= BURST_10M:
        reasons.append(f"{int(c10) + 1} transactions in 10 min")
    elif c1h >= BURST_1H:
        reasons.append(f"{int(c1h) + 1} transactions in 1 h")
    small = feature(row, "small_10m")
    if small >= 2:
        reasons.append(
            f"after {int(small)} transactions under {SMALL_AMOUNT:.2f} in 10 min (card testing pattern)"
        )
    speed = math.expm1(feature(row, "log_speed_kmh"))
    if speed >= FAST_KMH and state and state.last_location:
        reasons.append(f"{speed:,.0f} km/h from the previous location")
    if feature(row, "new_location"):
        usual = f" (usual: {state.home_location})" if state and state.home_location else ""
        reasons.append(f"new location {txn.location}{usual}")
    if feature(row, "new_merchant"):
        reasons.append(f"new merchant {txn.merchant}")
    gap = math.expm1(feature(row, "log_gap_s"))
    if history >= 0.5 and gap < QUICK_GAP_S:
        reasons.append(f"{gap:.0f} s after the previous transaction")
    hour = txn.timestamp.hour
    if hour in NIGHT_HOURS:
        reasons.append(f"unusual hour {hour:02d}:{txn.timestamp.minute:02d} UTC")
    share = feature(row, "merchant_fraud_share_7d")
    if share >= MERCHANT_SHARE:
        reasons.append(f"merchant {txn.merchant}: {share:.0%} of its labels in 7 days were fraud")
    if feature(row, "account_fraud_30d") >= 0.5:
        reasons.append("account had confirmed fraud in the last 30 days")
    if probability is not None and supervised_threshold is not None:
        if probability >= supervised_threshold:
            reasons.append(
                f"fraud probability {probability:.2f} (supervised, threshold {supervised_threshold:.2f})"
            )
    if anomalous:
        reasons.append(f"score {score:.3f} above threshold {threshold:.3f}")
    return reasons
