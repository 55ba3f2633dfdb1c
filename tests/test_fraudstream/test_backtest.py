"""fraudstream rules backtest: a rule file over the stored transactions, before it is switched on."""

import json
import math
from datetime import UTC, datetime, timedelta

from click.testing import CliRunner

from fraudstream.cli import main
from fraudstream.tables import labels, make_engine, transactions

T0 = datetime(2026, 1, 1, tzinfo=UTC)
RULES = """rules:
  - id: small_then_large
    description: Over 500 within a minute of an amount under 1.00
    expression: amount > 500.0 && previous_amount < 1.0 && seconds_since_previous <= 60.0
    action: alert
  - id: big
    description: Over 1,000
    expression: amount > 1000.0
    action: tag
  - id: paused
    description: Everything
    expression: "true"
    action: alert
    enabled: false
"""


def stored(path, events, known_labels=()):
    """``events``: (amount, previous amount, seconds since the previous one, fraud, flagged by
    the forest); every row is_flagged, as rules may have flagged it: that does not count."""
    engine = make_engine(f"sqlite:///{path}")
    rows = [
        {
            "transaction_id": f"T{i}", "account_id": f"A{i}", "amount": amount, "merchant": "M",
            "timestamp": (T0 + timedelta(days=i)).strftime("%Y-%m-%d %H:%M:%S"),
            "location": None, "is_fraud": fraud, "score": 0.7 if flagged else 0.5,
            "threshold": 0.6, "risk_score": 0.5, "supervised_score": None, "is_flagged": 1,
            "model_version": 1, "scored_at": 0.0,
            "features": json.dumps({"previous_amount": previous, "log_gap_s": math.log1p(gap)}),
        }
        for i, (amount, previous, gap, fraud, flagged) in enumerate(events)
    ]  # fmt: skip
    with engine.begin() as conn:
        conn.execute(transactions.insert(), rows)
        for transaction_id, is_fraud in known_labels:
            conn.execute(labels.insert().values(
                transaction_id=transaction_id, is_fraud=is_fraud,
                labelled_at="2026-02-01 00:00:00", received_at=0.0, learned=1,
            ))  # fmt: skip
    engine.dispose()
    return path


def backtest(tmp_path, db, *args):
    rules = tmp_path / "rules.yml"
    rules.write_text(RULES)
    result = CliRunner().invoke(main, ["rules", "backtest", str(rules), "--db", str(db), *args])
    assert result.exit_code == 0, result.output
    return {line.split()[0]: line.split()[1:] for line in result.output.splitlines()[3:]}


def test_hits_share_precision_recall_and_overlap_per_rule(tmp_path):
    db = stored(tmp_path / "a.db", [
        (650.0, 0.5, 40, 1, 1),   # small then large, fraud, flagged by the models
        (650.0, 0.5, 50, 0, 0),   # the same, legitimate
        (650.0, 0.5, 600, 1, 0),  # ten minutes later: not this rule
        (1500.0, 20.0, 40, 0, 1),
        (10.0, 0.0, 604800, 0, 0),
    ])  # fmt: skip
    by_rule = backtest(tmp_path, db)
    # hits, share, precision, recall (of 2 frauds), the models' flags among the hits
    assert by_rule["small_then_large"] == ["alert", "2", "40.000%", "0.500", "0.500", "50.0%"]
    assert by_rule["big"] == ["tag", "1", "20.000%", "0.000", "0.000", "100.0%"]
    assert by_rule["paused"] == ["off"]


def test_the_labels_received_count_when_there_are_any_and_since_limits_the_span(tmp_path):
    db = stored(
        tmp_path / "b.db",
        [(650.0, 0.5, 40, None, 0), (650.0, 0.5, 40, None, 0), (650.0, 0.5, 40, None, 0)],
        known_labels=[("T1", 1), ("T2", 0)],
    )
    by_rule = backtest(tmp_path, db, "--since", "2026-01-02")
    assert by_rule["small_then_large"] == ["alert", "2", "100.000%", "0.500", "1.000", "0.0%"]


def test_a_refused_rule_file_says_why(tmp_path):
    rules = tmp_path / "rules.yml"
    rules.write_text(RULES.replace("previous_amount < 1.0", "previous_amout < 1.0"))
    result = CliRunner().invoke(main, ["rules", "backtest", str(rules), "--db", "none.db"])
    assert result.exit_code == 1
    assert "rule 'small_then_large': unknown name 'previous_amout'" in result.output
    assert "did you mean 'previous_amount'" in result.output


def test_run_refuses_a_bad_rule_file_before_starting_anything(tmp_path):
    rules = tmp_path / "rules.yml"
    rules.write_text(RULES.replace("amount > 1000.0", "amount > 'a lot'"))
    db = tmp_path / "never.db"
    result = CliRunner().invoke(main, ["run", "--rules", str(rules), "--db", str(db)])
    assert result.exit_code == 1
    assert "rule 'big': cannot compare a number with a string by >" in result.output
    assert not db.exists()
