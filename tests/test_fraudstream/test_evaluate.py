"""fraudstream evaluate: metrics on a test period of a scored database."""

import json
from datetime import UTC, datetime, timedelta

import pandas as pd
import pytest
from click.testing import CliRunner

from fraudstream.cli import main
from fraudstream.evaluate import EvaluationError, card_precision_at_k, evaluate
from fraudstream.tables import make_engine, transactions

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def scored_db(path, rows):
    engine = make_engine(f"sqlite:///{path}")
    base = {"merchant": "M", "location": "Paris", "threshold": 0.6, "model_version": 1,
            "features": "{}", "scored_at": 0.0, "supervised_score": None}  # fmt: skip
    with engine.begin() as conn:
        conn.execute(transactions.insert(), [{**base, **r} for r in rows])
    engine.dispose()
    return f"sqlite:///{path}"


def row(i, day, account, score, fraud, scenario="", flagged=None, supervised=None):
    return {
        "transaction_id": f"T{i}", "account_id": account, "amount": 10.0,
        "timestamp": (T0 + timedelta(days=day, minutes=i)).strftime("%Y-%m-%d %H:%M:%S"),
        "is_fraud": fraud, "score": score, "risk_score": supervised if supervised is not None else score,
        "supervised_score": supervised,
        "is_flagged": int(score > 0.6) if flagged is None else flagged,
        "extras": json.dumps({"fraud_scenario": scenario}) if scenario else None,
    }  # fmt: skip


def test_metrics_count_only_the_test_period(tmp_path):
    rows = [row(i, 0, f"A{i}", 0.9, 0) for i in range(10)]  # training period: all wrong
    rows += [row(100 + i, 10, f"B{i}", 0.9 if i < 3 else 0.1, int(i < 3), "card_testing" if i < 3 else "")
             for i in range(20)]  # fmt: skip
    report = evaluate(scored_db(tmp_path / "a.db", rows), test_fraction=0.5, k=2)
    assert report.train_events == 10 and report.events == 20 and report.frauds == 3
    m = report.scores["score"]
    assert m["roc_auc"] == 1.0 and m["average_precision"] == 1.0
    assert m["card_precision_at_k"] == 1.0  # the 2 top accounts of the one test day had fraud
    flag = report.flags["Isolation Forest flag"]
    assert flag["precision"] == 1.0 and flag["recall"] == 1.0
    assert flag["recall_by_scenario"] == {"card_testing": 1.0}
    assert "supervised_score" not in report.scores  # never present: not reported
    assert "Isolation Forest alone" in report.format()


def test_card_precision_at_k_is_per_day_per_account():
    frame = pd.DataFrame({
        "time": pd.to_datetime(["2026-01-01 10:00", "2026-01-01 11:00", "2026-01-01 12:00",
                                "2026-01-02 10:00", "2026-01-02 11:00"]),
        "account_id": ["A", "A", "B", "A", "C"],
        "score": [0.9, 0.8, 0.5, 0.1, 0.7],
        "is_fraud": [0, 1, 0, 0, 0],
    })  # fmt: skip
    # Day 1: A (0.9, had fraud), B -> top-1 share 1.0. Day 2: C (0.7, none) -> 0. Mean 0.5.
    assert card_precision_at_k(frame, "score", k=1) == 0.5


def test_scenarios_the_flag_misses_are_reported_too(tmp_path):
    rows = [row(i, 1, f"A{i}", 0.2, 1, "compromised_merchant") for i in range(4)]
    rows += [row(10 + i, 1, f"B{i}", 0.9, 1, "high_amount") for i in range(4)]
    rows += [row(20 + i, 1, f"C{i}", 0.1, 0) for i in range(12)]
    report = evaluate(scored_db(tmp_path / "b.db", rows), test_fraction=1.0)
    assert report.flags["Isolation Forest flag"]["recall_by_scenario"] == {
        "compromised_merchant": 0.0, "high_amount": 1.0,
    }  # fmt: skip
    # each scenario's frauds against the legitimate events alone (0.1): both rank above them
    by = report.scores["score"]["average_precision_by_scenario"]
    assert by == {"compromised_merchant": 1.0, "high_amount": 1.0}
    assert "average precision per scenario" in report.format()


def test_a_scenario_ranked_below_legitimate_events_has_a_low_average_precision(tmp_path):
    rows = [row(i, 1, f"A{i}", 0.3, 1, "above_amount") for i in range(2)]
    rows += [row(10 + i, 1, f"B{i}", 0.5 + i / 100, 0) for i in range(8)]  # above the frauds
    rows += [row(20 + i, 1, f"C{i}", 0.9, 1, "card_testing") for i in range(2)]
    by = evaluate(scored_db(tmp_path / "c.db", rows), test_fraction=1.0).scores["score"][
        "average_precision_by_scenario"
    ]
    assert by["card_testing"] == 1.0
    assert by["above_amount"] == pytest.approx(0.2)  # at recall 1/2 and 1: precision 1/5 each


