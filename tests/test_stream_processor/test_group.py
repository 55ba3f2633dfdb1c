"""Processors of one consumer group on one PostgreSQL database, as pipelines side by side (the
Kafka side, rebalances and kills, is tests/test_reliability/test_scale_out.py): one trainer, the
others taking its models; partitions changing hands with their accounts' state."""

from __future__ import annotations

import json
import time
import zlib

import pytest
from sqlalchemy import select

from fraudstream.schema import Transaction
from fraudstream.tables import make_engine, model_versions
from producer.csv_source import read_transactions
from stream_processor import pipeline as pipeline_module
from stream_processor import scoring
from stream_processor.core import RawMessage
from stream_processor.features import ANOMALY_FEATURE_NAMES
from stream_processor.group import decode_key
from stream_processor.pipeline import BatchPipeline
from stream_processor.postgres_sink import AdvisoryLease
from stream_processor.sink import stored_anomaly_inputs

PARTITIONS = 2
LABELS = "labels-group"


@pytest.fixture
def events(small_csv) -> list[Transaction]:
    return [t for _l, t in read_transactions(small_csv) if isinstance(t, Transaction)]


def partition_of(txn: Transaction) -> int:
    """As a keyed producer spreads accounts: each account's events in one partition."""
    return zlib.crc32(txn.account_id.encode()) % PARTITIONS


def batch(txns: list[Transaction], start: int, partition: int | None = None) -> list[RawMessage]:
    return [
        RawMessage(t.encode(), partition=partition_of(t), offset=start + i)
        for i, t in enumerate(txns)
        if partition is None or partition_of(t) == partition
    ]


def labels(txns: list[Transaction]) -> list[RawMessage]:
    """Each event's outcome, known at its own time, on the partition of its account."""
    return [
        RawMessage(
            json.dumps(
                {
                    "transaction_id": t.transaction_id,
                    "is_fraud": t.is_fraud,
                    "labelled_at": t.timestamp.isoformat(),
                }
            ).encode(),
            t.account_id.encode(),
            LABELS,
            partition_of(t),
            i,
        )  # fmt: skip
        for i, t in enumerate(txns)
    ]


def stored(pipeline: BatchPipeline, messages: list[RawMessage]):
    """Score and store ``messages``: the batch's result."""
    result = pipeline.score(messages)
    pipeline.submit(result)
    pipeline.collect()
    return result


@pytest.fixture
def group_settings(settings, postgres_url, monkeypatch):
    monkeypatch.setattr(pipeline_module, "MODEL_SYNC_S", 0.0)  # check at every batch
    return settings.replace(database_url=postgres_url, warmup_events=200)


def stored_models(database_url: str) -> dict[int, float]:
    """version -> fitted_at of the models recorded in ``model_versions``."""
    engine = make_engine(database_url)
    try:
        with engine.connect() as conn:
            return dict(
                conn.execute(select(model_versions.c.version, model_versions.c.fitted_at)).all()
            )
    finally:
        engine.dispose()


def eventually(check, timeout_s: float = 10.0) -> bool:
    """``check()`` polled until true (the server releases a lock just after its session ends)."""
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_one_lease_at_a_time_taken_over_when_its_holder_goes(postgres_url):
    first, second = AdvisoryLease(postgres_url), AdvisoryLease(postgres_url)
    try:
        assert first.held() and first.held()  # and it stays held
        assert not second.held()
        first.close()  # as the server does when its processor dies
        assert eventually(second.held)
        assert not first.held()
    finally:
        first.close()
        second.close()


def test_one_trainer_fits_the_others_score_with_its_versions(group_settings, events):
    trainer = BatchPipeline(group_settings)
    follower = BatchPipeline(group_settings)
    try:
        assert trainer.core.trains and not follower.core.trains
        # The follower holds its events: only the trainer fits a first model.
        held = stored(follower, batch(events[:600], 0, partition=1))
        assert held.rows == [] and held.models == [] and follower.core.held
        fitted = stored(trainer, batch(events[:600], 0, partition=0))
        assert [m.version for m in fitted.models] == [1]
        # The follower takes v1 and scores what it held with it; it records no model itself.
        scored = stored(follower, batch(events[600:700], 600, partition=1))
        assert scored.models == [] and not follower.core.held
        assert {r.model_version for r in scored.named_rows} == {1}
        assert len(scored.named_rows) == len(batch(events[:700], 0, partition=1))
        assert scored.pending_clear  # and what it held is no longer held in the database
        # The trainer goes: the follower takes the lease and numbers the next version.
        trainer.close()
        trainer = None
        assert eventually(lambda: follower.handle([]) is not None and follower.core.trains)
        assert follower.core.versions.take() == 2  # the database's sequence, past v1
    finally:
        follower.close()
        if trainer is not None:
            trainer.close()


