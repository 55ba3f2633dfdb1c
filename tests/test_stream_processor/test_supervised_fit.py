"""How the supervised model is fit: its bins (stream_processor.fitting.tail_binned) split a fraud
class defined by a sharp threshold far in the tail of amounts exactly, and binning changes no
score; its sample of legitimate events leaves its probabilities calibrated."""

import io

import joblib
import numpy as np
import pytest
from scipy.stats import norm
from sklearn.metrics import average_precision_score

from stream_processor import fitting
from stream_processor.fitting import MAX_BINS, fit_supervised, load_supervised, tail_binned


def _amounts_with_fraud_above(rng, rows: int, share: float):
    """Log-normal amounts, every one above the amount with ``share`` of them above it fraud,
    beside ordinary columns the label does not depend on."""
    amounts = rng.lognormal(mean=3.5, sigma=1.2, size=rows)
    labels = (amounts > np.exp(3.5 + 1.2 * norm.ppf(1 - share))).astype(int)
    noise = rng.normal(size=(rows, 3))
    return np.column_stack([np.log1p(amounts), noise]), labels


def test_fraud_above_a_fixed_amount_far_in_the_tail_is_split_exactly():
    """Two in a thousand amounts lie above the fraud threshold: with scikit-learn's evenly
    spaced quantile bins, the rarest 0.4 % share one bin and ordinary amounts just below the
    threshold outrank the frauds above it."""
    rng = np.random.default_rng(3)
    x, y = _amounts_with_fraud_above(rng, 60_000, 0.002)
    model = fit_supervised(x, y, version=1)
    test_x, test_y = _amounts_with_fraud_above(np.random.default_rng(4), 200_000, 0.002)
    assert average_precision_score(test_y, model.score(test_x)) > 0.98


def test_a_model_fit_on_binned_values_scores_the_raw_values_alike():
    """Each value moves to its nearest chosen value, and the trees split midway between chosen
    values: so raw and binned inputs take the same branches, and scoring needs no binning."""
    rng = np.random.default_rng(5)
    x, y = _amounts_with_fraud_above(rng, 20_000, 0.01)
    x[:, 1] = np.round(x[:, 1])  # few distinct values: kept as they are
    x[rng.random(x.shape) < 0.02] = np.nan
    binned = tail_binned(x)
    assert np.array_equal(binned[:, 1], x[:, 1], equal_nan=True)
    assert np.array_equal(np.isnan(binned), np.isnan(x))
    for j in (0, 2, 3):
        kept = ~np.isnan(binned[:, j])
        assert 100 < len(np.unique(binned[kept, j])) <= MAX_BINS
    model = fit_supervised(x, y, version=1)
    assert np.array_equal(model.score(x), model.score(binned))


def test_probabilities_stay_calibrated_when_legitimate_events_are_sampled(monkeypatch):
    """The fit sees every fraud but a sample of the legitimate events, so its odds of fraud are
    too high by the sampling rate; the model's shift takes that back: the mean P(fraud) matches
    the share of fraud, and a model loaded from model_versions scores alike."""
    monkeypatch.setattr(fitting, "MAX_NEGATIVES", 5_000)
    rng = np.random.default_rng(8)
    x = rng.normal(size=(40_000, 3))
    y = (rng.random(40_000) < 1 / (1 + np.exp(5 - 1.5 * x[:, 0]))).astype(int)  # about 2 %
    model = fit_supervised(x, y, version=1)
    saved = joblib.load(io.BytesIO(model.dumps()))
    assert saved["log_odds_shift"] == pytest.approx(np.log(5_000 / (y == 0).sum()))
    test_x = rng.normal(size=(100_000, 3))
    share = np.mean(1 / (1 + np.exp(5 - 1.5 * test_x[:, 0])))
    assert model.score(test_x).mean() == pytest.approx(share, rel=0.15)
    unshifted = saved["estimator"].predict_proba(test_x)[:, 1].mean()
    assert unshifted > 4 * share  # the sample's odds: what the shift corrects
    loaded = load_supervised(model.dumps(), **_fields(model))
    assert np.array_equal(loaded.score(test_x), model.score(test_x))


def test_a_model_saved_before_the_shift_loads_without_one():
    rng = np.random.default_rng(9)
    x = rng.normal(size=(2_000, 3))
    y = (x[:, 0] > 1.5).astype(int)
    model = fit_supervised(x, y, version=1)
    bare = io.BytesIO()
    joblib.dump(joblib.load(io.BytesIO(model.dumps()))["estimator"], bare)
    loaded = load_supervised(bare.getvalue(), **_fields(model))
    assert np.array_equal(loaded.score(x), model.score(x))


def _fields(model):
    return {
        "version": model.version, "threshold": model.threshold, "fitted_at": model.fitted_at,
        "training_rows": model.training_rows, "frauds": model.frauds,
        "fit_seconds": model.fit_seconds, "reason": model.reason,
    }  # fmt: skip
