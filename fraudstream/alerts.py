"""Following the alerts topic and printing each alert readably (``fraudstream alerts``)."""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from collections.abc import Callable

from confluent_kafka import Consumer, KafkaError

from fraudstream.settings import Settings


def format_alert(alert: dict) -> str:
    """One alert as two lines: what happened, then why it was flagged."""
    head = (
        f"{alert.get('timestamp', '?')}  {alert.get('transaction_id', '?')}  "
        f"{alert.get('account_id', '?')}  {float(alert.get('amount', 0)):,.2f} at "
        f"{alert.get('merchant', '?')} ({alert.get('location') or 'place not known'})  "
        f"score {float(alert.get('score', 0)):.3f} > {float(alert.get('threshold', 0)):.3f} "
        f"[model v{alert.get('model_version', '?')}]"
    )
    return head + "\n    " + "; ".join(str(r) for r in alert.get("reasons") or [])


def tail_alerts(
    settings: Settings,
    *,
    from_beginning: bool = False,
    max_alerts: int | None = None,
    idle_timeout_s: float | None = None,
    as_json: bool = False,
    emit: Callable[[str], None] = print,
) -> int:
    """Print alerts as they arrive; stop after ``max_alerts`` or ``idle_timeout_s`` of silence."""
    consumer = Consumer(
        {
            **settings.kafka_config(),
            "group.id": f"fraudstream-alerts-tail-{uuid.uuid4().hex[:8]}",
            "auto.offset.reset": "earliest" if from_beginning else "latest",
            "enable.auto.commit": False,
            "session.timeout.ms": settings.session_timeout_ms,
        }
    )
    seen = 0
    last = time.monotonic()
    with contextlib.suppress(KeyboardInterrupt), contextlib.closing(consumer):
        consumer.subscribe([settings.alerts_topic])
        while max_alerts is None or seen < max_alerts:
            msg = consumer.poll(0.5)
            if msg is None:
                if idle_timeout_s is not None and time.monotonic() - last > idle_timeout_s:
                    break
                continue
            if msg.error():
                if msg.error().code() != KafkaError._PARTITION_EOF:
                    emit(f"error reading {settings.alerts_topic}: {msg.error()}")
                continue
            last = time.monotonic()
            seen += 1
            try:
                alert = json.loads(msg.value())
            except (TypeError, ValueError):
                emit(f"undecodable alert at {msg.topic()}[{msg.partition()}]@{msg.offset()}")
                continue
            emit(json.dumps(alert, ensure_ascii=False) if as_json else format_alert(alert))
    return seen
