"""Delayed labels in the core and the sink: queued on event time, learned, persisted, restored."""

import json
import sqlite3
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from fraudstream.schema import InvalidRecord, Transaction
from stream_processor.core import RawMessage, ScoringCore
from stream_processor.labels import decode_label
from stream_processor.pipeline import BatchPipeline
from stream_processor.sink import SinkStore, open_sink

T0 = datetime(2026, 1, 5, tzinfo=UTC)
LABELS = "labels-test"


def label_message(tid, is_fraud, labelled_at, offset=0):
    value = {"transaction_id": tid, "is_fraud": is_fraud, "labelled_at": labelled_at.isoformat()}
    return RawMessage(json.dumps(value).encode(), tid.encode(), LABELS, 0, offset)


def events(n, start=0, merchant_of=lambda i: f"M{i % 7}", minutes=20, fraud_of=lambda i: 0):
    """n ordinary events, one every ``minutes``, accounts A0..A29."""
    out = []
    for i in range(start, start + n):
        txn = Transaction(
            f"T{i:05d}", f"A{i % 30}", 20.0 + (i * 7) % 40, merchant_of(i),
            T0 + timedelta(minutes=minutes * i), "Paris", is_fraud=fraud_of(i),
        )  # fmt: skip
        out.append(RawMessage(txn.encode(), txn.account_id.encode(), offset=i))
    return out


@pytest.fixture
def lsettings(settings):
    return settings.replace(
        labels_topic=LABELS,
        warmup_events=100,
        refit_every_events=0,
        supervised_refit_labels=150,
        supervised_min_frauds=5,
        drift_delta=0.0,
    )


def scoring_core(settings, name=None):
    """A core with its sink, as the pipeline wires them: labels find their events in the table."""
    if name:
        settings = settings.replace(
            database_url=settings.database_url.replace(".db", f"-{name}.db")
        )
    sink = open_sink(settings.database_url)
    core = ScoringCore(settings, SinkStore(sink, settings.account_history))
    core.sink = sink
    return core


def process(core, messages):
    result = core.process(messages)
    core.sink.write(result)
    return result


def feed(core, messages, size=100):
    return [process(core, messages[i : i + size]) for i in range(0, len(messages), size)]


def test_a_label_is_learned_only_once_the_event_clock_reaches_labelled_at(lsettings):
    core = scoring_core(lsettings)
    feed(core, events(200))  # up to T0 + 66 h
    due = T0 + timedelta(hours=100)
    result = process(core, [label_message("T00003", 1, due)])
    assert result.labels[0]["learned"] is None and not result.labels_released
    assert core.queued_labels == 1 and core.label_memory.labels == 0
    later = feed(core, events(150, start=200))  # the clock passes T0 + 100 h
    released = {k: v for r in later for k, v in r.labels_released.items()}
    assert released == {"T00003": 1}
    assert core.queued_labels == 0 and core.label_memory.frauds == 1


def test_confirmed_fraud_at_a_merchant_raises_its_risk_for_later_events_only(lsettings):
    core = scoring_core(lsettings)
    feed(core, events(210))
    now = T0 + timedelta(minutes=20 * 209)  # the clock: released with this batch
    frauds = [label_message(f"T{i:05d}", 1, now, i) for i in range(0, 210, 7)]  # merchant M0
    process(core, frauds)
    rows = [r for res in feed(core, events(14, start=210)) for r in res.named_rows]
    shares = {r.merchant: json.loads(r.features)["merchant_fraud_share_7d"] for r in rows}
    assert shares["M0"] == pytest.approx(1.0)
    assert all(shares[m] == 0 for m in shares if m != "M0")


def test_without_labels_the_scores_and_flags_are_the_isolation_forests(lsettings):
    plain = scoring_core(lsettings, "plain")
    taught = scoring_core(lsettings, "taught")
    first = events(300)
    feed(plain, first)
    feed(taught, first)
    process(taught, [label_message(f"T{i:05d}", i % 2, T0, i) for i in range(100)])
    rows_plain = [r for res in feed(plain, events(100, start=300)) for r in res.named_rows]
    rows_taught = [r for res in feed(taught, events(100, start=300)) for r in res.named_rows]
    # The forest never sees a label: the same anomaly scores either way.
    assert [r.score for r in rows_plain] == [r.score for r in rows_taught]
    assert all(r.supervised_score is None for r in rows_plain)
    assert all(r.risk_score == r.score for r in rows_plain)
    assert all(r.is_flagged == int(r.score > r.threshold) for r in rows_plain)


def test_a_supervised_model_is_fit_on_labels_and_scores_later_events(lsettings):
    fraud_merchant = "Compromised Shop"

    def merchant(i):
        return fraud_merchant if i % 10 == 0 else f"M{i % 7}"

    core = scoring_core(lsettings)
    models = []
    for start in range(0, 900, 100):  # labels of each hundred arrive after the next hundred
        feed(core, events(100, start, merchant_of=merchant, fraud_of=lambda i: int(i % 10 == 0)))
        clock = T0 + timedelta(minutes=20 * (start + 99))
        if start:
            result = process(
                core,
                [
                    label_message(f"T{i:05d}", int(i % 10 == 0), clock, i)
                    for i in range(start - 100, start)
                ],
            )
            assert len(result.labels) == 100
        models += core.wait_for_refit().models
    assert [m.kind for m in models] == ["supervised"] * 4  # after 200, 400, 600, 800 labels
    assert models[-1].frauds == 80 and models[-1].training_rows == 800
    models = models[-1:]
    fed = feed(core, events(100, start=900, merchant_of=merchant))
    rows = [r for res in fed for r in res.named_rows]
    assert all(r.supervised_version == models[0].version for r in rows)
    assert all(r.risk_score == r.supervised_score for r in rows)
    at_fraud = [r.supervised_score for r in rows if r.merchant == fraud_merchant]
    elsewhere = [r.supervised_score for r in rows if r.merchant != fraud_merchant]
    assert min(at_fraud) > 0.5 > max(elsewhere)
    flagged = [r for r in rows if r.merchant == fraud_merchant]
    assert all(r.is_flagged for r in flagged)
    reasons = json.loads(flagged[0].reasons)
    assert any("fraud probability" in x for x in reasons)
    assert any(f"merchant {fraud_merchant}" in x for x in reasons)


