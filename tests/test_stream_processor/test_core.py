"""The scoring core in memory: lists of raw values in, rows / alerts / dead letters out."""

import io
import json
import sqlite3
import subprocess
import sys
from datetime import UTC, datetime, timedelta, timezone

import joblib
import numpy as np
import pytest
from sklearn.ensemble import IsolationForest

from fraudstream.schema import Transaction, format_timestamp
from producer.csv_source import read_transactions
from stream_processor.core import (
    MemoryStore,
    RawMessage,
    ScoringCore,
    db_timestamp,
    features_json,
)
from stream_processor.features import FEATURE_NAMES, SUPERVISED_FEATURE_NAMES
from stream_processor.fitting import anomaly_model, fit_model, fit_supervised
from stream_processor.pipeline import BatchPipeline


def messages(csv_path, start=0, stop=None):
    txns = [t for _l, t in read_transactions(csv_path) if isinstance(t, Transaction)]
    return [
        RawMessage(t.encode(), t.account_id.encode(), offset=start + i)
        for i, t in enumerate(txns[start:stop])
    ]


def run_all(core, msgs, size=100):
    results = []
    for i in range(0, len(msgs), size):
        results.append(core.process(msgs[i : i + size]))
    return results


def test_events_are_held_until_the_first_fit_then_all_scored(settings, small_csv):
    core = ScoringCore(settings)
    msgs = messages(small_csv, stop=300)
    first = core.process(msgs[:150])
    assert first.rows == [] and len(first.pending_add) == 150  # warm-up: 200 events
    second = core.process(msgs[150:])
    assert second.pending_clear
    assert [m.version for m in second.models] == [1]
    assert len(second.rows) == 300  # the held ones and this batch, none unscored
    assert all(r.model_version == 1 for r in second.named_rows)


def test_idle_warmup_fits_on_what_is_held(settings, small_csv):
    core = ScoringCore(settings.replace(warmup_idle_s=0.0))
    core.process(messages(small_csv, stop=40))
    result = core.tick()
    assert len(result.rows) == 40 and result.pending_clear


def test_scores_are_higher_for_anomalies_and_flags_carry_reasons(settings, small_csv):
    core = ScoringCore(settings)
    results = run_all(core, messages(small_csv))
    rows = [r for res in results for r in res.named_rows]
    alerts = [a for res in results for a in res.alerts]
    assert len(rows) == 1500
    flagged = [r for r in rows if r.is_flagged]
    assert flagged and len(flagged) == len(alerts)
    assert all(r.score > r.threshold for r in flagged)
    assert all(r.score <= r.threshold for r in rows if not r.is_flagged)
    assert all(a["reasons"] and a["transaction_id"] for a in alerts)
    fraud = [r.score for r in rows if r.is_fraud]
    legit = [r.score for r in rows if not r.is_fraud]
    assert sum(fraud) / len(fraud) > sum(legit) / len(legit)
    assert set(json.loads(rows[0].features)) == set(SUPERVISED_FEATURE_NAMES)
    parsed = [json.loads(r.features) for r in rows]
    assert all(list(p) == list(SUPERVISED_FEATURE_NAMES) for p in parsed)


def test_the_features_column_is_json_of_the_rounded_values_in_column_order():
    rng = np.random.default_rng(7)
    matrix = rng.normal(scale=5, size=(200, len(SUPERVISED_FEATURE_NAMES)))
    matrix[:, 3] = rng.integers(0, 5, 200)  # whole numbers
    matrix[:5, 4] = [1e-6, -4e-6, 0.0, -0.0, 123456789.1234567]  # exponents, signed zeros
    matrix[5:10, 4] = [1e17, 3.0000004, 2.5e-7, 1 / 3, -2 / 3]
    texts = features_json(matrix)
    assert len(texts) == 200 and features_json(matrix[:0]) == []
    assert features_json(matrix[:1]) == texts[:1]
    for text, row in zip(texts, matrix.round(6).tolist(), strict=True):
        parsed = json.loads(text)
        assert list(parsed) == list(SUPERVISED_FEATURE_NAMES)
        assert list(parsed.values()) == row  # the same floats, bit for bit
        # laid out as json.dumps lays it out (numbers aside: 1e-06 there, 1e-6 here)
        assert text.replace("e-0", "e-").replace("e+", "e") == json.dumps(parsed).replace(
            "e-0", "e-"
        ).replace("e+", "e")


