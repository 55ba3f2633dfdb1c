"""Both sinks (a SQLite file, a PostgreSQL database): idempotent writes, and what a restart reads
back; then what is SQLite's own (WAL mode, checkpoints, the id lookup's plan)."""

import sqlite3
from pathlib import Path

import numpy as np
import pytest

from fraudstream.schema import Transaction
from fraudstream.tables import make_engine
from producer.csv_source import read_transactions
from producer.generate import GeneratorConfig, write_csv
from stream_processor.core import RawMessage, ScoringCore
from stream_processor.features import ANOMALY_FEATURE_NAMES
from stream_processor.sink import SinkStore, open_sink, write_plan
from stream_processor.sqlite_sink import KNOWN_IDS_SQLITE
from stream_processor.writer import _dumps


def msgs(csv_path, n):
    txns = [t for _l, t in read_transactions(csv_path) if isinstance(t, Transaction)][:n]
    return [RawMessage(t.encode(), offset=i) for i, t in enumerate(txns)]


def db_file(settings):
    return settings.database_url.removeprefix("sqlite:///")


def query(settings, sql: str) -> list[tuple]:
    """``sql``'s rows, read through SQLAlchemy whatever the database."""
    from sqlalchemy import text

    engine = make_engine(settings.database_url)
    try:
        with engine.connect() as conn:
            return [tuple(r) for r in conn.execute(text(sql))]
    finally:
        engine.dispose()


def test_database_is_in_wal_mode(settings):
    open_sink(settings.database_url)
    with sqlite3.connect(db_file(settings)) as conn:
        assert conn.execute("pragma journal_mode").fetchone()[0] == "wal"


def test_writing_the_same_result_twice_adds_no_rows(db_settings, small_csv):
    settings = db_settings
    sink = open_sink(settings.database_url)
    core = ScoringCore(settings.replace(warmup_events=1))
    result = core.process(msgs(small_csv, 50) + [RawMessage(b"nope", offset=999)])
    sink.write(result)
    sink.write(result)
    assert query(settings, "select count(*) from transactions") == [(50,)]
    assert query(settings, "select count(*) from dead_letters") == [(1,)]
    assert query(settings, "select count(*) from model_versions") == [(1,)]
    assert query(settings, "select count(*) from transactions where score is null") == [(0,)]
    sink.close()


def test_a_batch_goes_to_the_sqlite_writer_marshalled_not_pickled(settings, small_csv):
    """Every statement of a scored batch reaches the writer process in marshal's form: a value
    marshal refuses (a tuple subclass such as TransactionRow) would send the whole batch
    pickled, at several times the cost per row."""
    sink = open_sink(settings.database_url)
    try:
        core = ScoringCore(settings.replace(warmup_events=1))
        result = core.process(msgs(small_csv, 50) + [RawMessage(b"nope", offset=999)])
        assert result.rows and result.dead_letters and result.models
        statements = [sink._statement(step) for step in write_plan(result, {"t-1": 1.0})]
        assert {type(row) for _sql, rows in statements for row in rows} == {tuple}
        assert _dumps(statements)[:1] == b"m"
    finally:
        sink.close()


def test_held_events_survive_a_restart_and_are_recognised_as_known(db_settings, small_csv):
    settings = db_settings
    sink = open_sink(settings.database_url)
    core = ScoringCore(settings, SinkStore(sink, settings.account_history))
    sink.write(core.process(msgs(small_csv, 120)))  # below warm-up: all held
    again = open_sink(settings.database_url)
    held = again.held_events()
    assert [h.txn.transaction_id for h in held] == [f"T{i:08d}" for i in range(1, 121)]
    assert sink.known_ids(["T00000001", "nope"]) == {"T00000001"}
    again.close()
    sink.close()


def test_known_ids_finds_stored_and_held_ids_on_both_databases(db_settings, small_csv):
    settings = db_settings
    sink = open_sink(settings.database_url)
    core = ScoringCore(settings.replace(warmup_events=1), SinkStore(sink, settings.account_history))
    sink.write(core.process(msgs(small_csv, 300)))  # stored rows
    held = ScoringCore(settings.replace(warmup_events=10_000))
    sink.write(held.process(msgs(small_csv, 320)[-5:]))  # held for a first fit
    stored_ids = ["T00000001", "T00000300"]
    held_ids = [f"T{i:08d}" for i in range(316, 321)]
    odd = ['T"1', "Tä\\n", "T00000001 ", "T0000000%", "T0000000_"]  # never stored
    ids = stored_ids + held_ids + odd + [f"N{i}" for i in range(2000)]
    assert sink.known_ids(ids) == set(stored_ids + held_ids)
    assert sink.known_ids([]) == set()
    sink.close()