def test_bad_labels_are_dead_lettered_with_the_field(lsettings):
    core = scoring_core(lsettings)
    bad = [
        RawMessage(b'{"transaction_id": "T1", "is_fraud": 2, "labelled_at": "2026-01-01"}', None, LABELS),
        RawMessage(b'{"transaction_id": "T1", "is_fraud": 1, "labelled_at": "soon"}', None, LABELS),
        RawMessage(b'{"is_fraud": 1, "labelled_at": "2026-01-01"}', None, LABELS),
        RawMessage(b"not json", None, LABELS),
    ]  # fmt: skip
    result = process(core, bad)
    assert [d["error_field"] for d in result.dead_letters] == [
        "is_fraud", "labelled_at", "transaction_id", None,
    ]  # fmt: skip
    assert all(d["source_topic"] == LABELS for d in result.dead_letters)
    assert not result.labels


@pytest.mark.parametrize(
    ("value", "field"),
    [
        (None, None),
        (b"[1]", None),
        (b'{"transaction_id": "T", "labelled_at": "2026-01-01"}', "is_fraud"),
        (b'{"transaction_id": "T", "is_fraud": 1}', "labelled_at"),
        (b'{"transaction_id": "", "is_fraud": 1, "labelled_at": 1767225600}', "transaction_id"),
    ],
)
def test_decode_label_names_the_field(value, field):
    with pytest.raises(InvalidRecord) as info:
        decode_label(value)
    assert info.value.field == field


def test_labels_persist_and_a_restart_restores_what_they_taught(lsettings):
    pipeline = BatchPipeline(lsettings)
    pipeline.handle(events(300))
    clock = T0 + timedelta(minutes=20 * 299)
    learned = [label_message(f"T{i:05d}", int(i % 20 == 0), clock, i) for i in range(200)]
    queued = [label_message("T00250", 1, clock + timedelta(days=30), 999)]
    unknown = [label_message("NEVER-SEEN", 1, clock, 1000)]
    pipeline.handle(learned + queued + unknown + learned[:5])  # duplicates too
    pipeline.close()

    db = lsettings.database_url.removeprefix("sqlite:///")
    with sqlite3.connect(db) as conn:
        counts = dict(
            conn.execute("select coalesce(learned, -1), count(*) from labels group by 1").fetchall()
        )
    assert counts == {1: 200, -1: 2}  # learned; still queued, and the unknown id

    again = BatchPipeline(lsettings)
    core = again.core
    assert core.label_memory.labels == 200 and core.label_memory.frauds == 10
    assert core.queued_labels == 2
    # A repeated label of a learned event teaches nothing; the queued one is learned when due.
    clock += timedelta(days=31)
    late = [Transaction("LATER", "A1", 20.0, "M1", clock, "Paris").encode()]
    again.handle([RawMessage(late[0]), label_message("T00003", 1, clock, 5000)])
    assert core.label_memory.labels == 201 and core.queued_labels == 0
    again.close()


def test_labels_waiting_for_their_event_are_bounded(lsettings):
    core = scoring_core(lsettings.replace(label_memory=50))
    feed(core, events(100))
    process(core, [label_message(f"NOT-YET-{i}", 0, T0, i) for i in range(80)])
    assert len(core.learner.orphans) == 50 and core.label_memory.labels == 0


def test_features_of_label_columns_are_zero_without_labels(lsettings):
    core = scoring_core(lsettings)
    rows = [r for res in feed(core, events(150)) for r in res.named_rows]
    values = np.array([[json.loads(r.features)[n] for n in (
        "merchant_fraud_share_1d", "merchant_fraud_share_7d", "merchant_fraud_share_30d",
        "merchant_log_labels_30d", "account_fraud_30d")] for r in rows])  # fmt: skip
    assert (values == 0).all()
    # The features JSON is rounded to 6 places; the exact score is in the score column.
    assert all(abs(json.loads(r.features)["anomaly_score"] - r.score) < 1e-5 for r in rows)


def test_sink_refuses_a_database_from_an_older_version(tmp_path):
    db = tmp_path / "old.db"
    with sqlite3.connect(db) as conn:
        conn.execute("create table transactions (transaction_id text primary key, score real)")
    from stream_processor.sink import SinkError

    with pytest.raises(SinkError, match=r"table transactions lacks columns .*older fraudstream"):
        open_sink(f"sqlite:///{db}")


def test_a_label_whose_event_comes_late_is_learned_right_after_the_event_is_scored(lsettings):
    core = scoring_core(lsettings)
    feed(core, events(200))
    late = events(1, start=150)[0]  # an event another partition delivers late
    late = RawMessage(late.value.replace(b"T00150", b"LATE1"), offset=999)
    result = process(core, [label_message("LATE1", 1, T0)])
    assert not result.labels_released and core.label_memory.labels == 0  # waits for its event
    result = process(core, [late])
    assert result.named_rows[0].transaction_id == "LATE1"
    assert result.named_rows[0].features and result.labels_released == {"LATE1": 1}
    assert core.label_memory.frauds == 1
