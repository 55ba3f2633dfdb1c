import json

import pytest
from confluent_kafka import Producer

from fraudstream.alerts import format_alert, tail_alerts

ALERT = {
    "transaction_id": "T9", "account_id": "AC1", "amount": 4210.0, "merchant": "Nova Electronics",
    "timestamp": "2026-02-01T10:00:00Z", "location": "Madrid", "score": 0.71, "threshold": 0.62,
    "model_version": 3, "reasons": ["amount 9.4x account median (448.00)", "new location Madrid"],
}  # fmt: skip


def test_alert_is_printed_with_its_reasons():
    text = format_alert(ALERT)
    assert "T9" in text and "4,210.00 at Nova Electronics (Madrid)" in text
    assert "score 0.710 > 0.620 [model v3]" in text
    assert (
        text.splitlines()[1].strip() == "amount 9.4x account median (448.00); new location Madrid"
    )

    unknown = format_alert({**ALERT, "location": None})
    assert "at Nova Electronics (place not known)" in unknown


@pytest.mark.integration
def test_tail_follows_the_alerts_topic(kafka_settings):
    p = Producer({"bootstrap.servers": kafka_settings.bootstrap_servers})
    for i in range(3):
        p.produce(
            kafka_settings.alerts_topic, json.dumps({**ALERT, "transaction_id": f"T{i}"}).encode()
        )
    p.flush(10)
    lines = []
    seen = tail_alerts(
        kafka_settings, from_beginning=True, max_alerts=3, idle_timeout_s=20, emit=lines.append
    )
    assert seen == 3
    assert [line.split()[1] for line in lines] == ["T0", "T1", "T2"]
