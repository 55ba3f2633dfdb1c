"""Both runtimes on the embedded broker: produce, process, store, alert, dead-letter, restart.

Every test runs once with the faust agent and once with the confluent-kafka batch consumer.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
import urllib.request

import pandas as pd
import pytest
from confluent_kafka import Producer
from sqlalchemy import text

from fraudstream.broker import free_port
from fraudstream.run import (
    alert_ids_on_topic,
    start_processor,
    stop_processor,
    wait_until_processed,
)
from fraudstream.tables import make_engine
from fraudstream.topics import read_topic
from producer.replay import ReplayOptions, replay

pytestmark = pytest.mark.integration


@pytest.fixture(params=["faust", "confluent"])
def runtime_settings(request, kafka_settings, database_url):
    """Each runtime on each database (a SQLite file, a PostgreSQL database)."""
    return kafka_settings.replace(runtime=request.param, database_url=database_url)


@contextlib.contextmanager
def processor(settings, tmp_path, name="processor"):
    log = tmp_path / f"{name}.log"
    proc = start_processor(settings, log)
    try:
        yield proc, log
    finally:
        stop_processor(proc)


def produce(settings, csv_path):
    stats = replay(csv_path, settings.bootstrap_servers, settings.transactions_topic,
                   ReplayOptions(progress=False, rejects_path=csv_path.with_suffix(".rej")))  # fmt: skip
    assert stats.failed == 0
    return stats


def drain(settings, proc, log, last_offsets, timeout_s=180, label_offsets=None):
    engine = make_engine(settings.database_url)
    try:
        wait_until_processed(settings, engine, [proc], [log], last_offsets, timeout_s, label_offsets)
    finally:
        engine.dispose()


def query(settings, sql):
    engine = make_engine(settings.database_url)
    try:
        with engine.connect() as conn:
            return [tuple(r) for r in conn.execute(text(sql))]
    finally:
        engine.dispose()


def test_events_are_scored_stored_alerted_and_bad_ones_dead_lettered(
    runtime_settings, small_csv, tmp_path
):
    s = runtime_settings.replace(web_port=free_port())
    with processor(s, tmp_path) as (proc, log):
        stats = produce(s, small_csv)
        bad = Producer({"bootstrap.servers": s.bootstrap_servers})
        bad.produce(
            s.transactions_topic,
            key=b"AC000001",
            value=b'{"transaction_id": "BAD1", "amount": "lots"',
        )
        bad.produce(s.transactions_topic, key=b"AC000001", value=json.dumps(
            {"transaction_id": "BAD2", "account_id": "AC1", "amount": -5, "merchant": "m",
             "timestamp": "2026-01-01T00:00:00", "location": "x"}).encode())  # fmt: skip
        bad.flush(10)
        offsets = dict(stats.last_offsets)
        for p, last in _last_offsets(s).items():
            offsets[p] = max(offsets.get(p, -1), last)
        drain(s, proc, log, offsets)
        # on PostgreSQL the trainer learns what was stored from the group's count, read once a
        # second: the refit on the last events can start after they are stored
        deadline = time.monotonic() + 30
        while (health := _health(s))["model_version"] < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert health["status"] == "ok" and health["model_version"] >= 2
        assert health["scored"] == 1500 and health["dead_letters"] == 2

    rows = query(
        s, "select count(*), count(score), count(model_version), sum(is_flagged) from transactions"
    )
    n, scored, versioned, flagged = rows[0]
    assert n == scored == versioned == 1500
    assert flagged > 0
    assert query(
        s, "select count(*) from transactions where is_flagged = 1 and alert_published_at is null"
    ) == [(0,)]
    flagged_ids = {
        r[0] for r in query(s, "select transaction_id from transactions where is_flagged = 1")
    }
    assert alert_ids_on_topic(s) == flagged_ids
    alert = json.loads(read_topic(s, s.alerts_topic)[0].value())
    assert {"transaction_id", "score", "threshold", "model_version", "reasons"} <= set(alert)
    assert alert["reasons"]

    dlq = read_topic(s, s.dlq_topic)
    assert sorted(m.value() for m in dlq)[0].startswith(b'{"transaction_id": "BAD')
    errors = {dict(m.headers())["error_field"] for m in dlq}
    assert errors == {b"", b"amount"}
    assert query(s, "select count(*) from dead_letters") == [(2,)]
    versions = query(s, "select version, reason from model_versions order by version")
    assert versions[0] == (1, "initial") and len(versions) >= 2


def _health(settings) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{settings.web_port}/health", timeout=10) as resp:
        return json.loads(resp.read())


def _last_offsets(settings):
    """Highest offset per partition, read back from the topic itself (for hand-produced events)."""
    last = {}
    for m in read_topic(settings, settings.transactions_topic, idle_s=2.0):
        last[m.partition()] = max(last.get(m.partition(), -1), m.offset())
    return last


def test_replaying_the_same_csv_adds_no_rows(runtime_settings, small_csv, tmp_path):
    s = runtime_settings
    with processor(s, tmp_path) as (proc, log):
        drain(s, proc, log, produce(s, small_csv).last_offsets)
        before = query(s, "select count(*), sum(is_flagged) from transactions")
        drain(s, proc, log, produce(s, small_csv).last_offsets)
    assert query(s, "select count(*), sum(is_flagged) from transactions") == before
    assert before[0][0] == 1500
    assert len(read_topic(s, s.alerts_topic)) == before[0][1]  # no alert twice either


def test_restart_resumes_with_the_saved_model_and_account_state(
    runtime_settings, small_csv, tmp_path
):
    s = runtime_settings.replace(refit_every_events=0)  # one model: its version must survive
    frame = pd.read_csv(small_csv, keep_default_na=False)
    first, second = tmp_path / "first.csv", tmp_path / "second.csv"
    frame.iloc[:900].to_csv(first, index=False)
    frame.iloc[900:].to_csv(second, index=False)

    with processor(s, tmp_path, "run1") as (proc, log):
        drain(s, proc, log, produce(s, first).last_offsets)
    assert query(s, "select version from model_versions") == [(1,)]

    with processor(s, tmp_path, "run2") as (proc, log):
        drain(s, proc, log, produce(s, second).last_offsets)
        assert "processor state: model v1" in log.read_text()

    assert query(s, "select count(*) from transactions") == [(1500,)]
    assert query(s, "select distinct model_version from transactions") == [(1,)]
    assert query(s, "select version from model_versions") == [(1,)]  # no new initial fit
    # Accounts seen before the restart are not new afterwards: their history was rebuilt.
    seen_before = set(frame.iloc[:900]["account_id"])
    later = query(s, "select account_id, features from transactions where kafka_offset is not null "
                     "and transaction_id > 'T00000900'")  # fmt: skip
    resumed = [json.loads(f)["log_history"] for a, f in later if a in seen_before]
    assert resumed and all(h >= math.log1p(1) for h in resumed)


def test_delayed_labels_train_a_supervised_model_that_scores_later_events(
    runtime_settings, small_csv, tmp_path
):
    s = runtime_settings.replace(
        supervised_refit_labels=300, supervised_min_frauds=3, batch_size=50
    )
    truth = pd.read_csv(small_csv)
    first, second = tmp_path / "first.csv", tmp_path / "second.csv"
    truth.iloc[:1000].to_csv(first, index=False)
    truth.iloc[1000:].to_csv(second, index=False)
    options = ReplayOptions(progress=False, labels_topic=s.labels_topic, label_delay_s=2 * 86400)
    with processor(s, tmp_path) as (proc, log):
        for part in (first, second):
            stats = replay(part, s.bootstrap_servers, s.transactions_topic, options)
            assert stats.failed == 0
            drain(s, proc, log, stats.last_offsets, label_offsets=stats.label_offsets)
            if part is first:  # the supervised fit runs in the background: let it land
                deadline = time.monotonic() + 60
                while not query(s, "select 1 from model_versions where kind = 'supervised'"):
                    assert time.monotonic() < deadline, "no supervised model after the labels"
                    time.sleep(0.5)

    [(n, frauds, learned, queued)] = query(
        s, "select count(*), sum(is_fraud), count(case when learned = 1 then 1 end), "
        "count(case when learned is null then 1 end) from labels",
    )  # fmt: skip
    assert n == len(truth) and frauds == truth["is_fraud"].sum()
    # The labels of the last two days are due after the last event: still queued, not learned.
    last = pd.Timestamp(truth["timestamp"].max())
    due_later = (pd.to_datetime(truth["timestamp"]) + pd.Timedelta(days=2) > last).sum()
    assert queued == due_later and learned == n - due_later
    kinds = query(s, "select kind, reason from model_versions where kind = 'supervised'")
    assert kinds and all(r == ("supervised", "labels") for r in kinds)
    later = set(truth["transaction_id"].iloc[1000:])
    scored = query(
        s, "select t.transaction_id, t.risk_score, t.supervised_score, "
        "t.scored_at >= m.fitted_at from transactions t "
        "join model_versions m on m.version = t.supervised_version "
        "where t.supervised_score is not null",
    )  # fmt: skip
    assert scored and all(risk == p for _tid, risk, p, _after in scored)
    # The model landed before the second part was sent: every later event is scored by it.
    assert later <= {tid for tid, *_ in scored}
    # The first part's late events may meet it too (labels are due while that part streams and
    # the fit runs in the background), but never its early ones, and never a model fitted after
    # the event was scored.
    assert all(after for *_, after in scored)
    due = pd.to_datetime(truth["timestamp"]) + pd.Timedelta(days=2)
    before_any_label = set(truth["transaction_id"][pd.to_datetime(truth["timestamp"]) < due.min()])
    assert before_any_label and not before_any_label & {tid for tid, *_ in scored}
    [(unscored,)] = query(s, "select count(*) from transactions where risk_score is null")
    assert unscored == 0


def test_faust_consumer_waits_for_data_as_briefly_as_the_confluent_one(kafka_settings):
    # faust-streaming hard-codes fetch_max_wait_ms=1500 (seconds of latency at a low event rate);
    # the runtime shortens it on the consumer faust builds, before that consumer starts.
    import asyncio

    from stream_processor.faust_app import create_app
    from stream_processor.kafka_runtime import consumer_config
    from stream_processor.pipeline import FETCH_MAX_WAIT_MS

    async def build():
        app = create_app(kafka_settings)  # its scoring process reads the rules topic
        consumer = app.consumer._thread._create_worker_consumer(app.transport)
        try:
            return consumer._fetch_max_wait_ms
        finally:
            await consumer.stop()
            app.pipeline.close()

    assert (
        asyncio.run(build())
        == FETCH_MAX_WAIT_MS
        == consumer_config(kafka_settings)["fetch.wait.max.ms"]
    )
    assert FETCH_MAX_WAIT_MS <= 50
