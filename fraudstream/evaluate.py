"""How well the stored scores detect fraud, measured on a test period after the training period.

Every event was scored by models fit on earlier events only; counting the later test period only
leaves out the first models' warm-up and the months the supervised model needed to collect labels.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import orjson
import pandas as pd
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score
from sqlalchemy import create_engine, select

from fraudstream.tables import engine_url, shown_url, transactions

LABEL_DELAY = pd.Timedelta(days=7)  # labels are known this long after their event
BASELINE_WEEK = pd.Timedelta(days=7)  # what a batch baseline is trained on, once

SCORES = {  # column -> label
    "score": "Isolation Forest alone",
    "supervised_score": "supervised (delayed labels)",
    "risk_score": "combined risk score",
}


class EvaluationError(RuntimeError):
    pass


@dataclass
class Report:
    database: str
    test_from: str
    test_to: str
    events: int
    frauds: int
    train_events: int
    known_compromised: int  # test events left out: their account's fraud was known by then
    scores: dict[str, dict] = field(default_factory=dict)  # column -> metrics
    flags: dict[str, dict] = field(default_factory=dict)  # flag name -> metrics
    scenarios: dict[str, int] = field(default_factory=dict)  # scenario -> fraud events in test
    supervised_coverage: float = 0.0  # share of test events scored with a supervised model
    calibration: list[dict] = field(default_factory=list)  # supervised_score: P against fraud
    baselines: dict[str, dict] = field(default_factory=dict)  # baseline name -> metrics
    baseline_training: str = ""  # what the baselines were trained on, or why there are none
    plot: str | None = None

    def to_json(self) -> str:
        return json.dumps(self.__dict__, indent=2, default=_plain)

    def format(self) -> str:
        out = [
            f"=== detection on {self.database} ===",
            f"test period      {self.test_from} .. {self.test_to}: {self.events:,} events, "
            f"{self.frauds:,} fraud ({self.frauds / max(self.events, 1):.2%}); "
            f"{self.train_events:,} earlier events not counted, nor {self.known_compromised:,} "
            f"by accounts whose fraud was known by then (labels {LABEL_DELAY.days} days late)",
            f"supervised model scored {self.supervised_coverage:.1%} of the test events",
            "",
            f"{'score':<30} {'ROC-AUC':>8} {'avg prec':>9} {'card P@100/day':>15}",
        ]
        for column, m in self.scores.items():  # in the order of SCORES
            out.append(
                f"{SCORES[column]:<30} {m['roc_auc']:>8.3f} {m['average_precision']:>9.3f} "
                f"{m['card_precision_at_k']:>15.3f}"
            )
        if self.calibration:
            out += ["", "calibration of supervised_score (P(fraud) against the share of fraud):"]
            for b in self.calibration:
                out.append(
                    f"  P in [{b['from']:g}, {b['to']:g}{']' if b['to'] == 1 else ')'}".ljust(22)
                    + f"{b['events']:>9,} events  mean P {b['mean_p']:.4f}  "
                    f"fraud {b['fraud_share']:.4f}"
                )
        out += ["", f"batch baselines: {self.baseline_training}"]
        for name, m in self.baselines.items():
            out.append(
                f"{name:<30} {m['roc_auc']:>8.3f} {m['average_precision']:>9.3f} "
                f"{m['card_precision_at_k']:>15.3f}"
            )
        names = sorted(self.scenarios)
        out += ["", "average precision per scenario (its frauds against every legitimate event):"]
        labelled = [(SCORES[c], m) for c, m in self.scores.items()] + list(self.baselines.items())
        for label, m in labelled:
            by = m["average_precision_by_scenario"]
            per = "  ".join(f"{s} {by.get(s, math.nan):.3f}" for s in names)
            out.append(f"{label:<30} {per}")
        out += ["", f"{'flag':<30} {'precision':>9} {'recall':>7}  recall per scenario"]
        for name, m in self.flags.items():
            per = "  ".join(f"{s} {m['recall_by_scenario'].get(s, math.nan):.3f}" for s in names)
            out.append(f"{name:<30} {m['precision']:>9.3f} {m['recall']:>7.3f}  {per}")
        out.append("fraud events per scenario in the test period: " + ", ".join(
            f"{s} {n:,}" for s, n in sorted(self.scenarios.items())
        ))  # fmt: skip
        if self.plot:
            out.append(f"precision-recall plot: {self.plot}")
        return "\n".join(out)


def load(database_url: str, csv: Path | None = None) -> pd.DataFrame:
    """Scored events with their ground truth (from the table, or from ``csv`` by id)."""
    shown = shown_url(database_url)
    engine = create_engine(engine_url(database_url))
    try:
        frame = pd.read_sql_query(
            "select transaction_id, account_id, timestamp, is_fraud, extras, score, threshold, "
            "supervised_score, risk_score, is_flagged from transactions",
            engine,
        )
    except Exception as exc:  # noqa: BLE001 - a missing table or an older database
        raise EvaluationError(f"{shown}: cannot read scored transactions: {exc}") from exc
    finally:
        engine.dispose()
    if frame.empty:
        raise EvaluationError(f"{shown}: no scored transactions; run the pipeline first")
    frame["fraud_scenario"] = [_scenario(e) for e in frame["extras"]]
    if csv is not None:
        truth = pd.read_csv(
            csv, usecols=lambda c: c in ("transaction_id", "is_fraud", "fraud_scenario")
        )
        if "is_fraud" not in truth:
            raise EvaluationError(f"{csv}: no is_fraud column")
        frame = frame.drop(columns=["is_fraud"]).merge(
            truth.rename(columns={"fraud_scenario": "csv_scenario"}),
            on="transaction_id",
            how="left",
        )
        if "csv_scenario" in frame:
            frame["fraud_scenario"] = frame["csv_scenario"].fillna(frame["fraud_scenario"])
    frame = frame[frame["is_fraud"].notna()].copy()
    if frame.empty:
        raise EvaluationError("no scored transaction has an is_fraud label to compare with")
    frame["is_fraud"] = frame["is_fraud"].astype(int)
    frame["fraud_scenario"] = frame["fraud_scenario"].fillna("").astype(str)
    unnamed = (frame["is_fraud"] == 1) & (frame["fraud_scenario"] == "")
    frame.loc[unnamed, "fraud_scenario"] = "fraud"
    frame["time"] = pd.to_datetime(frame["timestamp"], format="ISO8601")
    return frame.sort_values("time", kind="stable").reset_index(drop=True)


def evaluate(
    database_url: str,
    *,
    csv: Path | None = None,
    test_from: str | None = None,
    test_fraction: float = 0.5,
    k: int = 100,
    plot: Path | None = None,
    baselines: bool = True,
) -> Report:
    """Measure the stored scores and flags against the ground truth on the test period, beside
    batch baselines trained once on the stored features (``baselines``)."""
    frame = load(database_url, csv)
    period = _test_period(frame, test_from, test_fraction)
    test = _without_known_compromised(frame, period)
    fraud = test[test["is_fraud"] == 1]
    report = Report(
        database=database_url,
        test_from=str(period["time"].iloc[0]),
        test_to=str(period["time"].iloc[-1]),
        events=len(test),
        frauds=len(fraud),
        train_events=len(frame) - len(period),
        known_compromised=len(period) - len(test),
        scenarios=fraud["fraud_scenario"].value_counts().sort_index().to_dict(),
        supervised_coverage=float(test["supervised_score"].notna().mean()),
    )
    curves = _measure_scores(report, test, k)
    if "supervised_score" in report.scores:
        report.calibration = _calibration(test)
    if baselines:
        _measure_baselines(report, database_url, frame, test, k)
    anomaly = (test["score"] > test["threshold"]).to_numpy()
    report.flags = {
        "Isolation Forest flag": _flag_metrics(test, anomaly),
        "stored flag (is_flagged)": _flag_metrics(test, test["is_flagged"].to_numpy() == 1),
    }
    if plot is not None:
        report.plot = str(_plot(curves, report, plot))
    return report


def _test_period(frame: pd.DataFrame, test_from: str | None, test_fraction: float) -> pd.DataFrame:
    """The events from ``test_from`` on (default: the last ``test_fraction`` of the time span)."""
    start, end = frame["time"].iloc[0], frame["time"].iloc[-1]
    if test_from is not None:
        cut = pd.Timestamp(test_from)
    else:
        if not 0 < test_fraction <= 1:
            raise EvaluationError(f"test fraction must be in (0, 1], got {test_fraction}")
        cut = start + (end - start) * (1 - test_fraction)
    test = frame[frame["time"] >= cut]
    if test.empty:
        raise EvaluationError(f"no events from {cut} on (events run {start} .. {end})")
    if test["is_fraud"].nunique() < 2:
        raise EvaluationError("the test period needs both fraud and legitimate events")
    return test


def _without_known_compromised(frame: pd.DataFrame, test: pd.DataFrame) -> pd.DataFrame:
    """The test events but those of accounts known to be compromised at the event's time (a
    fraud of theirs at least ``LABEL_DELAY`` earlier): a bank has blocked such a card, and
    finding it again measures nothing (the standard protocol, as in the Fraud Detection
    Handbook's test sets)."""
    first_fraud = frame[frame["is_fraud"] == 1].groupby("account_id")["time"].min()
    known_from = test["account_id"].map(first_fraud) + LABEL_DELAY
    kept = test[~(known_from <= test["time"])].reset_index(drop=True)
    if kept["is_fraud"].nunique() < 2:
        raise EvaluationError(
            "the test period needs both fraud and legitimate events by accounts not yet known "
            "to be compromised"
        )
    return kept


def _measure_scores(report: Report, test: pd.DataFrame, k: int) -> dict:
    """Fill ``report.scores`` for each score present throughout; their precision-recall curves."""
    y = test["is_fraud"].to_numpy()
    curves = {}
    for column in SCORES:
        values = test[column]
        if values.isna().any():
            continue  # e.g. no supervised model for part of the test period
        s = values.to_numpy(dtype=float)
        report.scores[column] = {
            "roc_auc": float(roc_auc_score(y, s)),
            "average_precision": float(average_precision_score(y, s)),
            "average_precision_by_scenario": _ap_by_scenario(test, s),
            "card_precision_at_k": card_precision_at_k(test, column, k),
            "k": k,
        }
        same = (
            column == "risk_score"
            and "supervised_score" in report.scores
            and np.array_equal(s, test["supervised_score"].to_numpy(dtype=float))
        )
        if not same:  # the risk score is the supervised one once a model exists: one curve
            curves[column] = precision_recall_curve(y, s)[:2]
    return curves


CALIBRATION_BINS = (0.0, 0.01, 0.1, 0.5, 0.9, 1.0)


def _calibration(test: pd.DataFrame) -> list[dict]:
    """For each range of ``supervised_score`` (:data:`CALIBRATION_BINS`), its events, their mean
    score and the share of them that was fraud: equal when the probability is calibrated."""
    p = test["supervised_score"].to_numpy(dtype=float)
    y = test["is_fraud"].to_numpy()
    out = []
    for low, high in zip(CALIBRATION_BINS, CALIBRATION_BINS[1:], strict=False):
        inside = (p >= low) & ((p < high) if high < 1 else (p <= high))
        if inside.any():
            out.append({
                "from": low, "to": high, "events": int(inside.sum()),
                "mean_p": float(p[inside].mean()), "fraud_share": float(y[inside].mean()),
            })  # fmt: skip
    return out


def _measure_baselines(
    report: Report, database_url: str, frame: pd.DataFrame, test: pd.DataFrame, k: int
) -> None:
    """Batch models trained the standard way: once, on the week of events whose labels were
    known when the test period began (the week ending ``LABEL_DELAY`` before it), on the
    features stored with each event (the supervised model's inputs), then scoring the test
    events. The streaming model's margin over them is what refitting on the stream buys."""
    from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    end = pd.Timestamp(report.test_from) - LABEL_DELAY
    week = frame[(frame["time"] >= end - BASELINE_WEEK) & (frame["time"] < end)]
    y = week["is_fraud"].to_numpy()
    features = _stored_features(database_url, pd.concat([week, test]))
    if week.empty or y.min() == y.max() or features.empty:
        report.baseline_training = (
            f"none: the week before {end} holds {len(week):,} labelled events, "
            f"{int(y.sum()) if len(y) else 0} fraud, {features.shape[1]} stored features"
        )
        return
    report.baseline_training = (
        f"trained once on {week['time'].iloc[0]} .. {week['time'].iloc[-1]} ({len(week):,} "
        f"events, {int(y.sum()):,} fraud: the week ending {LABEL_DELAY.days} days before the "
        f"test period), on the {features.shape[1]} stored features; scored on the test events"
    )
    models = {
        "logistic regression": make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)),
        "random forest": RandomForestClassifier(
            n_estimators=100, min_samples_leaf=2, n_jobs=-1, random_state=0
        ),
        "gradient boosting": HistGradientBoostingClassifier(random_state=0),
    }
    train_x = features.loc[week["transaction_id"]].to_numpy()
    test_x = features.loc[test["transaction_id"]].to_numpy()
    y_test = test["is_fraud"].to_numpy()
    for name, model in models.items():
        probability = model.fit(train_x, y).predict_proba(test_x)[:, 1]
        report.baselines[name] = {
            "roc_auc": float(roc_auc_score(y_test, probability)),
            "average_precision": float(average_precision_score(y_test, probability)),
            "average_precision_by_scenario": _ap_by_scenario(test, probability),
            "card_precision_at_k": card_precision_at_k(test.assign(p=probability), "p", k),
            "k": k,
        }