def test_two_processors_that_both_believe_they_train_never_number_two_models_alike(
    group_settings, events
):
    """The lease moved while its old holder had not noticed yet (it checks every second):
    for that moment both fit models, and each one is recorded under a number of its own."""
    s = group_settings.replace(refit_every_events=200)
    trainer, stale = BatchPipeline(s), BatchPipeline(s)
    stale.lease.held = lambda: True  # it lost the lease and does not know it yet
    try:
        models = []
        for start in range(0, 1200, 300):
            for pipeline, partition in ((trainer, 0), (stale, 1)):
                scored = pipeline.score(batch(events[start : start + 300], start, partition))
                for result in (scored, pipeline.core.wait_for_refit()):  # each one recorded
                    pipeline.submit(result)
                    pipeline.collect()
                    models += result.models
        assert len(models) >= 4 and {m.version for m in models} >= {1, 2}
        assert len({m.version for m in models}) == len(models)
        recorded = stored_models(s.database_url)
        assert all(recorded.get(m.version) == m.fitted_at for m in models)
    finally:
        stale.close()
        trainer.close()


def test_a_processor_gaining_a_partition_rebuilds_its_accounts_from_the_database(
    group_settings, events
):
    a = BatchPipeline(group_settings)
    b = BatchPipeline(group_settings)
    try:
        a.partitions_assigned([0, 1])
        b.partitions_assigned([])
        a.handle(batch(events[:800], 0))  # a scores everything: b knows no account
        a.partitions_assigned([0])
        b.partitions_assigned([1])  # b gains partition 1 and its accounts' stored events
        moved = {t.account_id for t in events[:800] if partition_of(t) == 1}
        stayed = {t.account_id for t in events[:800] if partition_of(t) == 0}
        assert {a for a in moved if b.core.states.get(a)} == moved
        assert not any(b.core.states.get(a) for a in stayed)
        for account in moved:
            stored = sum(t.account_id == account for t in events[:800])
            assert b.core.states.get(account).seen == min(stored, group_settings.account_history)
        b.handle(batch(events[800:1000], 800, partition=1))
        a.partitions_assigned([0, 1])  # a gains partition 1 back: b's events are in its state
        for account in moved:
            stored = sum(t.account_id == account for t in events[:1000])
            assert a.core.states.get(account).seen == min(stored, group_settings.account_history)
    finally:
        a.close()
        b.close()


def test_the_trainer_fits_the_first_model_on_what_the_group_holds(group_settings, events):
    trainer = BatchPipeline(group_settings)  # with no partition, nothing comes to it
    follower = BatchPipeline(group_settings)
    try:
        trainer.partitions_assigned([])
        follower.partitions_assigned([0, 1])
        held = stored(follower, batch(events[:300], 0))
        assert held.rows == [] and len(follower.core.held) == 300
        fitted = stored(trainer, [])
        assert [m.training_rows for m in fitted.models] == [300] and fitted.rows == []
        scored = stored(follower, batch(events[300:320], 300))
        assert len(scored.rows) == 320 and {r.model_version for r in scored.named_rows} == {1}
    finally:
        follower.close()
        trainer.close()


def test_events_held_for_a_partition_that_moves_are_scored_by_its_new_processor_only(
    group_settings, events
):
    a = BatchPipeline(group_settings)  # the trainer
    b = BatchPipeline(group_settings)
    try:
        a.partitions_assigned([0])
        b.partitions_assigned([1])
        stored(b, batch(events[:150], 0, partition=1))  # b holds these (no model yet) ...
        b.partitions_assigned([])  # ... and loses partition 1 to a
        a.partitions_assigned([0, 1])
        assert not b.core.held
        moved = {h.txn.transaction_id for h in a.core.held}
        assert moved == {t.transaction_id for t in events[:150] if partition_of(t) == 1}
        fitted = stored(a, batch(events[150:400], 150))
        assert fitted.models and moved <= {r.transaction_id for r in fitted.named_rows}
        assert stored(b, []).rows == []  # b took model v1 and had nothing left to score
    finally:
        a.close()
        b.close()


