"""When a batch's events may be acknowledged: after its delivered alerts are recorded."""

import time

from stream_processor.pipeline import DeliveryRecords, Outbound


def out(*alert_ids: str) -> Outbound:
    return Outbound(alerts=[{"transaction_id": tid} for tid in alert_ids])


def test_a_batch_without_alerts_is_acknowledged_once_published():
    records = DeliveryRecords()
    assert records.written() == []
    assert records.published(out(), ["a1", "a2"]) == ["a1", "a2"]
    assert records.delivered == {}


def test_a_batch_with_alerts_waits_for_the_next_write():
    records = DeliveryRecords()
    records.written()
    before = time.time()
    assert records.published(out("T1", "T2"), ["a1", "a2"]) == []
    # handed to the next write, with the time of the delivery
    assert list(records.delivered) == ["T1", "T2"]
    assert before <= records.delivered["T1"] == records.delivered["T2"] <= time.time()
    # The next batch's write carried them: the first batch may go, then the second.
    assert records.written() == ["a1", "a2"]
    assert records.delivered == {}
    assert records.published(out(), ["b1"]) == ["b1"]


def test_acknowledgements_never_overtake_a_waiting_batch():
    records = DeliveryRecords()
    records.written()
    assert records.published(out("T1"), ["a1"]) == []
    # Published before any write recorded T1 (no write in between): b1 waits behind a1.
    assert records.published(out(), ["b1"]) == []
    assert list(records.delivered) == ["T1"]
    assert records.written() == ["a1", "b1"]