def test_rows_are_built_by_the_tables_column_names():
    from fraudstream.tables import transactions
    from stream_processor.contracts import ROW_COLUMNS, TransactionRow, rows_from_columns

    assert ROW_COLUMNS == tuple(c.name for c in transactions.columns)
    columns = {c: [f"{c}-1", f"{c}-2"] for c in ROW_COLUMNS}
    rows = rows_from_columns(columns)
    assert [type(r) for r in rows] == [tuple, tuple]  # what the database takes, in table order
    assert TransactionRow._make(rows[1]).risk_score == "risk_score-2"
    del columns["risk_score"]
    with pytest.raises(ValueError, match=r"missing \['risk_score'\], unknown \[\]"):
        rows_from_columns(columns)
    with pytest.raises(ValueError, match=r"missing \['risk_score'\], unknown \['risk'\]"):
        rows_from_columns({**columns, "risk": [0.5, 0.5]})
    with pytest.raises(ValueError, match="shorter"):  # a column of another length
        rows_from_columns({**columns, "risk_score": [0.5]})


def test_labels_are_never_model_inputs(settings, small_csv):
    assert (
        "is_fraud" not in SUPERVISED_FEATURE_NAMES
        and "fraud_scenario" not in SUPERVISED_FEATURE_NAMES
    )
    core = ScoringCore(settings)
    rows = [r for res in run_all(core, messages(small_csv, stop=400)) for r in res.named_rows]
    assert {"is_fraud", "fraud_scenario"}.isdisjoint(json.loads(rows[0].features))


def test_periodic_refit_swaps_in_new_versions(settings, small_csv):
    core = ScoringCore(settings)
    results = []
    msgs = messages(small_csv)
    for i in range(0, len(msgs), 100):
        results.append(core.process(msgs[i : i + 100]))
        results.append(core.wait_for_refit())  # a refit runs in the background; collect it
    versions = [m.version for res in results for m in res.models]
    assert versions[:3] == [1, 2, 3]
    reasons = [m.reason for res in results for m in res.models]
    assert reasons[0] == "initial" and set(reasons[1:]) == {"events"}
    used = {r.model_version for res in results for r in res.named_rows}
    assert len(used) >= 3


def test_refits_due_by_event_count_wait_for_the_minimum_interval(settings, small_csv):
    """REFIT_MIN_INTERVAL_S: a refit every 300 events, but not sooner than 60 s after the last
    one started; once that much time has passed, the next batch starts it."""
    core = ScoringCore(settings.replace(refit_min_interval_s=60.0, drift_delta=0.0))
    msgs = messages(small_csv)
    results = run_all(core, msgs[:1200])  # the first fit at 200, then 1,000 more events
    results.append(core.wait_for_refit())
    assert [m.reason for res in results for m in res.models] == ["initial"]
    assert not core.scorer.refit.running
    core.scorer.last_fit -= 61  # a minute later
    results = run_all(core, msgs[1200:1300])
    results.append(core.wait_for_refit())
    assert [(m.version, m.reason) for res in results for m in res.models] == [(2, "events")]


def test_refit_work_on_the_batch_path_is_timed_per_batch(settings, small_csv):
    """Starting, swapping in and recording a refit is timed (the benchmark's pause), and only
    the batches that do it carry the time."""
    pipeline = BatchPipeline(settings)
    core = pipeline.core
    msgs = messages(small_csv)
    starts, swaps, others = [], [], []
    try:
        for i in range(0, len(msgs), 100):
            running = core.scorer.refit.running
            out = pipeline.handle(msgs[i : i + 100])
            if i < settings.warmup_events:
                continue
            if not running and core.scorer.refit.running:
                starts.append(out.refit_s)
                core.scorer.refit.wait(60)  # the next batch swaps it in
            elif running and not core.scorer.refit.running:
                swaps.append(out.refit_s)
            else:
                others.append(out.refit_s)
    finally:
        pipeline.close()
    assert len(starts) >= 2 and len(swaps) >= 2
    assert min(starts) > 0 and min(swaps) > 0
    # a swap unpickles, installs and records a model: more than a batch's bookkeeping alone
    assert min(swaps) > max(others, default=0.0)


