"""`make run`'s entry point end to end: its own embedded broker, a small CSV, the summary."""

import os
import sqlite3
import subprocess
import sys

import pandas as pd
import pytest

pytestmark = pytest.mark.e2e


def run_cli(args, tmp_path, **env):
    full_env = {k: v for k, v in os.environ.items() if k != "KAFKA_BOOTSTRAP_SERVERS"}
    full_env.update(
        # Batches of at most 200: the first fit comes within 500 events even when the whole file
        # is waiting at the group join, so at least 1,000 events are left to make a refit due.
        {
            "WARMUP_EVENTS": "300",
            "REFIT_EVERY_EVENTS": "400",
            "REFIT_MIN_INTERVAL_S": "0",
            "N_ESTIMATORS": "50",
            "BATCH_SIZE": "200",
            **env,
        }
    )
    return subprocess.run(
        [sys.executable, "-m", "fraudstream", "run", "--no-progress", *args],
        cwd=tmp_path, env=full_env, capture_output=True, text=True, timeout=420,
    )  # fmt: skip


def test_run_replays_a_csv_through_the_whole_pipeline(small_csv, tmp_path):
    frame = pd.read_csv(small_csv, keep_default_na=False)
    csv = tmp_path / "with_bad_rows.csv"
    text = small_csv.read_text().splitlines()
    text.insert(10, "TBAD,AC000001,not-a-number,Shop,2026-01-02T10:00:00,Paris,,0,")
    csv.write_text("\n".join(text) + "\n")
    db = tmp_path / "out" / "finance.db"

    rules = tmp_path / "mine.yml"
    rules.write_text(
        "rules:\n  - {id: over_100, description: Over 100, expression: amount > 100.0, action: tag}\n"
    )
    done = run_cli(["--csv", str(csv), "--db", str(db), "--fresh", "--rules", str(rules)], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    assert "events produced      1,500" in out
    assert "bad CSV rows skipped: 1" in out
    assert f"{csv}:11: amount: not a number" in done.stderr
    assert f"database             {db}" in out
    assert "top alerts" in out and "precision" in out and "ROC-AUC" in out
    assert "rules                version 0, applied before the replay" in out

    with sqlite3.connect(db) as conn:
        n, scored, flagged = conn.execute(
            "select count(*), count(score), sum(is_flagged) from transactions"
        ).fetchone()
        versions = conn.execute("select count(*) from model_versions").fetchone()[0]
        rule_rows = conn.execute(
            "select rules_version, rules_hit, amount > 100 from transactions "
            "group by 1, 2, 3 order by 3"
        ).fetchall()
        unpublished = conn.execute(
            "select count(*) from transactions where is_flagged = 1 and alert_published_at is null"
        ).fetchone()[0]
    assert n == scored == len(frame)
    assert versions >= 2
    assert unpublished == 0
    # the file applied, and only it, scored every event: the over_100 tag, no shipped rule
    assert rule_rows == [(0, None, 0), (0, '["over_100"]', 1)]
    assert f"flagged              {flagged:,}   alerts on topic: {flagged:,}" in out


def test_run_on_postgresql_creates_the_database_and_builds_the_marts_with_dbt_postgres(
    small_csv, tmp_path, postgres_url
):
    from sqlalchemy import create_engine, text

    from fraudstream.tables import drop_database, engine_url

    drop_database(postgres_url)  # run makes it: a database that does not exist yet
    done = run_cli(["--csv", str(small_csv), "--fresh"], tmp_path, DATABASE_URL=postgres_url)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "created the database" in done.stderr
    out = done.stdout
    assert "events produced      1,500" in out and "dbt build passed" in out
    assert f"database             {postgres_url}" in out
    engine = create_engine(engine_url(postgres_url))
    with engine.connect() as conn:
        n, scored, flagged = conn.execute(
            text("select count(*), count(score), sum(is_flagged) from transactions")
        ).one()
        marts = {m: conn.execute(text(f"select count(*) from {m}")).scalar()
                 for m in ("fraud_flags", "spending_aggregations", "daily_kpis", "model_quality",
                           "rule_hits")}  # fmt: skip
    engine.dispose()
    assert n == scored == 1500
    assert marts["fraud_flags"] == 1500 and min(marts.values()) > 0
    assert f"flagged              {flagged:,}   alerts on topic: {flagged:,}" in out
    # --fresh again: the same rows, not twice as many; the marts rebuilt from scratch
    done = run_cli(["--csv", str(small_csv), "--fresh"], tmp_path, DATABASE_URL=postgres_url)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "rows stored          1,500 new, 1,500 in total" in done.stdout, done.stdout


def test_run_explains_a_missing_csv(tmp_path):
    done = run_cli(["--csv", "nope.csv"], tmp_path)
    assert done.returncode != 0
    assert "nope.csv: no such file" in done.stderr
