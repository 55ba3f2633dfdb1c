"""The SQLite writer process: batches are written beside the batch path, in one transaction each,
and what the core reads meanwhile stays right."""

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from http import HTTPStatus

import pytest

from fraudstream.schema import Transaction
from producer.csv_source import read_transactions
from stream_processor.core import RawMessage
from stream_processor.pipeline import BatchPipeline
from stream_processor.sink import SinkError, open_sink
from stream_processor.writer import WRITER_PROCESS_NAME, WriterProcess


def msgs(csv_path, n, start=0):
    txns = [t for _l, t in read_transactions(csv_path) if isinstance(t, Transaction)][:n]
    return [RawMessage(t.encode(), offset=start + i) for i, t in enumerate(txns)]


def db_file(settings):
    return settings.database_url.removeprefix("sqlite:///")


def count(settings, sql="select count(*) from transactions"):
    with sqlite3.connect(db_file(settings)) as conn:
        return conn.execute(sql).fetchone()[0]


class WriteLock:
    """Another connection holding SQLite's write lock: the writer's transaction waits."""

    def __init__(self, settings):
        self.conn = sqlite3.connect(db_file(settings), isolation_level=None)

    def __enter__(self):
        self.conn.execute("BEGIN IMMEDIATE")
        return self

    def __exit__(self, *exc):
        self.conn.execute("ROLLBACK")
        self.conn.close()


def test_a_batch_is_scored_while_the_last_one_is_written(settings, small_csv):
    """With the database locked, the write stays in flight and the next batch is scored anyway:
    its repeats of the batch being written are duplicates (the ids in flight count as stored),
    and once the lock goes both writes commit, each row once."""
    pipeline = BatchPipeline(settings.replace(warmup_events=1))
    try:
        events = msgs(small_csv, 300)
        pipeline.collect()
        pipeline.submit(pipeline.score(events[:100]))  # the first fit: 100 rows
        pipeline.collect()
        with WriteLock(settings):
            first = pipeline.score(events[100:200])
            pipeline.submit(first)
            time.sleep(0.3)
            assert pipeline.in_flight and pipeline.sink.in_flight  # waiting for the lock
            again = pipeline.score(events[150:300])  # 50 repeats of the batch in flight
            assert sorted(again.duplicate_ids) == [f"T{i:08d}" for i in range(151, 201)]
            assert len(again.rows) == 100
            assert count(settings) == 100
        out = pipeline.collect()
        assert len(out.alerts) == len(first.alerts)
        pipeline.submit(again)
        pipeline.collect()
        assert count(settings) == 300
        assert count(settings, "select count(distinct transaction_id) from transactions") == 300
    finally:
        pipeline.close()


def test_a_read_of_stored_events_waits_for_the_write_in_flight(settings, small_csv):
    """Rebuilding an evicted account reads its stored events: never before the write that
    stores its newest ones is committed."""
    pipeline = BatchPipeline(settings.replace(warmup_events=1))
    try:
        events = msgs(small_csv, 200)
        pipeline.submit(pipeline.score(events[:100]))
        pipeline.collect()
        with WriteLock(settings):
            result = pipeline.score(events[100:200])
            account = result.named_rows[-1].account_id
            pipeline.submit(result)
            found: list = []
            reader = threading.Thread(
                target=lambda: found.extend(pipeline.store.account_events([account]))
            )
            reader.start()
            reader.join(0.5)
            assert reader.is_alive()  # waiting for the write
        reader.join(30)
        assert result.named_rows[-1].transaction_id in {t.transaction_id for t in found}
        pipeline.collect()
    finally:
        pipeline.close()


def test_a_failed_write_is_an_error_that_says_why_and_stores_nothing_of_the_batch(
    settings, small_csv
):
    sink = open_sink(settings.database_url)
    pipeline = BatchPipeline(settings.replace(warmup_events=1))
    try:
        result = pipeline.score(msgs(small_csv, 50) + [RawMessage(b"nope", offset=999)])
        with sqlite3.connect(db_file(settings)) as conn:
            conn.execute(
                "create trigger refuse before insert on transactions "
                "when new.transaction_id = 'T00000040' "
                "begin select raise(abort, 'refused here'); end"
            )
        sink.submit(result)
        with pytest.raises(SinkError, match="refused here"):
            sink.wait()
        assert count(settings) == 0
        assert count(settings, "select count(*) from dead_letters") == 0  # same transaction
        assert count(settings, "select count(*) from model_versions") == 0
        with sqlite3.connect(db_file(settings)) as conn:
            conn.execute("drop trigger refuse")
        sink.write(result)  # the writer goes on after a failed write
        assert count(settings) == 50
    finally:
        sink.close()
        pipeline.close()


