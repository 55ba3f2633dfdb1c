"""Reading a whole topic back, from its first offset until it goes quiet."""

from __future__ import annotations

import time
import uuid

from confluent_kafka import OFFSET_BEGINNING, Consumer, Message, TopicPartition

from fraudstream.settings import Settings


def read_topic(settings: Settings, topic: str, idle_s: float = 3.0) -> list[Message]:
    """Every record of ``topic``, read until no new one arrived for ``idle_s`` seconds.

    Not by end offsets: the embedded broker reports the start of the last record batch as the
    high watermark, so "read to the end" would stop early.
    """
    consumer = Consumer(
        {
            **settings.kafka_config(),
            "group.id": f"fraudstream-read-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
        }
    )
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