def test_bad_values_become_dead_letters_and_the_batch_goes_on(settings, small_csv):
    core = ScoringCore(settings.replace(warmup_events=1))
    good = messages(small_csv, stop=3)
    bad = [
        RawMessage(b"\xff", offset=10),
        RawMessage(b'{"transaction_id": "X"}', offset=11),
        RawMessage(None, offset=12),
    ]
    result = core.process(good[:1] + bad + good[1:])
    assert len(result.rows) == 3
    assert [(d["source_offset"], d["error_field"]) for d in result.dead_letters] == [
        (10, None),
        (11, "account_id"),
        (12, None),
    ]
    assert result.dead_letters[0]["message_value"] == b"\xff"


def test_duplicates_are_dropped_within_a_batch_and_against_the_store(settings, small_csv):
    stored = {"T00000005"}
    core = ScoringCore(settings.replace(warmup_events=1), MemoryStore(ids=stored))
    msgs = messages(small_csv, stop=10)
    result = core.process(msgs + msgs[:3])
    ids = [r.transaction_id for r in result.named_rows]
    assert len(ids) == len(set(ids)) == 9
    assert "T00000005" not in ids
    assert sorted(result.duplicate_ids) == sorted(
        ["T00000001", "T00000002", "T00000003", "T00000005"]
    )


@pytest.mark.parametrize("size", [1, 7, 500])
def test_batch_size_does_not_change_the_scores(settings, small_csv, size):
    base = ScoringCore(settings.replace(refit_every_events=0))
    ref = {
        r.transaction_id: r.score
        for res in run_all(base, messages(small_csv), 100)
        for r in res.named_rows
    }
    other = ScoringCore(settings.replace(refit_every_events=0, warmup_events=200))
    msgs = messages(small_csv)
    # Warm-up must see the same 200 events for the same first model.
    got = {}
    for res in [other.process(msgs[:200])] + run_all(other, msgs[200:], size):
        got.update({r.transaction_id: r.score for r in res.named_rows})
    assert got == pytest.approx(ref)


@pytest.mark.parametrize("rows, max_features", [(5000, 1.0), (5000, 0.5), (1, 1.0), (3, 1.0)])
def test_fast_forest_scores_equal_scikit_learns(rows, max_features):
    rng = np.random.default_rng(rows)
    train = rng.normal(size=(rows, 7))
    forest = IsolationForest(
        n_estimators=25, max_samples=min(256, max(rows, 2)), max_features=max_features,
        random_state=3,
    ).fit(train if rows > 1 else np.repeat(train, 2, axis=0))  # fmt: skip
    batch = np.vstack([rng.normal(size=(300, 7)), rng.normal(scale=8, size=(20, 7))])
    expected = -forest.score_samples(batch)
    flat = anomaly_model(
        forest, b"", version=1, threshold=0.5, flag_quantile=0.99, fitted_at=0.0,
        training_rows=rows, fit_seconds=0.0, reason="initial",
    )  # fmt: skip
    assert np.array_equal(flat.score(batch), expected)
    model = fit_model(train, version=1, reason="initial")
    saved = joblib.load(io.BytesIO(model.dumps()))  # what model_versions keeps
    assert np.array_equal(model.score(batch), -saved.score_samples(batch))


@pytest.mark.parametrize("missing", [0.0, 0.03])
def test_flat_boosted_trees_give_scikit_learns_probabilities(missing):
    """The supervised model scores without scikit-learn, also for inputs with NaN (which way a
    NaN goes is learned per split)."""
    rng = np.random.default_rng(7)
    x = rng.normal(size=(6000, 6))
    y = (x[:, 0] + x[:, 3] ** 2 + rng.normal(size=6000) > 2.5).astype(int)
    x[rng.random(x.shape) < missing] = np.nan
    model = fit_supervised(x, y, version=1)
    saved = joblib.load(io.BytesIO(model.dumps()))  # what model_versions keeps
    estimator = saved["estimator"]
    assert saved["log_odds_shift"] == 0.0  # every legitimate event fit: the odds are the data's
    batch = rng.normal(size=(500, 6))
    batch[rng.random(batch.shape) < missing] = np.nan
    expected = estimator.predict_proba(batch)[:, 1]
    # The same leaves, summed in the same order; only the logistic function may differ in the
    # last bit (NumPy's exp, SciPy's expit).
    assert np.allclose(model.score(batch), expected, rtol=1e-12, atol=1e-15)
    assert ((model.score(batch) >= 0.5) == (expected >= 0.5)).all()


