"""The PostgreSQL sink: a batch's rows by COPY, written by a thread beside the batch path.

The transactions of a batch go into a temporary table by COPY (PostgreSQL's bulk path, a
fraction of the time of row-by-row inserts), then into ``transactions`` by one ``insert ...
select ... on conflict do nothing``; the other tables' few rows by ``executemany``; all in one
transaction. The write runs in a thread of its own on a connection of its own: psycopg waits
for the server without holding the GIL, so the next batch is scored meanwhile.
"""

from __future__ import annotations

import logging
from concurrent.futures import Future, ThreadPoolExecutor

import psycopg
from sqlalchemy import Engine
from sqlalchemy.dialects.postgresql import insert

from fraudstream.retry import retry
from fraudstream.tables import events_scored, labels_learned, model_version
from stream_processor.core import ROW_COLUMNS
from stream_processor.sink import (
    OUTAGE_ATTEMPTS,
    GroupCounts,
    Sink,
    SinkError,
    Step,
    TrainerLease,
    while_away,
)

log = logging.getLogger(__name__)

KNOWN_IDS_POSTGRES = (
    "select transaction_id from transactions where transaction_id = any(%(ids)s)"
    " union all "
    "select transaction_id from pending_events where transaction_id = any(%(ids)s)"
)
ACCOUNT_HISTORY_POSTGRES = (
    "select transaction_id, account_id, amount, merchant, location, timestamp from ("
    " select transaction_id, account_id, amount, merchant, location, timestamp, kafka_offset,"
    " row_number() over (partition by account_id order by timestamp desc, kafka_offset desc)"
    " as rn from transactions where account_id = any(%(ids)s)"
    ") newest where rn <= %(n)s order by timestamp, kafka_offset"
)  # the accounts' newest events through ix_transactions_account_time, one statement a batch;
# events of one time in the order they were consumed (one account: one partition, by offset)
INCOMING = "incoming_transactions"  # the batch's rows, before the insert that skips duplicates
CREATE_INCOMING = (
    f"create temporary table if not exists {INCOMING}"
    " (like transactions including defaults) on commit delete rows"
)
COPY_INCOMING = f"copy {INCOMING} ({', '.join(ROW_COLUMNS)}) from stdin"
INSERT_INCOMING = (
    f"insert into transactions ({', '.join(ROW_COLUMNS)})"
    f" select {', '.join(ROW_COLUMNS)} from {INCOMING}"
    " on conflict (transaction_id) do nothing"
)
# The group's counters (tables.SEQUENCES) a write's steps advance by their rows.
COUNTED = {"rows": events_scored.name, "labels_released": labels_learned.name}
COUNT = "select count(nextval(%s)) from generate_series(1, %s)"
GROUP_COUNTS = "select " + ", ".join(
    f"coalesce(pg_sequence_last_value('{s.name}'), 0)" for s in (events_scored, labels_learned)
)
TRAINER_LOCK = 0x6672617564747261  # the advisory lock of the models' trainer ("fraudtra")
TRANSIENT = (psycopg.errors.SerializationFailure, psycopg.errors.DeadlockDetected,
             psycopg.OperationalError)  # fmt: skip


