"""The anomaly model: a scikit-learn Isolation Forest and the threshold chosen when it was fit.

The score is the Isolation Forest anomaly score ``s(x) = -score_samples(x)``, in (0, 1]: **higher =
more anomalous**; about 0.5 is ordinary, near 1 is isolated in few splits. An event is flagged when
its score is above the threshold, the ``flag_quantile`` of the scores of the training window.
"""

from __future__ import annotations

import io
import time
from dataclasses import dataclass

import joblib
import numpy as np
from sklearn.ensemble import IsolationForest


@dataclass(frozen=True)
class FittedModel:
    version: int
    forest: IsolationForest
    threshold: float
    flag_quantile: float
    fitted_at: float  # epoch s
    training_rows: int
    fit_seconds: float
    reason: str  # why this fit happened: initial, events, interval

    def score(self, features: np.ndarray) -> np.ndarray:
        """Anomaly scores of a whole batch (one call: the per-call overhead is ~10 ms)."""
        if len(features) == 0:
            return np.empty(0)
        return -self.forest.score_samples(features)

    def dumps(self) -> bytes:
        buf = io.BytesIO()
        joblib.dump(self.forest, buf, compress=3)
        return buf.getvalue()

    @staticmethod
    def load_forest(blob: bytes) -> IsolationForest:
        return joblib.load(io.BytesIO(blob))


def fit_model(
    features: np.ndarray,
    *,
    version: int,
    reason: str,
    flag_quantile: float = 0.99,
    n_estimators: int = 100,
    seed: int = 42,
) -> FittedModel:
    """Fit on ``features`` (rows = events) and set the threshold at ``flag_quantile``."""
    if len(features) == 0:
        raise ValueError("cannot fit a model on no events")
    if len(features) == 1:
        features = np.repeat(features, 2, axis=0)  # a lone warm-up event still gets a model
    started = time.perf_counter()
    forest = IsolationForest(
        n_estimators=n_estimators, max_samples=min(256, len(features)), random_state=seed, n_jobs=1
    )
    forest.fit(features)
    scores = -forest.score_samples(features)
    threshold = float(np.quantile(scores, flag_quantile))
    return FittedModel(
        version=version,
        forest=forest,
        threshold=threshold,
        flag_quantile=flag_quantile,
        fitted_at=time.time(),
        training_rows=len(features),
        fit_seconds=time.perf_counter() - started,
        reason=reason,
    )
