"""Producing to a topic whatever the local queue holds, and reading a whole topic back."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable

from confluent_kafka import OFFSET_BEGINNING, Consumer, Message, Producer, TopicPartition

from fraudstream.settings import Settings


def produce(
    producer: Producer,
    topic: str,
    key: bytes | None,
    value: bytes | None,
    headers: list[tuple[str, bytes]],
    on_delivery: Callable,
) -> None:
    """Hand one message to ``producer``; while librdkafka's local queue is full, serve
    delivery reports until it has room (every producer of this project goes through here)."""
    while True:
        try:
            producer.produce(topic, key=key, value=value, headers=headers, on_delivery=on_delivery)
            return
        except BufferError:
            producer.poll(0.05)


def read_topic(settings: Settings, topic: str, idle_s: float = 3.0) -> list[Message]:
    """Every record of ``topic``, read until no new one arrived for ``idle_s`` seconds.

    Not by end offsets: the embedded broker reports the start of the last record batch as the
    high watermark, so "read to the end" would stop early.
    """
    group = f"fraudstream-read-{uuid.uuid4().hex[:8]}"
    config = {**settings.kafka_config(), "group.id": group, "enable.auto.commit": False}
    consumer = Consumer(config)
    out: list[Message] = []
    try:
        meta = consumer.list_topics(topic, timeout=10).topics[topic]
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in meta.partitions])
        last = time.monotonic()
        while time.monotonic() - last < idle_s:
            for msg in consumer.consume(1000, timeout=0.5):
                if msg.error() is None:
                    out.append(msg)
                    last = time.monotonic()
        return out
    finally:
        consumer.close()
