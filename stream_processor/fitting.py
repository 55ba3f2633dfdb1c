"""Fitting the models with scikit-learn, and turning a fitted estimator into the flat arrays of
:mod:`stream_processor.model`: the processor's only module that imports scikit-learn, run in the
refit worker, by name (``stream_processor.model.FIT_ANOMALY``, ...).
"""

from __future__ import annotations

import io
import math
import time
from dataclasses import replace

import joblib
import numpy as np
from sklearn.ensemble import HistGradientBoostingClassifier, IsolationForest

from stream_processor import compat
from stream_processor.model import (
    MAX_NEGATIVES,
    MAX_SAMPLES,
    FittedModel,
    FlatTrees,
    SupervisedModel,
)


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
        n_estimators=n_estimators,
        max_samples=min(MAX_SAMPLES, len(features)),
        random_state=seed,
        n_jobs=1,
    )
    forest.fit(features)
    model = anomaly_model(
        forest,
        _dump(forest),
        version=version,
        threshold=0.0,
        flag_quantile=flag_quantile,
        fitted_at=time.time(),
        training_rows=len(features),
        fit_seconds=0.0,
        reason=reason,
    )
    # The training window's scores by the flat trees: equal to -forest.score_samples (tested),
    # in less than half the time (a 50,000-row window: 0.06 s against 0.15; docs/benchmarks.md).
    threshold = float(np.quantile(model.score(features), flag_quantile))
    return replace(model, threshold=threshold, fit_seconds=time.perf_counter() - started)


def fit_model_stored(database_url: str, window: int, **fit) -> FittedModel | None:
    """:func:`fit_model` on the newest ``window`` events the group stored, read from the shared
    database here in the worker; None while it holds none."""
    from stream_processor.sink import stored_anomaly_inputs  # the worker's own connection

    features = stored_anomaly_inputs(database_url, window)
    return fit_model(features, **fit) if len(features) else None


def fit_supervised(
    features: np.ndarray,
    labels: np.ndarray,
    *,
    version: int,
    threshold: float = 0.5,
    seed: int = 42,
) -> SupervisedModel:
    """Fit P(fraud | features) on labelled events (both classes must be present)."""
    if len(np.unique(labels)) < 2:
        raise ValueError("a supervised fit needs both fraud and legitimate labels")
    started = time.perf_counter()
    # Legitimate events dominate. The model is fit on all frauds and a sample of legitimate
    # events, unweighted: several times faster than on all of them, and it ranks frauds better
    # than either all of them or the sample weighted back up (docs/detection.md). Its odds are
    # those of the sample; adding the log of the sampling rate gives back the odds of the whole
    # (the prior correction for undersampling), so P(fraud) stays calibrated.
    log_odds_shift, fit_labels = 0.0, labels
    negatives = np.flatnonzero(labels == 0)
    if len(negatives) > MAX_NEGATIVES:
        kept = np.random.default_rng(seed).choice(negatives, MAX_NEGATIVES, replace=False)
        rows = np.sort(np.concatenate([np.flatnonzero(labels != 0), kept]))
        features, fit_labels = features[rows], labels[rows]
        log_odds_shift = math.log(MAX_NEGATIVES / len(negatives))
    estimator = HistGradientBoostingClassifier(
        max_iter=150, learning_rate=0.1, max_leaf_nodes=31, l2_regularization=1.0,
        max_bins=MAX_BINS, random_state=seed,
    )  # fmt: skip
    estimator.fit(tail_binned(features), fit_labels)
    saved = {"estimator": estimator, "log_odds_shift": log_odds_shift}
    return supervised_model(
        estimator,
        _dump(saved),
        log_odds_shift=log_odds_shift,
        version=version,
        threshold=threshold,
        fitted_at=time.time(),
        training_rows=len(labels),
        frauds=int(labels.sum()),
        fit_seconds=time.perf_counter() - started,
        reason="labels",
    )


