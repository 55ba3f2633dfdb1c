"""The confluent runtime's offset commits: asynchronous in the loop, failures logged, never past
undelivered alerts."""

from __future__ import annotations

import logging
import sqlite3
import threading
import time

import pytest
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition

from producer.replay import ReplayOptions, replay
from stream_processor.kafka_runtime import (
    commit,
    committed,
    consumer_config,
    core_messages,
    run_consumer,
)

pytestmark = pytest.mark.integration


def test_an_asynchronous_commit_lands_without_the_loop_waiting(kafka_settings):
    s = kafka_settings
    producer = Producer({"bootstrap.servers": s.bootstrap_servers})
    for i in range(5):
        producer.produce(s.transactions_topic, key=b"k", value=f"{i}".encode(), partition=0)
    assert producer.flush(10) == 0
    consumer = Consumer(consumer_config(s))
    try:
        consumer.subscribe([s.transactions_topic])
        got: list = []
        deadline = time.monotonic() + 60
        while len(got) < 5 and time.monotonic() < deadline:
            got += [m for m in consumer.consume(10, timeout=1.0) if m.error() is None]
        assert len(got) == 5
        _raws, positions = core_messages(got)
        assert positions == [(s.transactions_topic, 0, got[-1].offset())]
        commit(consumer, positions)  # returns at once; the answer comes with a later poll
        part = [TopicPartition(s.transactions_topic, 0)]
        deadline = time.monotonic() + 30
        while consumer.committed(part, timeout=10)[0].offset != got[-1].offset() + 1:
            assert time.monotonic() < deadline, "the commit never landed"
            consumer.consume(1, timeout=0.2)
    finally:
        consumer.close()


def test_a_failed_asynchronous_commit_is_logged(caplog):
    caplog.set_level(logging.WARNING)
    committed(None, [TopicPartition("t", 0, 5)])  # a commit that succeeded says nothing
    assert not caplog.records
    committed(KafkaError(KafkaError._TRANSPORT), None)
    assert "offset commit failed" in caplog.records[0].getMessage()
    assert "redelivered" in caplog.records[0].getMessage()


def test_a_batch_whose_alerts_are_not_delivered_is_never_acknowledged(
    kafka_settings, small_csv, caplog
):
    # The broker refuses every alert (a topic name it does not accept); the loop waits for a
    # batch's deliveries only after the next batch is scored: the failure must still stop it
    # before any offset past the first flagged event is committed.
    s = kafka_settings.replace(alerts_topic="not a topic!", runtime="confluent")
    stats = replay(small_csv, s.bootstrap_servers, s.transactions_topic,
                   ReplayOptions(progress=False, rejects_path=small_csv.with_suffix(".rej")))  # fmt: skip
    assert stats.failed == 0
    caplog.set_level(logging.CRITICAL)
    done: list[int] = []
    thread = threading.Thread(target=lambda: done.append(run_consumer(s)), daemon=True)
    thread.start()
    thread.join(180)
    assert done == [1], "the runtime did not stop on the undelivered alerts"
    fatal = [r.getMessage() for r in caplog.records if r.levelno == logging.CRITICAL]
    assert fatal and "Invalid topic" in fatal[0], fatal

    with sqlite3.connect(s.database_url.removeprefix("sqlite:///")) as conn:
        first_flagged = dict(
            conn.execute(
                "select kafka_partition, min(kafka_offset) from transactions "
                "where is_flagged = 1 group by kafka_partition"
            ).fetchall()
        )
    assert first_flagged, "no event was flagged: nothing tested"
    consumer = Consumer(consumer_config(s))
    try:
        parts = [TopicPartition(s.transactions_topic, p) for p in range(s.topic_partitions)]
        for tp in consumer.committed(parts, timeout=10):
            if tp.partition in first_flagged:
                # -1001: nothing committed; else the next offset to read
                assert tp.offset <= first_flagged[tp.partition], (tp, first_flagged)
    finally:
        consumer.close()
