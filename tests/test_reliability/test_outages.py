"""Outages: the broker pauses, the database is locked by another writer, the disk is full."""

from __future__ import annotations

import logging
import signal
import sqlite3
import threading
import time

import pytest
from confluent_kafka import Consumer, TopicPartition
from sqlalchemy import text

from fraudstream.broker import EmbeddedBroker, ensure_topics
from fraudstream.run import start_processor, stop_processor, wait_until_processed
from fraudstream.tables import make_engine
from producer.replay import ReplayOptions, replay

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def count(db, sql="select count(*) from transactions"):
    with sqlite3.connect(db, timeout=60) as conn:
        return conn.execute(sql).fetchone()[0]


@pytest.mark.parametrize("runtime", ["confluent", "faust"])
def test_broker_pause_and_database_lock_lose_nothing(settings, small_csv, tmp_path, runtime):
    db = settings.database_url.removeprefix("sqlite:///")
    with EmbeddedBroker(log_path=tmp_path / "broker.log") as broker:
        s = settings.replace(bootstrap_servers=broker.bootstrap, runtime=runtime, web_port=0,
                             topic_partitions=2, batch_size=200, batch_timeout_s=0.2)  # fmt: skip
        ensure_topics(broker.bootstrap, s)
        make_engine(s.database_url).dispose()
        log = tmp_path / "processor.log"
        proc = start_processor(s, log)
        try:
            results = []
            feed = threading.Thread(target=lambda: results.append(replay(
                small_csv, broker.bootstrap, s.transactions_topic,
                ReplayOptions(progress=False, rate=100))))  # a 15 s feed, across both outages  # fmt: skip
            feed.start()
            deadline = time.monotonic() + 60
            while count(db) < 200:
                assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-2000:]
                time.sleep(0.2)

            # 1. The broker stops answering for 10 s, then comes back.
            broker.proc.send_signal(signal.SIGSTOP)
            time.sleep(10)
            broker.proc.send_signal(signal.SIGCONT)
            assert proc.poll() is None, "the processor died during the broker outage"

            # 2. Another writer holds the database for 10 s.
            holder = sqlite3.connect(db, timeout=60)
            holder.execute("begin exclusive")
            time.sleep(10)
            holder.rollback()
            holder.close()
            assert proc.poll() is None, "the processor died while the database was locked"

            feed.join(180)
            [stats] = results
            assert stats.failed == 0 and stats.produced == 1500  # the producer rode it out too
            engine = make_engine(s.database_url)
            wait_until_processed(s, engine, [proc], [log], stats.last_offsets, timeout_s=180)
            engine.dispose()
        finally:
            stop_processor(proc)
    assert count(db) == 1500
    assert count(db, "select count(distinct transaction_id) from transactions") == 1500
    assert "FATAL" not in log.read_text()


def test_sink_waits_out_a_10_second_lock(db_settings, small_csv):
    from fraudstream.schema import Transaction
    from producer.csv_source import read_transactions
    from stream_processor.core import RawMessage, ScoringCore
    from stream_processor.sink import SinkStore, open_sink

    settings = db_settings
    sink = open_sink(settings.database_url)
    core = ScoringCore(settings.replace(warmup_events=1), SinkStore(sink, settings.account_history))
    txns = [t for _l, t in read_transactions(small_csv) if isinstance(t, Transaction)][:100]
    result = core.process([RawMessage(t.encode(), offset=i) for i, t in enumerate(txns)])
    release = hold_write_lock(settings.database_url)  # another writer, for 10 s
    timer = threading.Timer(10, release)
    timer.start()
    started = time.monotonic()
    sink.write(result)
    waited = time.monotonic() - started
    timer.join()
    sink.close()
    assert waited >= 9
    assert stored(settings.database_url) == 100


def hold_write_lock(database_url: str):
    """Take the database's write lock (SQLite) or the transactions table's (PostgreSQL) in
    another connection; returns what releases it."""
    if database_url.startswith("sqlite:///"):
        holder = sqlite3.connect(database_url.removeprefix("sqlite:///"), check_same_thread=False)
        holder.execute("begin exclusive")
    else:
        import psycopg

        holder = psycopg.connect(database_url)
        holder.execute("lock table transactions in exclusive mode")

    def release():
        holder.rollback()
        holder.close()

    return release


def stored(database_url: str, sql: str = "select count(*) from transactions") -> int:
    engine = make_engine(database_url)
    try:
        with engine.connect() as conn:
            return conn.execute(text(sql)).scalar()
    finally:
        engine.dispose()


def _stops_with(s, csv, caplog, words: str) -> int:
    """Replay ``csv``, run the confluent runtime until it stops on a failed write: exit code 1,
    a FATAL line with ``words``, no offset past what is stored. Returns the rows stored."""
    from stream_processor.kafka_runtime import run_consumer

    replay(csv, s.bootstrap_servers, s.transactions_topic, ReplayOptions(progress=False))
    caplog.set_level(logging.CRITICAL)
    done = threading.Event()
    code = []
    worker = threading.Thread(target=lambda: (code.append(run_consumer(s, done)), done.set()))
    worker.start()
    worker.join(120)
    assert not worker.is_alive()
    assert code == [1]
    fatal = [r.getMessage() for r in caplog.records if r.levelno == logging.CRITICAL]
    assert fatal and "FATAL" in fatal[0] and words in fatal[0]

    c = Consumer({**s.kafka_config(), "group.id": s.consumer_group, "enable.auto.commit": False})
    parts = [TopicPartition(s.transactions_topic, p) for p in range(s.topic_partitions)]
    committed = [tp.offset for tp in c.committed(parts, timeout=10)]
    c.close()
    rows = stored(s.database_url)
    assert sum(max(o, 0) for o in committed) <= rows  # no offset ran ahead of the database
    return rows


def test_a_refused_write_stops_the_processor_with_no_offset_past_it(
    kafka_settings, database_url, small_csv, caplog
):
    """A write that the database refuses (here a trigger refuses the 300th row; a full disk
    takes the same path) is fatal in the processor, with the database's own message, and no
    offset is committed past what is stored. SQLite's writes run in the writer process,
    PostgreSQL's in the writer thread."""
    s = kafka_settings.replace(runtime="confluent", warmup_events=100, batch_size=100,
                               database_url=database_url)  # fmt: skip
    make_engine(s.database_url).dispose()
    if database_url.startswith("sqlite:///"):
        with sqlite3.connect(s.database_url.removeprefix("sqlite:///")) as conn:
            conn.execute(
                "create trigger refuse before insert on transactions "
                "when (select count(*) from transactions) >= 299 "
                "begin select raise(abort, 'refused by the test trigger'); end"
            )
    else:
        import psycopg

        with psycopg.connect(database_url) as conn:
            conn.execute(
                "create function refuse() returns trigger language plpgsql as $$ begin "
                "if (select count(*) from transactions) >= 299 then "
                "raise exception 'refused by the test trigger'; end if; return new; end $$"
            )
            conn.execute(
                "create trigger refuse before insert on transactions "
                "for each row execute function refuse()"
            )
    assert 0 < _stops_with(s, small_csv, caplog, "refused by the test trigger") < 1500
