"""The confluent runtime's offset commits: asynchronous in the loop, failures logged."""

from __future__ import annotations

import logging
import time

import pytest
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition

from stream_processor.kafka_runtime import commit, committed, consumer_config, core_messages

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