def test_the_sqlite_id_lookup_keeps_the_ids_as_its_outer_loop(settings, small_csv):
    sink = open_sink(settings.database_url)
    core = ScoringCore(settings.replace(warmup_events=1), SinkStore(sink, settings.account_history))
    sink.write(core.process(msgs(small_csv, 300)))
    sink.close()
    with sqlite3.connect(db_file(settings)) as conn:
        conn.execute("analyze")  # whatever the statistics say: the ids stay the outer loop
        plan = [row[3] for row in conn.execute("explain query plan " + KNOWN_IDS_SQLITE, ("[]",))]
    assert not [step for step in plan if step.startswith("SCAN") and "VIRTUAL" not in step], plan
    assert sum("USING COVERING INDEX" in step for step in plan) == 2, plan


def test_restart_reloads_the_latest_model_and_the_account_history(db_settings, small_csv):
    settings = db_settings
    sink = open_sink(settings.database_url)
    core = ScoringCore(
        settings.replace(refit_every_events=0), SinkStore(sink, settings.account_history)
    )
    for i in range(0, 600, 200):
        sink.write(core.process(msgs(small_csv, 600)[i : i + 200]))
    again = open_sink(settings.database_url)
    model = again.latest_model()
    assert model.version == core.model.version == 1
    probe = np.zeros((3, len(ANOMALY_FEATURE_NAMES)))
    assert (model.score(probe) == core.model.score(probe)).all()
    assert again.next_version() == 2
    history = list(again.recent_history(per_account=50))
    assert len(history) == 600
    assert [h.event_time for h in history] == sorted(h.event_time for h in history)
    account = history[0].account_id
    mine = [h for h in history if h.account_id == account]
    assert again.account_history([account, "nobody"], 3) == mine[-3:]
    again.close()
    sink.close()


def test_unpublished_alerts_are_found_until_marked(db_settings, small_csv):
    settings = db_settings
    sink = open_sink(settings.database_url)
    core = ScoringCore(settings.replace(warmup_events=1, flag_quantile=0.5))
    result = core.process(msgs(small_csv, 100))
    sink.write(result)
    ids = [r.transaction_id for r in result.named_rows]
    pending = sink.unpublished_alerts(ids)
    assert {a["transaction_id"] for a in pending} == {a["transaction_id"] for a in result.alerts}
    sink.mark_published(a["transaction_id"] for a in pending[:3])
    assert len(sink.unpublished_alerts(ids)) == len(pending) - 3
    # The next batch's write records two more, with the times they were delivered.
    delivered = {pending[3]["transaction_id"]: 1000.5, pending[4]["transaction_id"]: 1001.25}
    sink.write(core.process(msgs(small_csv, 200)[100:]), published=delivered)
    assert len(sink.unpublished_alerts(ids)) == len(pending) - 5
    stored = query(settings, "select transaction_id, alert_published_at from transactions "
                             "where alert_published_at < 2000")  # fmt: skip
    assert dict(stored) == delivered
    sink.close()


def test_an_unopenable_database_is_a_clear_error(tmp_path):
    from stream_processor.sink import SinkError

    with pytest.raises(SinkError, match="cannot open the database .*missing/dir/finance.db"):
        open_sink(f"sqlite:///{tmp_path}/missing/dir/finance.db")
    with pytest.raises(SinkError, match="cannot open the database postgresql.*nobody:\\*\\*\\*@"):
        open_sink("postgresql://nobody:s3cret@127.0.0.1:5432/nothing")  # never the password
    with pytest.raises(SinkError, match="mysql is not supported; use sqlite"):
        open_sink("mysql://root@127.0.0.1/finance")


def test_wal_checkpoints_run_beside_the_writes_and_keep_the_log_bounded(settings, tmp_path):
    """The sink's commits never checkpoint (SQLite's default would, inside the batch's commit);
    the writer process does, beside its writes, so the write-ahead log does not grow with the
    stream, and nothing is left uncopied when the sink closes."""
    csv = tmp_path / "events.csv"
    write_csv(csv, GeneratorConfig(rows=6000, days=20, seed=4))
    events = msgs(csv, 6000)
    sink = open_sink(settings.database_url)
    with sink.engine.connect() as conn:
        assert conn.exec_driver_sql("pragma wal_autocheckpoint").scalar() == 0
    core = ScoringCore(settings.replace(warmup_events=1, refit_every_events=0))
    path = Path(db_file(settings))
    wal = Path(f"{path}-wal")
    sizes = []
    for i in range(0, len(events), 100):
        sink.write(core.process(events[i : i + 100]))
        sizes.append(wal.stat().st_size)
    # Without checkpoints the log holds every page written: the file grows with every batch.
    # Checkpointed, it is rewound and reused: it grows only until it holds the pages of the most
    # batches written between two checkpoints that copied all of it (at most 8 here).
    grew = sum(after > before for before, after in zip(sizes[:-1], sizes[1:], strict=True))
    assert grew <= len(sizes) // 3, sizes
    with sqlite3.connect(path) as reader:  # open across the close, so the log file stays
        sink.close()
        core.close()
        busy, frames, copied = reader.execute("pragma wal_checkpoint(passive)").fetchone()
        assert busy == 0 and frames == copied  # the checkpoint at close copied everything
        assert reader.execute("select count(*) from transactions").fetchone()[0] == 6000
    assert sink.writer.checkpoints >= 5
