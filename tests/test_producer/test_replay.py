"""Replaying a CSV onto the embedded broker."""

import json
import time

import pytest

from fraudstream.topics import read_topic
from producer.replay import ReplayOptions, replay

pytestmark = pytest.mark.integration

HEADER = "transaction_id,account_id,amount,merchant,timestamp,location,is_fraud\n"


def test_valid_rows_are_keyed_by_account_and_bad_rows_skipped_and_kept(
    kafka_settings, tmp_path, capsys
):
    path = tmp_path / "in.csv"
    path.write_text(
        HEADER
        + "T1,A1,10.00,Shop,2026-01-01T10:00:00,Paris,0\n"
        + "T2,A2,oops,Shop,2026-01-01T10:01:00,Paris,0\n"
        + "T3,A1,5.00,Shop,2026-01-01T10:02:00,Paris,1\n"
    )
    stats = replay(path, kafka_settings.bootstrap_servers, kafka_settings.transactions_topic,
                   ReplayOptions(progress=False))  # fmt: skip
    assert (stats.produced, stats.delivered, stats.rejected, stats.failed) == (2, 2, 1, 0)
    assert f"{path}:3: amount: not a number" in capsys.readouterr().err
    assert stats.rejects_path.read_text().count("\n") == 2  # header + the bad row

    msgs = read_topic(kafka_settings, kafka_settings.transactions_topic)
    assert sorted(json.loads(m.value())["transaction_id"] for m in msgs) == ["T1", "T3"]
    assert {m.key() for m in msgs} == {b"A1"}
    assert len({m.partition() for m in msgs}) == 1  # one account, one partition, in order
    assert all(float(dict(m.headers())["produced_at"]) > 0 for m in msgs)


def test_limit_rate_and_loops(kafka_settings, small_csv):
    started = time.monotonic()
    stats = replay(small_csv, kafka_settings.bootstrap_servers, kafka_settings.transactions_topic,
                   ReplayOptions(progress=False, rate=200, limit=300, loops=0))  # fmt: skip
    assert stats.produced == 300
    assert time.monotonic() - started >= 1.4  # 300 events at 200/s


def test_later_loops_get_new_ids_and_later_times(kafka_settings, tmp_path):
    path = tmp_path / "in.csv"
    path.write_text(HEADER + "T1,A1,10.00,Shop,2026-01-01T10:00:00,Paris,0\n"
                    + "T2,A1,12.00,Shop,2026-01-01T11:00:00,Paris,0\n")  # fmt: skip
    stats = replay(path, kafka_settings.bootstrap_servers, kafka_settings.transactions_topic,
                   ReplayOptions(progress=False, loops=3))  # fmt: skip
    assert stats.produced == 6
    events = sorted(
        (
            json.loads(m.value())
            for m in read_topic(kafka_settings, kafka_settings.transactions_topic)
        ),
        key=lambda e: e["timestamp"],
    )
    assert [e["transaction_id"] for e in events] == ["T1", "T2", "T1~1", "T2~1", "T1~2", "T2~2"]


def test_labels_follow_their_events_after_the_delay_in_event_time(kafka_settings, tmp_path):
    path = tmp_path / "in.csv"
    path.write_text(
        HEADER
        + "T1,A1,10.00,Shop,2026-01-01T10:00:00,Paris,0\n"
        + "T2,A2,12.00,Shop,2026-01-02T10:00:00,Paris,1\n"
        + "T3,A1,5.00,Shop,2026-01-09T10:00:00,Paris,\n"  # no label in the file: none sent
        + "T4,A3,5.00,Shop,2026-01-20T10:00:00,Paris,0\n"
    )
    s = kafka_settings
    stats = replay(path, s.bootstrap_servers, s.transactions_topic,
                   ReplayOptions(progress=False, labels_topic=s.labels_topic,
                                 label_delay_s=7 * 86400))  # fmt: skip
    assert stats.labels_sent == 3 and stats.failed == 0
    labels = {
        json.loads(m.value())["transaction_id"]: json.loads(m.value())
        for m in read_topic(s, s.labels_topic)
    }
    assert labels["T2"] == {
        "transaction_id": "T2", "is_fraud": 1, "labelled_at": "2026-01-09T10:00:00Z",
    }  # fmt: skip
    assert set(labels) == {"T1", "T2", "T4"}
    assert labels["T4"]["labelled_at"] == "2026-01-27T10:00:00Z"  # sent at the end, still due later