def test_the_cli_prints_saves_a_plot_and_json(tmp_path):
    rows = [row(i, i % 4, f"A{i % 9}", (i * 37 % 100) / 100, int(i % 9 == 0), "x" if i % 9 == 0 else "",
                supervised=(0.95 if i % 9 == 0 else 0.05)) for i in range(200)]  # fmt: skip
    db = tmp_path / "c.db"
    scored_db(db, rows)
    plot, out = tmp_path / "pr.png", tmp_path / "d.json"
    result = CliRunner().invoke(
        main, ["evaluate", "--db", str(db), "--plot", str(plot), "--json", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert "supervised (delayed labels)" in result.output and "card P@100/day" in result.output
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    figures = json.loads(out.read_text())
    assert figures["scores"]["supervised_score"]["average_precision"] == 1.0


def test_clear_errors(tmp_path):
    result = CliRunner().invoke(main, ["evaluate", "--db", str(tmp_path / "none.db")])
    assert result.exit_code != 0 and "no such database" in result.output
    url = scored_db(tmp_path / "e.db", [row(i, 0, "A", 0.5, None) for i in range(3)])
    with pytest.raises(EvaluationError, match="no scored transaction has an is_fraud label"):
        evaluate(url)
    url = scored_db(tmp_path / "f.db", [row(i, 0, "A", 0.5, 0) for i in range(3)])
    with pytest.raises(EvaluationError, match="both fraud and legitimate"):
        evaluate(url)


def test_batch_baselines_train_once_on_the_week_before_the_delay_and_score_the_test_rows(
    tmp_path,
):
    # Fraud is x > 0.5 in the stored features. The training week (days 0-6) holds fraud; the
    # test period starts on day 14, 7 days after it ends. Events between them train nothing.
    rows = []
    for i in range(600):
        day = [i % 7, 7 + i % 7, 14 + i % 7][i // 200]
        fraud = int(i % 10 == 0)
        r = row(i, day, f"F{i}" if fraud else f"A{i % 50}", 0.5, fraud, "x" if fraud else "")
        r["features"] = json.dumps({"x": 0.9 if fraud else 0.1 + (i % 7) / 100, "y": i % 3})
        rows.append(r)
    rows[300]["features"] = "{}"  # between: never read
    report = evaluate(scored_db(tmp_path / "f.db", rows), test_from="2026-01-15", k=5)
    assert set(report.baselines) == {"logistic regression", "random forest", "gradient boosting"}
    assert all(m["average_precision"] == 1.0 for m in report.baselines.values())
    assert "200 events, 20 fraud" in report.baseline_training
    assert "logistic regression" in report.format()


def test_without_stored_features_there_are_no_baselines_and_it_says_why(tmp_path):
    rows = [row(i, i // 20, f"A{i}", 0.5, int(i % 5 == 0), "x" if i % 5 == 0 else "")
            for i in range(400)]  # fmt: skip
    report = evaluate(scored_db(tmp_path / "g.db", rows), test_from="2026-01-15")
    assert report.baselines == {}
    assert (
        report.baseline_training.startswith("none:")
        and "0 stored features" in report.baseline_training
    )


def test_accounts_known_to_be_compromised_are_left_out_once_their_label_is_known(tmp_path):
    # X's fraud on day 1 is known on day 8 (labels 7 days late): X's test events before then
    # count, those after do not; Y, never a fraud, counts throughout.
    rows = [row(0, 1, "X", 0.9, 1, "x"), row(1, 1, "Y", 0.1, 0)]
    rows += [row(10 + i, 4 + i, "X", 0.9 if i < 2 else 0.3, int(i < 2), "x" if i < 2 else "")
             for i in range(8)]  # fmt: skip
    rows += [row(30 + i, 4 + i, "Y", 0.2, 0) for i in range(8)]
    report = evaluate(scored_db(tmp_path / "k.db", rows), test_from="2026-01-04", k=1)
    assert report.known_compromised == 4  # X on days 8-11
    assert report.events == 12 and report.frauds == 2
    assert "nor 4 by accounts whose fraud was known by then" in report.format()
    assert report.flags["Isolation Forest flag"]["recall_by_scenario"] == {"x": 1.0}
    assert report.flags["Isolation Forest flag"]["precision"] == 1.0


def test_an_account_found_on_a_day_is_left_out_of_the_later_days():
    frame = pd.DataFrame({
        "time": pd.to_datetime(["2026-01-01 10:00", "2026-01-01 11:00",
                                "2026-01-02 10:00", "2026-01-02 11:00"]),
        "account_id": ["A", "B", "A", "B"],
        "score": [0.9, 0.1, 0.9, 0.1],
        "is_fraud": [1, 0, 1, 0],
    })  # fmt: skip
    # Day 1: A is found. Day 2: A is left out, B (no fraud) tops the day. Mean 0.5, not 1.0.
    assert card_precision_at_k(frame, "score", k=1) == 0.5


def test_calibration_sets_the_supervised_probability_beside_the_share_of_fraud(tmp_path):
    rows = [row(i, 1, f"A{i}", 0.5, int(i < 5), "x" if i < 5 else "", supervised=0.05)
            for i in range(100)]  # fmt: skip
    rows += [row(200 + i, 1, f"B{i}", 0.5, int(i < 9), "x" if i < 9 else "", supervised=0.95)
             for i in range(10)]  # fmt: skip
    report = evaluate(scored_db(tmp_path / "p.db", rows), test_fraction=1.0, baselines=False)
    assert [(b["from"], b["events"], b["fraud_share"]) for b in report.calibration] == [
        (0.01, 100, 0.05), (0.9, 10, 0.9),
    ]  # fmt: skip
    assert report.calibration[0]["mean_p"] == pytest.approx(0.05)
    assert "P in [0.9, 1]" in report.format() and "mean P 0.9500  fraud 0.9000" in report.format()
