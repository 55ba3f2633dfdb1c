"""ADWIN on the anomaly scores: a shift in the stream refits the forest early, with its reason."""

from datetime import UTC, datetime, timedelta

import numpy as np

from fraudstream.schema import Transaction
from stream_processor.core import RawMessage, ScoringCore

T0 = datetime(2026, 2, 2, tzinfo=UTC)


def stream(n, start, amount, rng, cities=("Paris",)):
    out = []
    for i in range(start, start + n):
        txn = Transaction(
            f"T{i}", f"A{i % 200}", float(amount * rng.lognormal(0, 0.3)), f"M{i % 40}",
            T0 + timedelta(minutes=7 * i), str(rng.choice(cities)),
        )  # fmt: skip
        out.append(RawMessage(txn.encode(), offset=i))
    return out


def run(core, messages):
    reasons = []
    for i in range(0, len(messages), 250):
        reasons += [m.reason for m in core.process(messages[i : i + 250]).models]
        reasons += [m.reason for m in core.wait_for_refit().models]
    return reasons


def test_a_shift_in_the_scores_triggers_a_drift_refit(settings):
    s = settings.replace(
        warmup_events=1000, refit_every_events=0, refit_interval_s=0, drift_delta=0.002
    )
    core = ScoringCore(s)
    rng = np.random.default_rng(3)
    calm = run(core, stream(6000, 0, 30.0, rng))
    assert calm[0] == "initial" and "drift" not in calm[1:]
    shifted = run(core, stream(4000, 6000, 900.0, rng, cities=("Oslo", "Rome", "Lisbon")))
    assert "drift" in shifted
    assert core.counts["drifts"] >= 1


def test_drift_detection_can_be_switched_off(settings):
    s = settings.replace(
        warmup_events=1000, refit_every_events=0, refit_interval_s=0, drift_delta=0.0
    )
    core = ScoringCore(s)
    rng = np.random.default_rng(3)
    reasons = run(core, stream(3000, 0, 30.0, rng)) + run(
        core, stream(3000, 3000, 900.0, rng, cities=("Oslo", "Rome"))
    )
    assert reasons == ["initial"]
