"""dbt build on a real database written by the real sink (a SQLite file with dbt-sqlite, a
PostgreSQL database with dbt-postgres): models, tests, incremental, the same marts on both, locks."""

from __future__ import annotations

import sqlite3
import threading
import time
from decimal import Decimal

import pytest
from sqlalchemy import text

from batch.build import BuildError, dbt_build
from fraudstream.schema import Transaction
from fraudstream.tables import make_engine
from producer.csv_source import read_transactions
from stream_processor.core import RawMessage, ScoringCore
from stream_processor.sink import SinkStore, open_sink


def messages(csv_path):
    txns = [t for _l, t in read_transactions(csv_path) if isinstance(t, Transaction)]
    return [RawMessage(t.encode(), offset=i) for i, t in enumerate(txns)]


def write(settings, msgs, core=None, size=100):
    sink = open_sink(settings.database_url)
    core = core or ScoringCore(settings, SinkStore(sink, settings.account_history))
    for i in range(0, len(msgs), size):
        sink.write(core.process(msgs[i : i + size]))
    sink.write(core.tick())
    return core


def db_path(settings):
    return settings.database_url.removeprefix("sqlite:///")


def rows(settings, sql):
    engine = make_engine(settings.database_url)
    try:
        with engine.connect() as conn:
            return [tuple(r) for r in conn.execute(text(sql))]
    finally:
        engine.dispose()


def test_build_passes_and_the_marts_hold_data(db_settings, small_csv, tmp_path):
    settings = db_settings
    write(
        settings.replace(warmup_idle_s=0), messages(small_csv) + [RawMessage(b"junk", offset=9999)]
    )
    outcome = dbt_build(settings.database_url, target_dir=tmp_path / "dbt")
    assert outcome.ok, outcome.describe()
    assert outcome.passed > 40
    assert rows(settings, "select count(*) from fraud_flags") == [(1500,)]
    total = rows(settings, "select sum(amount) from transactions")[0][0]
    overall = rows(settings, "select sum(total_amount) from spending_aggregations "
                             "where period_grain = 'year' and account_id is null")  # fmt: skip
    assert overall[0][0] == pytest.approx(total)
    assert rows(settings, "select sum(transactions), sum(dead_letters) from daily_kpis") == [
        (1500, 1)
    ]
    detectors = {r[0] for r in rows(settings, "select distinct detector from model_quality")}
    assert {"ml_flagged", "rule_high_value", "rule_card_testing", "any_rule"} <= detectors
    # the stream's rules (the shipped ones): each hit once a day and rule, flagged when it alerts
    hits = rows(settings, "select rule_id, sum(hits), sum(models_flagged) from rule_hits group by 1")
    stored = rows(
        settings, "select count(*) from transactions where rules_hit like '%rapid_transactions%'"
    )
    assert ("rapid_transactions", stored[0][0]) in {(r, n) for r, n, _ in hits} and stored[0][0] > 0


def test_incremental_builds_match_a_full_rebuild(db_settings, small_csv, tmp_path):
    s = db_settings.replace(warmup_idle_s=0)
    msgs = messages(small_csv)
    core = write(s, msgs[:700])
    assert dbt_build(s.database_url, target_dir=tmp_path / "dbt").ok
    write(s, msgs[700:], core=core)
    assert dbt_build(s.database_url, target_dir=tmp_path / "dbt").ok
    query = "select * from fraud_flags order by transaction_id"
    incremental = rows(s, query)
    spending = rows(s, "select * from spending_aggregations order by aggregation_id")
    assert dbt_build(s.database_url, target_dir=tmp_path / "dbt", full_refresh=True).ok
    assert len(incremental) == 1500
    assert rows(s, query) == incremental
    full = rows(s, "select * from spending_aggregations order by aggregation_id")
    assert [r[:-1] for r in full] == [r[:-1] for r in spending]  # last_scored_at aside


def test_both_databases_build_the_same_marts_from_the_same_results(
    settings, postgres_url, small_csv, tmp_path
):
    """One core's results written to a SQLite file and to a PostgreSQL database: every mart
    holds the same rows on both (numbers as numbers, dates as text)."""
    on_pg = settings.replace(database_url=postgres_url, warmup_idle_s=0)
    sinks = [open_sink(settings.database_url), open_sink(on_pg.database_url)]
    core = ScoringCore(on_pg, SinkStore(sinks[0], on_pg.account_history))
    msgs = messages(small_csv) + [RawMessage(b"junk", offset=9999)]
    for i in range(0, len(msgs), 100):
        result = core.process(msgs[i : i + 100])
        for sink in sinks:
            sink.write(result)
    for sink in sinks:
        sink.close()
    for s in (settings, on_pg):
        outcome = dbt_build(s.database_url, target_dir=tmp_path / s.database_url[:6])
        assert outcome.ok, outcome.describe()

    def normal(value):
        if isinstance(value, float | int | Decimal) and not isinstance(value, bool):
            return round(float(value), 6)
        return None if value is None else str(value)

    for mart, key in [("fraud_flags", "transaction_id"), ("spending_aggregations", "aggregation_id"),
                      ("daily_kpis", "day"), ("model_quality", "transaction_date, detector"),
                      ("rule_hits", "day_rule")]:  # fmt: skip
        sql = f"select * from {mart} order by {key}"
        on_sqlite = [tuple(map(normal, r)) for r in rows(settings, sql)]
        assert on_sqlite and [tuple(map(normal, r)) for r in rows(on_pg, sql)] == on_sqlite, mart