def test_the_writer_exits_when_the_processor_is_killed(settings, tmp_path):
    """However the processor ends (here SIGKILL), its writer process does not outlive it."""
    script = textwrap.dedent(
        f"""
        import time
        from stream_processor.sink import open_sink
        sink = open_sink({settings.database_url!r})
        print(sink.writer.pid, flush=True)
        time.sleep(600)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    writer_pid = int(proc.stdout.readline())
    with open(f"/proc/{writer_pid}/comm") as f:
        assert f.read().strip() == WRITER_PROCESS_NAME
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and _running(writer_pid):
        time.sleep(0.05)
    assert not _running(writer_pid)


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"  # a zombie has exited
    except FileNotFoundError:
        return False


def test_a_write_beside_another_writers_lock_waits_and_commits(settings, small_csv):
    """Another connection holds the write lock for 2 s: the writer waits it out (busy timeout,
    then retries) and commits; the write does not fail."""
    sink = open_sink(settings.database_url)
    pipeline = BatchPipeline(settings.replace(warmup_events=1))
    try:
        result = pipeline.score(msgs(small_csv, 50))
        holder = sqlite3.connect(db_file(settings), isolation_level=None, check_same_thread=False)
        holder.execute("BEGIN IMMEDIATE")
        release = threading.Timer(2, lambda: holder.execute("ROLLBACK"))
        release.start()
        started = time.monotonic()
        sink.write(result)
        assert time.monotonic() - started >= 1.5
        release.join()
        holder.close()
        assert count(settings) == 50
    finally:
        sink.close()
        pipeline.close()


def test_values_marshal_refuses_travel_pickled_and_are_stored_the_same(tmp_path):
    path = tmp_path / "w.db"
    with sqlite3.connect(path) as conn:
        conn.execute("create table t (a, b, c)")
    writer = WriterProcess(str(path), busy_timeout_ms=1000)
    try:
        rows = [(1.5, "x", b"\x00\x01"), (2**40, None, True)]
        writer.write([("insert into t values (?, ?, ?)", rows)])  # marshalled
        # an int of a subclass (the child can import it): marshal refuses it, SQLite takes it
        writer.write([("insert into t values (?, ?, ?)", [(HTTPStatus.OK, "z", 3)])])  # pickled
    finally:
        writer.close()
    with sqlite3.connect(path) as conn:
        stored = conn.execute("select a, b, c, typeof(a) from t order by rowid").fetchall()
    assert stored == [
        (1.5, "x", b"\x00\x01", "real"),
        (2**40, None, 1, "integer"),
        (200, "z", 3, "integer"),
    ]


def test_with_every_background_checkpoint_failing_the_writes_go_on_and_the_log_stays_bounded(
    tmp_path,
):
    """The writer's checkpoints run in a thread beside the writes; when none of them copies the
    whole log (here: each fails), a write every few catches up first, so the log is still
    rewound and the writes never wait on a broken thread."""
    from stream_processor.writer import _Checkpoints, _transaction

    path = tmp_path / "log.db"
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA wal_autocheckpoint=0")
    conn.execute("create table t (x blob)")
    checkpoints = _Checkpoints(conn, str(path), 5.0, every_writes=4)
    checkpoints._own.close()  # every checkpoint of the thread now fails
    sizes = []
    for _ in range(40):
        checkpoints.before_write()
        try:
            _transaction(conn, [("insert into t values (?)", [(os.urandom(3000),)] * 20)])
        finally:
            checkpoints.after_write()
        sizes.append(os.path.getsize(f"{path}-wal"))
    checkpoints.close()
    assert conn.execute("select count(*) from t").fetchone()[0] == 800
    # Never rewound, the log would grow at every write; caught up every 4 writes, it stops.
    grew = sum(after > before for before, after in zip(sizes[:-1], sizes[1:], strict=True))
    assert grew <= 8, sizes
    assert checkpoints.count >= 40 // 5  # the catch-ups
    conn.close()