def _stored_features(database_url: str, events: pd.DataFrame) -> pd.DataFrame:
    """The stored features of ``events`` (in time order), one row each by ``transaction_id``
    (no column when none were stored); only rows from the first event's time on are read."""
    wanted = set(events["transaction_id"])
    t = transactions
    since = events["time"].iloc[0].strftime("%Y-%m-%d %H:%M:%S")  # the stored text sorts in time
    engine = create_engine(engine_url(database_url))
    ids, rows = [], []
    try:
        with engine.connect() as conn:
            result = conn.execution_options(stream_results=True, yield_per=20_000).execute(
                select(t.c.transaction_id, t.c.features).where(t.c.timestamp >= since)
            )
            for transaction_id, text in result:
                if transaction_id in wanted:
                    ids.append(transaction_id)
                    rows.append(orjson.loads(text))
    finally:
        engine.dispose()
    return pd.DataFrame(rows, index=ids).fillna(0.0)


def _ap_by_scenario(test: pd.DataFrame, scores: np.ndarray) -> dict[str, float]:
    """Average precision of ``scores`` for each fraud scenario alone: its frauds against every
    legitimate event (the other scenarios' frauds left out)."""
    legit = (test["is_fraud"] == 0).to_numpy()
    scenario = test["fraud_scenario"].to_numpy()
    out = {}
    for name in sorted(set(scenario[~legit])):
        rows = legit | (scenario == name)
        out[name] = float(average_precision_score(~legit[rows], scores[rows]))
    return out


