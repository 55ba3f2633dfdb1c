"""The models as the processor scores with them: NumPy arrays only, no scikit-learn.

The score is the Isolation Forest anomaly score ``s(x) = -score_samples(x)``, in (0, 1]: **higher =
more anomalous**; about 0.5 is ordinary, near 1 is isolated in few splits. A model's ``threshold``
is the ``flag_quantile`` of the scores of its training window; events are flagged above the same
quantile of its recent scores once it has enough (:class:`stream_processor.scoring.AlertBudget`).

Fitting needs scikit-learn (:mod:`stream_processor.fitting`); it runs in the refit worker, which
sends back the fitted trees as the flat arrays here plus the estimator's joblib dump for
``model_versions``. The processor never imports scikit-learn, SciPy or pandas: about 110 MB of
resident memory that scoring does not need. Scores are identical to scikit-learn's (tested).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

try:  # the tree walk in C (treewalk.pyx, compiled at install); the NumPy walk below without it
    from stream_processor.treewalk import totals as _compiled_totals
except ImportError:  # pragma: no cover - a build without a C compiler
    _compiled_totals = None

_NO_NAN_RULE = np.zeros(0, dtype=np.uint8)

# What the refit worker runs, by name (``RefitRunner.submit``): importing them would import
# scikit-learn.
FIT_ANOMALY = "stream_processor.fitting:fit_model"
FIT_ANOMALY_STORED = "stream_processor.fitting:fit_model_stored"
FIT_SUPERVISED = "stream_processor.fitting:fit_supervised"
FIT_SUPERVISED_STORED = "stream_processor.fitting:fit_supervised_stored"
LOAD_ANOMALY = "stream_processor.fitting:load_model"
LOAD_SUPERVISED = "stream_processor.fitting:load_supervised"

MAX_NEGATIVES = 50_000  # legitimate labelled events a supervised fit samples at most
MAX_SAMPLES = 512  # rows per tree; 256 (the paper's default) let dense fraud mask rarer fraud


@dataclass(frozen=True, eq=False)
class FlatTrees:
    """Binary decision trees side by side in flat arrays, walked for a whole batch at once.

    Node ``i`` sends a row to ``children[2 i]`` when its ``feature`` value is at most
    ``threshold[i]``, else to ``children[2 i + 1]``; a leaf is its own child on both sides, so
    every row can take ``depth`` steps in every tree, and ``value[leaf]`` is the leaf's output.
    Rows with a NaN go to ``children[2 i + nan_right[i]]`` (None: the model never saw NaN).
    """

    roots: np.ndarray  # int32, one per tree
    feature: np.ndarray  # int32, column tested at each node
    threshold: np.ndarray  # float32 or float64, per node
    children: np.ndarray  # int32, 2 per node
    value: np.ndarray  # float64, per node (leaves matter)
    depth: int  # steps to reach a leaf from every root
    nan_right: np.ndarray | None = None  # uint8 per node

    def totals(self, x: np.ndarray, start: float = 0.0) -> np.ndarray:
        """``start`` plus the trees' leaf values, added tree by tree in order (as scikit-learn
        adds them, so the sums are bit for bit the same). In C where compiled, for inputs of the
        thresholds' type (float32 for the forest, float64 for the boosted trees)."""
        if _compiled_totals is not None and x.dtype == self.threshold.dtype and len(x):
            return _compiled_totals(
                np.ascontiguousarray(x),
                self.roots,
                self.feature,
                self.threshold,
                self.children,
                self.value,
                self.depth,
                _NO_NAN_RULE if self.nan_right is None else self.nan_right,
                start,
            )
        return self.walked_totals(x, start)

    def walked_totals(self, x: np.ndarray, start: float = 0.0) -> np.ndarray:
        """:meth:`totals` by a NumPy walk: every row one step down every tree at a time."""
        n, width = x.shape
        flat = x.ravel()
        base = (np.arange(n, dtype=np.int32) * np.int32(width))[:, None]
        nodes = np.broadcast_to(self.roots, (n, len(self.roots))).copy()
        nan = self.nan_right is not None and bool(np.isnan(flat).any())
        for _ in range(self.depth):
            values = flat.take(self.feature.take(nodes) + base)
            right = values > self.threshold.take(nodes)
            if nan:
                right |= np.isnan(values) & self.nan_right.take(nodes).astype(bool)
            nodes += nodes
            nodes += right
            nodes = self.children.take(nodes)
        values = self.value.take(nodes)
        if start:
            values = np.hstack([np.full((len(values), 1), start), values])
        return np.cumsum(values, axis=1)[:, -1]


@dataclass(frozen=True)
class Model:
    """What both models have, and model_versions records."""

    version: int
    trees: FlatTrees
    threshold: float  # flag above it (anomaly score), or from it (P(fraud))
    fitted_at: float  # epoch s
    training_rows: int
    fit_seconds: float
    reason: str  # why this fit happened: initial, events, interval, drift; labels (supervised)
    blob: bytes  # the joblib dump of the scikit-learn estimator, for model_versions

    def dumps(self) -> bytes:
        return self.blob


@dataclass(frozen=True)
class FittedModel(Model):
    """The Isolation Forest: a leaf's value is its depth (path length + expected rest, as
    scikit-learn counts it)."""

    normaliser: float  # trees x the expected path length of max_samples (0: single-sample trees)
    flag_quantile: float
    kind: str = "isolation_forest"

    def score(self, features: np.ndarray) -> np.ndarray:
        """Anomaly scores of a whole batch, equal to ``-forest.score_samples(features)``."""
        if len(features) == 0:
            return np.empty(0)
        if self.normaliser == 0:  # a forest of single-sample trees: sklearn's score is 1
            return np.ones(len(features))
        # The trees compare float32 inputs, as scikit-learn's do.
        x = np.ascontiguousarray(features, dtype=np.float32)
        return 2 ** (-self.trees.totals(x) / self.normaliser)


@dataclass(frozen=True)
class SupervisedModel(Model):
    """A gradient-boosted classifier trained on labelled history; ``score`` = P(fraud). A leaf's
    value is its contribution to the log-odds."""

    baseline: float  # log-odds before any tree
    frauds: int
    kind: str = "supervised"
    flag_quantile: float | None = None

    def score(self, features: np.ndarray) -> np.ndarray:
        if len(features) == 0:
            return np.empty(0)
        raw = self.trees.totals(np.ascontiguousarray(features, dtype=np.float64), self.baseline)
        return 1.0 / (1.0 + np.exp(-raw))