def test_the_processor_imports_no_scikit_learn():
    """Scoring needs NumPy only; scikit-learn, SciPy and pandas (about 110 MB) stay in the
    refit worker. river's drift detector is used without importing river.drift (which imports
    all three)."""
    code = (
        "import sys, stream_processor.pipeline, stream_processor.kafka_runtime, "
        "stream_processor.remote; "
        "print(sorted(m for m in ('sklearn', 'scipy', 'pandas', 'joblib') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize(
    "ts, text",
    [
        (datetime(2026, 1, 5, 10, 0, tzinfo=UTC), "2026-01-05 10:00:00"),
        (datetime(2026, 1, 5, 10, 0, 0, 123456, tzinfo=UTC), "2026-01-05 10:00:00.123456"),
        (datetime(2026, 1, 5, 10, 0, tzinfo=timezone(timedelta(hours=2))), "2026-01-05 08:00:00"),
    ],
)
def test_stored_timestamps_are_utc_text_that_sorts(ts, text):
    assert db_timestamp(ts) == text == format_timestamp(ts)[:-1].replace("T", " ")


def stored_inputs(pipeline: BatchPipeline, msgs, names) -> dict[str, dict]:
    """``msgs`` through ``pipeline`` in batches of 50, then every stored row's ``names`` inputs."""
    for i in range(0, len(msgs), 50):
        pipeline.handle(msgs[i : i + 50])
    with sqlite3.connect(pipeline.settings.database_url.removeprefix("sqlite:///")) as conn:
        rows = conn.execute("select transaction_id, features from transactions").fetchall()
    return {tid: {k: v for k, v in json.loads(f).items() if k in names} for tid, f in rows}


def test_accounts_evicted_from_memory_are_rebuilt_from_stored_events(settings, small_csv, tmp_path):
    """Bounded memory loses no history: with room for 5 accounts, every account that comes back
    is rebuilt from the transactions table, and every event gets the features it gets when all
    accounts stay in memory."""
    msgs = messages(small_csv)

    def features(max_accounts: int, name: str) -> tuple[dict, BatchPipeline]:
        s = settings.replace(
            max_accounts=max_accounts,
            account_history=10_000,  # every stored event rebuilds the account: exactly equal
            database_url=f"sqlite:///{tmp_path / name}",
        )
        pipeline = BatchPipeline(s)
        try:
            # the features only: the models (and the scores in the column) differ between runs
            return stored_inputs(pipeline, msgs, FEATURE_NAMES), pipeline
        finally:
            pipeline.close()

    kept, _ = features(1_000_000, "all.db")
    bounded, pipeline = features(5, "bounded.db")
    assert len(kept) == len(msgs)
    assert bounded == kept
    assert len(pipeline.core.states) <= 5
    assert pipeline.core.states.evicted > 100
    assert pipeline.core.counts["accounts_rebuilt"] > 100


ACCOUNT_FEATURES = {n for n in FEATURE_NAMES if not n.startswith("merchant_")}
"""The inputs that depend on the account's own history only (a restart rebuilds merchants from
the loaded accounts' events alone)."""


def test_a_restart_loads_the_newest_accounts_and_rebuilds_the_others_on_their_next_event(
    settings, small_csv, tmp_path
):
    msgs = messages(small_csv)
    s = settings.replace(account_history=10_000, database_url=f"sqlite:///{tmp_path / 'r.db'}")

    def account_features(pipeline, batch) -> dict:
        return stored_inputs(pipeline, batch, ACCOUNT_FEATURES)

    first = BatchPipeline(s)
    account_features(first, msgs[:-100])
    first.close()
    again = BatchPipeline(s.replace(max_accounts=5))
    stored = again.sink.account_count()
    assert len(again.core.states) == 5 and again.core.states.evicted == stored - 5
    restarted = account_features(again, msgs[-100:])
    rebuilt = again.core.counts["accounts_rebuilt"]
    again.close()

    reference = BatchPipeline(s.replace(database_url=f"sqlite:///{tmp_path / 'ref.db'}"))
    uninterrupted = account_features(reference, msgs)
    reference.close()
    assert rebuilt > 5
    ids = {json.loads(x.value)["transaction_id"] for x in msgs[-100:]}
    last = [m for m in restarted if m in ids]
    assert len(last) == 100
    assert {t: restarted[t] for t in last} == {t: uninterrupted[t] for t in last}
