"""What a batch sends to Kafka once it is stored: alerts and dead letters, and their delivery."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import partial

from confluent_kafka import Producer

from fraudstream.settings import Settings
from fraudstream.topics import produce

DELIVERY_TIMEOUT_S = 60.0


class DeliveryError(RuntimeError):
    """An alert or dead letter was not delivered: the batch must be consumed again."""


@dataclass
class Outbound:
    """A stored batch's messages: alerts for the alerts topic, dead letters for the DLQ."""

    alerts: list[dict] = field(default_factory=list)
    dead_letters: list[dict] = field(default_factory=list)
    refit_s: float = 0.0  # of the batch's time, spent starting, swapping in, recording refits

    @property
    def alert_ids(self) -> list[str]:
        return [a["transaction_id"] for a in self.alerts]


class KafkaDelivery:
    """The delivery of one batch's messages, waited for with :meth:`wait`."""

    def __init__(self, producer: Producer):
        self._producer = producer
        self.failures: list[str] = []

    def on_delivery(self, err, msg) -> None:  # librdkafka's callback, from poll/flush
        if err is not None:
            self.failures.append(f"{msg.topic()}: {err}")

    def wait(self) -> None:
        """Until all is delivered; :class:`DeliveryError` if a delivery failed or timed out."""
        remaining = self._producer.flush(DELIVERY_TIMEOUT_S)
        if remaining or self.failures:
            raise DeliveryError(
                f"{remaining} undelivered, {len(self.failures)} failed: {self.failures[:3]}; "
                "the batch will be consumed again"
            )


class KafkaOutbox:
    """Produces a batch's alerts and dead letters with one idempotent producer, without
    waiting: the broker answers while the next batch is written."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.producer = Producer(
            {**settings.kafka_config(), "linger.ms": 5, "enable.idempotence": True}
        )

    def produce(self, out: Outbound) -> KafkaDelivery:
        delivery = KafkaDelivery(self.producer)
        send = partial(produce, self.producer, on_delivery=delivery.on_delivery)
        for alert in out.alerts:  # keyed by account, a JSON value
            value = json.dumps(alert, ensure_ascii=False, separators=(",", ":")).encode()
            headers = [("transaction_id", alert["transaction_id"].encode())]
            send(self.settings.alerts_topic, alert["account_id"].encode(), value, headers)
        for dl in out.dead_letters:  # the original bytes, the error in headers
            headers = [
                ("error", dl["error"].encode()),
                ("error_field", (dl["error_field"] or "").encode()),
                ("source_topic", dl["source_topic"].encode()),
                ("source_partition", str(dl["source_partition"]).encode()),
                ("source_offset", str(dl["source_offset"]).encode()),
            ]
            send(self.settings.dlq_topic, dl["message_key"], dl["message_value"], headers)
        return delivery

    def close(self) -> None:
        self.producer.flush(DELIVERY_TIMEOUT_S)
