"""How the supervised model is fit, against the ways it is not: average precision side by side.

    python -m benchmarks.supervised_fit DATABASE_URL [--days 28] [--seeds 3]

On a database ``make evaluate`` wrote (stored features and labels), each way is fit once on the
labelled events of the ``days`` ending 7 days before the test period (as a model refit then
would see them), and scores the test period of ``fraudstream evaluate`` (its protocol: accounts
known to be compromised left out). The ways:

- as fitted: :func:`stream_processor.fitting.fit_supervised` (tail bins; every fraud and a
  sample of legitimate events, unweighted, the sampling rate added back to the log-odds);
- quantile bins: the same without :func:`~stream_processor.fitting.tail_binned`
  (scikit-learn's 255 evenly spaced quantiles);
- weighted sample: the sample's legitimate events weighted back up instead;
- every legitimate event: no sample.

Average precision over all fraud and per scenario, the median over ``seeds`` samples.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import numpy as np
import pandas as pd
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.metrics import average_precision_score

from fraudstream import evaluate
from stream_processor import fitting
from stream_processor.features import SUPERVISED_FEATURE_NAMES


def _fit(x, y, *, bins: bool, sample: bool, weighted: bool, seed: int) -> Callable:
    """A model fit like :func:`fitting.fit_supervised` but for the named differences: its
    P(fraud) as a function of the test rows."""
    weights = None
    negatives = np.flatnonzero(y == 0)
    if sample and len(negatives) > fitting.MAX_NEGATIVES:
        kept = np.random.default_rng(seed).choice(negatives, fitting.MAX_NEGATIVES, replace=False)
        rows = np.sort(np.concatenate([np.flatnonzero(y != 0), kept]))
        if weighted:
            weights = np.where(y[rows] == 0, len(negatives) / fitting.MAX_NEGATIVES, 1.0)
        x, y = x[rows], y[rows]
    estimator = HistGradientBoostingClassifier(
        max_iter=150, learning_rate=0.1, max_leaf_nodes=31, l2_regularization=1.0,
        max_bins=fitting.MAX_BINS, random_state=seed,
    )  # fmt: skip
    estimator.fit(fitting.tail_binned(x) if bins else x, y, sample_weight=weights)
    return lambda test_x: estimator.predict_proba(test_x)[:, 1]


WAYS = {
    "as fitted": None,
    "quantile bins": dict(bins=False, sample=True, weighted=False),
    "weighted sample": dict(bins=True, sample=True, weighted=True),
    "every legitimate event": dict(bins=True, sample=False, weighted=False),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("database_url")
    parser.add_argument("--days", type=int, default=28)
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()

    frame = evaluate.load(args.database_url)
    period = evaluate._test_period(frame, None, 0.5)
    test = evaluate._without_known_compromised(frame, period)
    end = period["time"].iloc[0] - evaluate.LABEL_DELAY
    train = frame[(frame["time"] >= end - pd.Timedelta(days=args.days)) & (frame["time"] < end)]
    features = evaluate._stored_features(args.database_url, pd.concat([train, test]))
    features = features.reindex(columns=list(SUPERVISED_FEATURE_NAMES), fill_value=0.0)
    x = features.loc[train["transaction_id"]].to_numpy()
    y = train["is_fraud"].to_numpy()
    test_x = features.loc[test["transaction_id"]].to_numpy()
    test_y = test["is_fraud"].to_numpy()
    print(
        f"trained on {len(y):,} labelled events ({int(y.sum()):,} fraud) of the {args.days} days "
        f"ending {end}; tested on {len(test_y):,} ({int(test_y.sum()):,} fraud)"
    )
    scenarios = sorted(set(test.loc[test["is_fraud"] == 1, "fraud_scenario"]))
    print(f"{'way':<24} {'AP':>6}  " + "  ".join(f"{s[:18]:>18}" for s in scenarios))
    for name, way in WAYS.items():
        runs = []
        for seed in range(42, 42 + args.seeds):
            if way is None:
                score = fitting.fit_supervised(x, y, version=1, seed=seed).score
            else:
                score = _fit(x, y, seed=seed, **way)
            p = score(test_x)
            by = evaluate._ap_by_scenario(test, p)
            runs.append([average_precision_score(test_y, p)] + [by[s] for s in scenarios])
        median = np.median(np.array(runs), axis=0)
        print(f"{name:<24} {median[0]:>6.3f}  " + "  ".join(f"{v:>18.3f}" for v in median[1:]))


if __name__ == "__main__":
    main()