MAX_BINS = 255  # scikit-learn's most
# Where the bins' values lie, as quantiles of each column: half of them evenly over the middle 96 %
# of the values, a quarter in each 2 % tail, closer and closer towards the ends.
_TAIL = np.geomspace(0.02, 0.0005, (MAX_BINS - 3) // 4)
TAIL_QUANTILES = np.unique(
    np.concatenate(
        [[0.0], _TAIL[::-1], np.linspace(0.02, 0.98, (MAX_BINS - 3) // 2), 1 - _TAIL, [1.0]]
    )
)


def tail_binned(features: np.ndarray) -> np.ndarray:
    """``features`` with each column of more than :data:`MAX_BINS` distinct values moved to the
    nearest of :data:`TAIL_QUANTILES`' values of that column.

    Why: the boosted trees split a column only between bins, which scikit-learn places at
    ``MAX_BINS`` evenly spaced quantiles, so the rarest 0.4 % of amounts share one bin, and fraud
    defined by a sharp threshold far in the tail (every sale above a fixed amount) could not be
    told from the ordinary amounts just below it. A column of at most ``MAX_BINS`` distinct values
    gets one bin per value instead, split midway between neighbours. Moving each value to its
    nearest chosen one is exactly that split, so a tree fit on the moved values answers the same
    for the raw values it scores later: no step is needed at scoring time (tested)."""
    out = np.array(features, dtype=np.float64)
    for j in range(out.shape[1]):
        column = out[:, j]
        known = ~np.isnan(column)
        if len(np.unique(column[known])) <= MAX_BINS:
            continue
        values = np.unique(np.quantile(column[known], TAIL_QUANTILES, method="nearest"))
        between = (values[:-1] + values[1:]) * 0.5  # as scikit-learn computes its split points
        column[known] = values[np.searchsorted(between, column[known], side="left")]
    return out


def fit_supervised_stored(
    database_url: str, window: int, *, min_frauds: int, **fit
) -> SupervisedModel | None:
    """:func:`fit_supervised` on the newest ``window`` labels the group learned, read from the
    shared database here in the worker; None while they hold fewer than ``min_frauds`` frauds
    (or nothing but frauds)."""
    from stream_processor.sink import stored_labels  # the worker's own connection

    features, labels = stored_labels(database_url, window)
    frauds = int(labels.sum())
    if frauds < min_frauds or frauds == len(labels):
        return None
    return fit_supervised(features, labels, **fit)


def load_model(blob: bytes, **fields) -> FittedModel:
    """A model saved in ``model_versions`` (its joblib dump and the row's other columns)."""
    return anomaly_model(joblib.load(io.BytesIO(blob)), blob, **fields)


def load_supervised(blob: bytes, **fields) -> SupervisedModel:
    """A supervised model saved in ``model_versions``: the estimator and the shift of its
    log-odds (:func:`fit_supervised`), or, saved before there was a shift, the estimator."""
    saved = joblib.load(io.BytesIO(blob))
    if isinstance(saved, dict):
        return supervised_model(
            saved["estimator"], blob, log_odds_shift=saved["log_odds_shift"], **fields
        )
    return supervised_model(saved, blob, **fields)


def anomaly_model(forest: IsolationForest, blob: bytes, **fields) -> FittedModel:
    """The forest as flat arrays; a leaf's value is the depth scikit-learn scores it with."""
    trees = [
        (
            tree.children_left,
            tree.children_right,
            np.asarray(columns)[np.maximum(tree.feature, 0)],  # the forest's own columns
            tree.threshold,
            depths,
            None,
            tree.max_depth,
        )
        for tree, depths, columns in zip(
            [estimator.tree_ for estimator in forest.estimators_],
            compat.forest_node_depths(forest),
            forest.estimators_features_,
            strict=True,
        )
    ]
    flat = _flatten(trees)
    # scikit-learn compares float32 inputs with float64 thresholds; comparing with each
    # threshold rounded down to float32 gives the same answers at half the memory traffic.
    thresholds = flat.threshold.astype(np.float32)
    over = thresholds.astype(np.float64) > flat.threshold
    thresholds[over] = np.nextafter(thresholds[over], np.float32(-np.inf))
    return FittedModel(
        trees=replace(flat, threshold=thresholds),
        normaliser=compat.forest_normaliser(forest),
        blob=blob,
        **fields,
    )


def supervised_model(
    estimator: HistGradientBoostingClassifier, blob: bytes, *, log_odds_shift: float = 0.0, **fields
):
    """The boosted trees as flat arrays (numeric features only: this project has no
    categorical ones), with the baseline log-odds plus ``log_odds_shift``."""
    if estimator.n_trees_per_iteration_ != 1:
        raise ValueError("only a binary classifier can be turned into flat trees")
    trees = []
    for nodes in compat.boosted_tree_nodes(estimator):
        if nodes["is_categorical"].any():
            raise ValueError("categorical splits are not supported in flat trees")
        leaf = nodes["is_leaf"].astype(bool)
        trees.append(
            (
                np.where(leaf, -1, nodes["left"].astype(np.int64)),
                np.where(leaf, -1, nodes["right"].astype(np.int64)),
                nodes["feature_idx"],
                nodes["num_threshold"],
                nodes["value"],
                ~nodes["missing_go_to_left"].astype(bool),
                int(nodes["depth"][leaf].max()),
            )
        )
    return SupervisedModel(
        trees=_flatten(trees),
        baseline=compat.boosted_baseline(estimator) + log_odds_shift,
        blob=blob,
        **fields,
    )


def _flatten(trees) -> FlatTrees:
    """One array per node attribute for all trees; a leaf (child -1) points to itself."""
    roots, features, thresholds, children, values, nan_right = [], [], [], [], [], []
    offset = depth = 0
    for left, right, feature, threshold, value, nan, tree_depth in trees:
        count = len(left)
        own = np.arange(count)
        left, right = np.asarray(left, dtype=np.int64), np.asarray(right, dtype=np.int64)
        leaf = left == -1
        pairs = np.stack([np.where(leaf, own, left), np.where(leaf, own, right)], axis=1).ravel()
        roots.append(offset)
        features.append(np.where(leaf, 0, feature))
        thresholds.append(np.where(leaf, np.inf, threshold))
        children.append(pairs + offset)  # left, right of each node in turn
        values.append(np.asarray(value, dtype=np.float64))
        nan_right.append(np.zeros(count, dtype=bool) if nan is None else np.asarray(nan))
        offset += count
        depth = max(depth, tree_depth)
    if offset >= np.iinfo(np.int32).max // 2:
        raise ValueError("too many tree nodes for flat trees")
    any_nan = any(t[5] is not None for t in trees)
    return FlatTrees(
        roots=np.asarray(roots, dtype=np.int32),
        feature=np.concatenate(features).astype(np.int32),
        threshold=np.concatenate(thresholds).astype(np.float64),
        children=np.concatenate(children).astype(np.int32),
        value=np.concatenate(values),
        depth=int(depth),
        nan_right=np.concatenate(nan_right).astype(np.uint8) if any_nan else None,
    )


def _dump(estimator) -> bytes:
    buf = io.BytesIO()
    joblib.dump(estimator, buf, compress=3)
    return buf.getvalue()