def card_precision_at_k(test: pd.DataFrame, column: str, k: int = 100) -> float:
    """Mean over days of: among the ``k`` accounts with the highest ``column`` that day, the
    share that had fraud that day. An account found so (in a day's top ``k`` with fraud) is
    left out of the later days: its card is blocked, and finding it again counts nothing."""
    per_account = (
        test.assign(day=test["time"].dt.floor("D"))
        .groupby(["day", "account_id"], sort=False)
        .agg(top=(column, "max"), fraud=("is_fraud", "max"))
        .reset_index()
    )
    found: set = set()
    shares = []
    for _, accounts in per_account.groupby("day", sort=True):
        top = accounts[~accounts["account_id"].isin(found)].nlargest(k, "top")
        shares.append(top["fraud"].sum() / k)
        found.update(top.loc[top["fraud"] == 1, "account_id"])
    return float(np.mean(shares)) if shares else math.nan


def _flag_metrics(test: pd.DataFrame, flag: np.ndarray) -> dict:
    y = test["is_fraud"].to_numpy() == 1
    tp = int((flag & y).sum())
    return {
        "flagged": int(flag.sum()),
        "precision": tp / flag.sum() if flag.sum() else math.nan,
        "recall": tp / y.sum() if y.sum() else math.nan,
        "recall_by_scenario": {
            name: float(flag[group.index - test.index[0]].mean())
            for name, group in test[y].groupby("fraud_scenario")
        },
    }


def _plot(curves: dict, report: Report, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 5), dpi=110)
    for column, (precision, recall) in curves.items():
        ap = report.scores[column]["average_precision"]
        ax.plot(recall, precision, label=f"{SCORES[column]} (AP {ap:.3f})", linewidth=1.6)
    base = report.frauds / report.events
    ax.axhline(base, color="grey", linestyle=":", linewidth=1, label=f"fraud rate {base:.2%}")
    title = f"Precision-recall, test period {report.test_from[:10]} .. {report.test_to[:10]}"
    ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02), title=title)
    ax.legend(loc="lower left")
    ax.grid(alpha=0.3)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _scenario(extras) -> str | None:
    if not isinstance(extras, str) or not extras:  # SQL NULL reads as None or NaN
        return None
    try:
        value = json.loads(extras).get("fraud_scenario")
    except (ValueError, AttributeError):
        return None
    return None if value in (None, "") else str(value)


def _plain(value):
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