class PostgresSink(Sink):
    KNOWN_IDS, ACCOUNT_HISTORY = KNOWN_IDS_POSTGRES, ACCOUNT_HISTORY_POSTGRES
    SHARED = True

    def __init__(self, engine: Engine):
        super().__init__(engine)
        self._compiled: dict = {}  # Step.key -> SQL
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="postgres-writer")
        self._pending: Future | None = None
        self._conn: psycopg.Connection | None = None  # the writer thread's own

    def _start(self, steps: list[Step]) -> None:
        self._pending = self._executor.submit(self._write, steps)

    def wait(self) -> None:
        pending, self._pending = self._pending, None
        if pending is not None:
            try:
                pending.result()
            except psycopg.Error as exc:
                raise SinkError(f"cannot write to the database: {exc}") from exc

    @property
    def in_flight(self) -> bool:
        return self._pending is not None

    # -- in the writer thread ------------------------------------------------------------------

    def _write(self, steps: list[Step]) -> None:
        def retrying(exc: BaseException, attempt: int) -> None:
            log.warning("write failed (%s; attempt %d); retrying", exc, attempt)
            if isinstance(exc, psycopg.OperationalError):
                self._disconnect()  # the retry opens a new connection

        retry(lambda: self._transaction(steps), transient=lambda exc: isinstance(exc, TRANSIENT),
              attempts=OUTAGE_ATTEMPTS, on_retry=retrying)  # fmt: skip

    def _transaction(self, steps: list[Step]) -> None:
        if self._conn is None or self._conn.closed:  # the first write, or the last one broke it
            self._conn = psycopg.connect(self._url())
            self._conn.execute(CREATE_INCOMING)
            self._conn.commit()
        conn = self._conn
        try:
            with conn.cursor() as cur:
                for step in steps:
                    if step.name == "rows":
                        with cur.copy(COPY_INCOMING) as copy:
                            for row in step.rows:
                                copy.write_row(row)
                        cur.execute(INSERT_INCOMING)
                    else:
                        cur.executemany(self._sql(step), step.rows)
                    if step.name in COUNTED:
                        cur.execute(COUNT, [COUNTED[step.name], len(step.rows)])
            conn.commit()
        except BaseException:
            if not conn.closed:
                try:
                    conn.rollback()
                except psycopg.Error:  # the connection broke: the retry opens another
                    self._disconnect()
            raise

    def _disconnect(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _sql(self, step: Step) -> str:
        sql = self._compiled.get(step.key)
        if sql is None:
            sql = self._compiled[step.key] = str(step.compile(insert, self.engine.dialect))
        return sql

    def trainer_lease(self) -> TrainerLease:
        return AdvisoryLease(self._url())

    def _url(self) -> str:
        url = self.engine.url.set(drivername="postgresql")
        return url.render_as_string(hide_password=False)

    # -- reading -------------------------------------------------------------------------------

    @while_away
    def draw_version(self) -> int:
        """The next model's version number, unique among the processors sharing the database
        (tables.model_version)."""
        with self.engine.begin() as conn:
            return conn.execute(model_version.next_value()).scalar_one()

    def group_counts(self) -> GroupCounts:
        """How many events the processors sharing the database stored and labels they learned
        (tables.SEQUENCES; a little more after a write that was tried again): two sequence
        reads, not counts."""
        with self.engine.connect() as conn:
            return GroupCounts(*conn.exec_driver_sql(GROUP_COUNTS).one())

    def _by_ids(self, sql: str, ids: list[str], **more) -> list:
        with self.engine.connect() as conn:
            return conn.exec_driver_sql(sql, {"ids": ids, **more}).all()

    def close(self) -> None:
        try:
            self.wait()
        finally:
            self._executor.submit(self._disconnect).result()
            self._executor.shutdown()
            super().close()


class AdvisoryLease:
    """The trainer's lease on PostgreSQL: an advisory lock (``pg_try_advisory_lock``) held by a
    session of its own. One session at a time holds it, and the server releases it when that
    session ends, as it does when its processor is killed: another processor takes it at its
    next :meth:`held`. A processor that loses its connection loses the lease with it."""

    def __init__(self, url: str):
        self._url = url
        self._conn: psycopg.Connection | None = None
        self._held = False

    def held(self) -> bool:
        try:
            if self._conn is None or self._conn.closed:
                self._held = False
                self._conn = psycopg.connect(self._url, autocommit=True, connect_timeout=5)
            if self._held:  # held while the session lives
                self._conn.execute("select 1")
            else:
                lock = self._conn.execute("select pg_try_advisory_lock(%s)", [TRAINER_LOCK])
                self._held = lock.fetchone()[0]
        except psycopg.OperationalError as exc:
            if self._held:
                log.warning("the trainer's lease is lost with its connection (%s)", exc)
            self.close()
        return self._held

    def close(self) -> None:
        self._held = False
        if self._conn is not None:
            self._conn.close()
            self._conn = None