def test_a_failing_test_is_named(settings, small_csv, tmp_path):
    write(settings.replace(warmup_idle_s=0), messages(small_csv)[:300])
    with sqlite3.connect(db_path(settings)) as conn:  # a row scored by a model that was never saved
        conn.execute("update transactions set model_version = 99 where rowid = 1")
    outcome = dbt_build(db_path(settings), target_dir=tmp_path / "dbt")
    assert not outcome.ok
    assert any("relationships_stg_transactions_model_version" in f for f in outcome.failures)
    assert "dbt build failed" in outcome.describe()


def test_a_stale_source_warns_without_failing_the_build(settings, small_csv, tmp_path):
    write(settings.replace(warmup_idle_s=0), messages(small_csv)[:300])
    fresh = dbt_build(db_path(settings), target_dir=tmp_path / "dbt")
    assert fresh.ok and fresh.warnings == []
    with sqlite3.connect(db_path(settings)) as conn:  # the processor stopped two hours ago
        conn.execute("update transactions set scored_at = scored_at - 7200")
    stale = dbt_build(
        db_path(settings), target_dir=tmp_path / "dbt", select="source_freshness_transactions"
    )
    assert stale.ok
    assert [w.split(":")[0] for w in stale.warnings] == ["test source_freshness_transactions"]


def test_a_build_leaves_no_folder_behind(settings, small_csv, tmp_path, monkeypatch):
    """Without target_dir, dbt's target and logs go to a temporary folder removed afterwards."""
    import tempfile

    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    write(settings.replace(warmup_idle_s=0), messages(small_csv)[:300])
    assert dbt_build(db_path(settings)).ok
    assert [p.name for p in tmp.iterdir() if p.name.startswith("fraudstream-dbt-")] == []


def test_missing_database_is_a_clear_error(tmp_path):
    with pytest.raises(BuildError, match="no such database"):
        dbt_build(tmp_path / "nope.db")


def test_writer_dbt_and_reader_at_once_lose_nothing_and_never_lock(settings, small_csv, tmp_path):
    s = settings.replace(warmup_idle_s=0)
    msgs = messages(small_csv)
    core = write(s, msgs[:300])
    assert dbt_build(db_path(s), target_dir=tmp_path / "dbt").ok
    errors: list[str] = []
    done = threading.Event()

    def writer():
        try:
            sink = open_sink(s.database_url)
            for i in range(300, len(msgs), 20):
                sink.write(core.process(msgs[i : i + 20]))
                time.sleep(0.02)
            sink.write(core.wait_for_refit())
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(f"writer: {exc!r}")
        finally:
            done.set()

    reads = 0

    def reader():
        nonlocal reads
        conn = sqlite3.connect(db_path(s), timeout=30)
        try:
            while not done.is_set():
                conn.execute("select count(*), sum(amount) from transactions").fetchone()
                conn.execute(
                    "select count(*) from fraud_flags where risk_level = 'high'"
                ).fetchone()
                conn.execute("select * from spending_aggregations limit 5").fetchall()
                reads += 1
                time.sleep(0.01)
        except Exception as exc:  # noqa: BLE001
            errors.append(f"reader: {exc!r}")
        finally:
            conn.close()

    threads = [threading.Thread(target=writer), threading.Thread(target=reader)]
    for t in threads:
        t.start()
    builds = []
    while not done.is_set() or not builds:
        builds.append(dbt_build(db_path(s), target_dir=tmp_path / "dbt"))
    for t in threads:
        t.join(120)
    builds.append(dbt_build(db_path(s), target_dir=tmp_path / "dbt"))

    assert errors == []
    assert all(b.ok for b in builds), [b.describe() for b in builds if not b.ok]
    assert reads > 10 and len(builds) >= 2
    assert rows(s, "select count(*) from transactions") == [(1500,)]
    assert rows(s, "select count(*) from fraud_flags") == [(1500,)]