def test_the_trainer_fits_both_models_on_what_the_group_stored(group_settings, events):
    s = group_settings.replace(labels_topic=LABELS, supervised_refit_labels=300,
                               supervised_min_frauds=3, refit_every_events=500,
                               training_window=600)  # fmt: skip
    trainer = BatchPipeline(s)  # with no partition, no event and no label comes to it
    follower = BatchPipeline(s)
    try:
        trainer.partitions_assigned([])
        follower.partitions_assigned([0, 1])
        stored(follower, batch(events[:300], 0))  # held for the first fit ...
        assert [m.kind for m in stored(trainer, []).models] == ["isolation_forest"]  # ... v1
        learned = stored(follower, batch(events[300:1000], 300) + labels(events[:800]))
        assert len(learned.labels_released) == 800 and trainer.core.label_memory.labels == 0
        stored(trainer, [])  # the trainer counts the group's events and labels: refits are due
        fitted = trainer.core.wait_for_refit()
        trainer.submit(fitted)
        trainer.collect()
        models = {m.kind: m for m in fitted.models}
        supervised, forest = models["supervised"], models["isolation_forest"]
        assert supervised.training_rows == 800
        assert supervised.frauds == sum(t.is_fraud for t in events[:800])
        assert forest.reason == "events" and forest.training_rows == 600
        # the forest's window: the newest 600 of the 1,000 events stored, by event time
        by_time = sorted(learned.named_rows, key=lambda r: r.timestamp)
        assert len(by_time) == 1000 and by_time[-600].timestamp > by_time[-601].timestamp
        newest = by_time[-600:]
        window = [[json.loads(r.features)[n] for n in ANOMALY_FEATURE_NAMES] for r in newest]
        assert sorted(stored_anomaly_inputs(s.database_url, 600).tolist()) == sorted(window)
        scored = stored(follower, batch(events[1000:1100], 1000))
        assert {r.supervised_version for r in scored.named_rows} == {supervised.version}
        assert {r.model_version for r in scored.named_rows} == {forest.version}
    finally:
        follower.close()
        trainer.close()


def test_drift_a_follower_sees_makes_the_trainer_refit(group_settings, events, monkeypatch):
    monkeypatch.setattr(scoring, "MIN_EVENTS_BEFORE_DRIFT_REFIT", 100)
    s = group_settings.replace(refit_every_events=0, refit_interval_s=0.0)
    trainer = BatchPipeline(s)
    follower = BatchPipeline(s)
    try:
        trainer.join_group()
        follower.join_group()
        trainer.partitions_assigned([0])
        follower.partitions_assigned([1])
        assert [m.version for m in stored(trainer, batch(events[:600], 0, 0)).models] == [1]
        stored(follower, batch(events[:700], 0, 1))  # v1 taken
        follower.core.scorer.drift.detected = True  # as its ADWIN would set it
        stored(follower, batch(events[700:800], 700, 1))
        [record] = [v for stored_ in follower.group.publishable() for v in stored_.learned]
        assert not follower.core.scorer.drift.detected  # told the trainer; watching anew
        follower.group.apply_learned(record)  # its own record: nothing
        assert follower.group.drift_in == 0
        trainer.group.apply_learned(record)
        stored(trainer, batch(events[600:1200], 600, 0))
        [model] = trainer.core.wait_for_refit().models
        assert model.reason == "drift"
    finally:
        follower.close()
        trainer.close()


def test_what_a_batch_taught_is_published_once_the_batch_is_stored(group_settings, events):
    pipeline = BatchPipeline(group_settings)
    try:
        state = pipeline.join_group()
        pipeline.partitions_assigned([0, 1])
        stored(pipeline, batch(events[:300], 0))  # the first model: 300 events scored
        state.publishable()
        result = pipeline.score(batch(events[300:400], 300))
        assert state.publishable() == []  # scored, its write not even started
        pipeline.submit(result)
        assert state.publishable() == []  # written, not committed yet
        pipeline.collect()
        [outgoing] = state.publishable()
        merchants = {decode_key(key)[1] for key, _value in outgoing.shares}
        assert merchants == {t.merchant for t in events[300:400]}
    finally:
        pipeline.close()
