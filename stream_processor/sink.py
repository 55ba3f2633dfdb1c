"""Writing batch results to the database, and reading back what a restart needs.

Every :class:`BatchResult` is written in one transaction. Inserts ignore rows whose key already
exists, so a replayed event never makes a second row. Only SQLAlchemy Core and parameterised
statements; the dialect's own "insert ... on conflict do nothing" is chosen at start-up.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import contextmanager
from operator import itemgetter

import numpy as np
import orjson
from sqlalchemy import bindparam, delete, func, select, update
from sqlalchemy.exc import OperationalError

from fraudstream.schema import Transaction, decode, parse_timestamp
from fraudstream.tables import (
    SQLITE_BUSY_TIMEOUT_MS,
    OutdatedDatabase,
    dead_letters,
    labels,
    make_engine,
    model_versions,
    pending_events,
    transactions,
)
from stream_processor.core import (
    ROW_COLUMNS,
    BatchResult,
    HeldEvent,
    LabelledEvent,
    alert_payload,
)
from stream_processor.features import ANOMALY_FEATURE_NAMES, SUPERVISED_FEATURE_NAMES
from stream_processor.labels import Label
from stream_processor.model import LOAD_ANOMALY, LOAD_SUPERVISED, FittedModel, SupervisedModel
from stream_processor.refit import call

log = logging.getLogger(__name__)

CHUNK = 500  # ids per IN (...) list, far below every dialect's parameter limit
# One statement for a whole batch (about 10x faster than SQLAlchemy IN lists of 500): each id
# of the JSON array looked up in the two tables' keys. A join, not ``in (select value from
# json_each(?1))``, which sorts the ids into a temporary index first (a timeit of 1,000 ids on
# a database of 60,000 rows: 0.24 ms, the ``in`` lists 0.78); CROSS JOIN keeps the ids the
# outer loop whatever SQLite's statistics say.
KNOWN_IDS_SQLITE = (
    "select t.transaction_id from json_each(?1) j cross join transactions t"
    " on t.transaction_id = j.value"
    " union all "
    "select p.transaction_id from json_each(?1) j cross join pending_events p"
    " on p.transaction_id = j.value"
)


ACCOUNT_HISTORY_SQLITE = (
    "select transaction_id, account_id, amount, merchant, location, timestamp from ("
    " select transaction_id, account_id, amount, merchant, location, timestamp,"
    " row_number() over (partition by account_id order by timestamp desc, rowid desc) as rn,"
    " rowid as stored"
    " from transactions where account_id in (select value from json_each(?1))"
    ") where rn <= ?2 order by timestamp, stored"
)  # the accounts' newest events through ix_transactions_account_time, one statement a batch


class SinkError(RuntimeError):
    """The database cannot be written: the processor must stop rather than lose events."""


class WalCheckpointer:
    """SQLite's write-ahead-log checkpoints, off the batch path.

    By default SQLite copies the log back into the database file inside the commit that takes the
    log past 1,000 pages (``python -m benchmarks.stages``: the SQLite write 18.7 -> 12.3 us per
    event with this thread). The sink's connections turn that off and this thread runs the
    checkpoints on its own connection, after every ``every_writes`` batches or ``every_s`` seconds
    with writes. Python's sqlite3 releases the GIL while SQLite works, so the next batch is decoded
    and scored meanwhile; its write waits for the checkpoint to end (:attr:`lock`). That wait keeps
    the log bounded: SQLite rewinds the log only when a write begins after a checkpoint that copied
    all of it, and a writer that never paused would keep it growing. A reader on an old snapshot (a
    dbt build) delays only the part it still needs, as before. Safe at any moment: a checkpoint
    interrupted by a crash is redone from the log when the database is next opened."""

    def __init__(self, path: str, every_writes: int = 8, every_s: float = 1.0):
        self.path = path
        self.every_writes = every_writes
        self.every_s = every_s
        self.checkpoints = 0
        self._writes = 0
        self.lock = threading.Lock()  # held by a checkpoint; a write waits for it
        self._due = threading.Event()
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="wal-checkpoint", daemon=True)
        self._thread.start()

    def wrote(self) -> None:
        """A batch was committed (called from the batch thread)."""
        self._writes += 1
        if self._writes >= self.every_writes:
            self._due.set()

    def _run(self) -> None:
        try:
            conn = sqlite3.connect(self.path, timeout=SQLITE_BUSY_TIMEOUT_MS / 1000)
        except sqlite3.Error:  # the writes go on; only the log grows until a restart
            log.error("cannot open %s for WAL checkpoints", self.path, exc_info=True)
            return
        try:
            while not self._stop:
                self._due.wait(self.every_s)
                self._due.clear()
                if self._writes:
                    self._checkpoint(conn)
            self._checkpoint(conn)
        finally:
            conn.close()

    def _checkpoint(self, conn: sqlite3.Connection) -> None:
        self._writes = 0
        try:
            with self.lock:
                conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
            self.checkpoints += 1
        except sqlite3.Error:  # busy or locked: the next round catches up
            log.warning("WAL checkpoint failed; retrying with the next batches", exc_info=True)

    def close(self) -> None:
        self._stop = True
        self._due.set()
        self._thread.join(timeout=60)


class Sink:
    """The processor's database. ``writer_process=True`` (SQLite only): the writes run in a
    child process (:mod:`stream_processor.writer`) and :meth:`submit` returns before they are
    committed; :meth:`wait` for them."""

    def __init__(self, database_url: str, *, writer_process: bool = False):
        try:
            self.engine = make_engine(database_url, auto_checkpoint=False)
        except OperationalError as exc:
            raise SinkError(f"cannot open the database {database_url}: {exc.orig}") from exc
        except OutdatedDatabase as exc:
            raise SinkError(str(exc)) from exc
        name = self.engine.dialect.name
        if name == "sqlite":
            from sqlalchemy.dialects.sqlite import insert
        elif name == "postgresql":
            from sqlalchemy.dialects.postgresql import insert
        else:
            raise SinkError(f"unsupported database {name!r}: use SQLite or PostgreSQL")
        self._insert = insert
        # SQLite: every statement compiled once and run through the driver's executemany with
        # tuples (a third of the write time of the same statement from dicts): here, or in the
        # writer process.
        self._sqlite = name == "sqlite"
        self._compiled: dict = {}
        on_disk = self._sqlite and self.engine.url.database not in (None, "", ":memory:")
        self.writer = None
        self.checkpointer = None
        if writer_process and on_disk:
            from stream_processor.writer import WriterError, WriterProcess

            try:
                self.writer = WriterProcess(self.engine.url.database, SQLITE_BUSY_TIMEOUT_MS)
            except (WriterError, OSError) as exc:
                raise SinkError(f"cannot start the SQLite writer process: {exc}") from exc
        elif on_disk:
            self.checkpointer = WalCheckpointer(self.engine.url.database)

    @contextmanager
    def _writing(self):
        """A write transaction, after any checkpoint in progress (:class:`WalCheckpointer`)."""
        if self.checkpointer is None:
            yield
            return
        with self.checkpointer.lock:
            yield
        self.checkpointer.wrote()

    def _insert_ignore(self, table, keys: Sequence[str]):
        return self._insert(table).on_conflict_do_nothing(index_elements=list(keys))

    # -- writing -------------------------------------------------------------------------------

    def write(self, result: BatchResult, published: Mapping[str, float] | None = None) -> None:
        """Everything in ``result``, in one transaction (retried while the database is locked),
        with the delivery of earlier alerts (``published``: transaction id -> epoch s)."""
        self.submit(result, published)
        self.wait()

    def submit(self, result: BatchResult, published: Mapping[str, float] | None = None) -> None:
        """Start :meth:`write`: committed when :meth:`wait` returns (at once without a writer
        process). One write at a time: a write still in flight is waited for first."""
        if not result and not published:
            return
        if self.writer is not None:
            self.wait()
            self.writer.submit(self.statements(result, published))
            return
        with self._writing():
            self._retrying(lambda: self._write(result, published))

    def wait(self) -> None:
        """Until the write submitted last is committed; :class:`SinkError` if it failed."""
        if self.writer is not None and self.writer.in_flight:
            from stream_processor.writer import WriterError

            try:
                self.writer.wait()
            except WriterError as exc:
                raise SinkError(str(exc)) from exc

    @property
    def in_flight(self) -> bool:
        return self.writer is not None and self.writer.in_flight

    def _plan(self, result: BatchResult, published: Mapping[str, float] | None) -> list:
        """The write of ``result`` and ``published``, in the order one transaction runs it:
        (key, statement builder, parameter dicts, or None for a statement without any)."""
        plan: list = []
        if published:
            rows = [{"tid": t, "delivered_at": at} for t, at in published.items()]
            plan.append(("published", self._published_statement, rows))
        for key, rows in (
            ("models", [_model_row(m) for m in result.models]),
            ("pending_add", result.pending_add),
        ):
            if rows:
                plan.append(self._insert_step(key, rows))
        if result.row_values:
            # SQLite: the row tuples as they are (_compile); SQLAlchemy's executemany: dicts
            rows = result.row_values if self._sqlite else result.rows
            table, conflict = self._INSERTS["rows"]
            build = lambda: self._insert_ignore(table, conflict)  # noqa: E731
            plan.append((("rows", ROW_COLUMNS), build, rows))
        if result.pending_clear:
            plan.append(("pending_clear", lambda: delete(pending_events), None))
        if result.labels:
            plan.append(self._insert_step("labels", result.labels))
        if result.labels_released:
            rows = [{"tid": t, "learned_value": v} for t, v in result.labels_released.items()]
            plan.append(("labels_released", self._released_statement, rows))
        if result.dead_letters:
            plan.append(self._insert_step("dead_letters", result.dead_letters))
        return plan

    _INSERTS = {
        "models": (model_versions, ["version"]),
        "pending_add": (pending_events, ["transaction_id"]),
        "rows": (transactions, ["transaction_id"]),
        "labels": (labels, ["transaction_id"]),
        "dead_letters": (dead_letters, ["source_topic", "source_partition", "source_offset"]),
    }

    def _insert_step(self, key: str, rows: list[dict]):
        table, conflict = self._INSERTS[key]
        # Keyed by the columns too: every row of a list has the same keys.
        return (key, tuple(rows[0])), lambda: self._insert_ignore(table, conflict), rows

    def statements(
        self, result: BatchResult, published: Mapping[str, float] | None = None
    ) -> list[tuple[str, list[tuple]]]:
        """SQLite: the write of ``result`` and ``published`` as (SQL, parameter tuples) pairs,
        in the order one transaction runs them."""
        return self._compile(self._plan(result, published))

    def _compile(self, plan: list) -> list[tuple[str, list[tuple]]]:
        out = []
        for key, build, rows in plan:
            columns = list(key[1]) if isinstance(key, tuple) else None
            sql, values = self._statement(key, build, columns)
            if key == ("rows", ROW_COLUMNS):
                out.append((sql, rows))  # tuples in the statement's order (_statement checks)
                continue
            out.append((sql, [()] if rows is None else list(map(values, rows))))
        return out

    def _statement(self, key, build, column_keys: list[str] | None = None):
        """(SQL, dict -> parameter tuple) of a statement, compiled once."""
        found = self._compiled.get(key)
        if found is None:
            from sqlalchemy.dialects import sqlite

            compiled = build().compile(dialect=sqlite.dialect(), column_keys=column_keys)
            names = compiled.positiontup or ()
            if key == ("rows", ROW_COLUMNS) and tuple(names) != ROW_COLUMNS:
                raise SinkError(f"the insert's parameters {names} are not ROW_COLUMNS' order")
            if len(names) > 1:
                values = itemgetter(*names)
            else:
                values = lambda row: tuple(row[n] for n in names)  # noqa: E731
            found = self._compiled[key] = (str(compiled), values)
        return found

    @staticmethod
    def _published_statement():
        return (
            update(transactions)
            .where(transactions.c.transaction_id == bindparam("tid"))
            .values(alert_published_at=bindparam("delivered_at"))
        )

    @staticmethod
    def _released_statement():
        # Only the first label of an id is stored; a later duplicate updates nothing new.
        return (
            update(labels)
            .where(labels.c.transaction_id == bindparam("tid"), labels.c.learned.is_(None))
            .values(learned=bindparam("learned_value"))
        )

    def _write(self, result: BatchResult, published: Mapping[str, float] | None) -> None:
        plan = self._plan(result, published)
        # SQLite: compiled once, tuples through the driver's executemany
        compiled = self._compile(plan) if self._sqlite else [None] * len(plan)
        with self.engine.begin() as conn:
            for (key, build, rows), compiled_step in zip(plan, compiled, strict=True):
                started = time.perf_counter()
                if compiled_step is not None:
                    conn.exec_driver_sql(*compiled_step)
                elif rows is None:
                    conn.execute(build())
                else:
                    conn.execute(build(), rows)
                if (key[0] if isinstance(key, tuple) else key) == "models":
                    result.refit_s += time.perf_counter() - started  # recording a refit

    def mark_published(self, published: Mapping[str, float] | Iterable[str]) -> None:
        """Record that these alerts were delivered to the alerts topic (transaction id ->
        epoch s of the delivery; ids alone: now), in a transaction of its own (a runtime
        usually hands them to the next :meth:`write` instead)."""
        if not isinstance(published, Mapping):
            published = dict.fromkeys(published, time.time())

        self.write(BatchResult(), published)

    def _retrying(self, work, attempts: int = 10) -> None:
        # The busy timeout already waits 30 s per statement; this outlasts longer locks.
        for attempt in range(1, attempts + 1):
            try:
                return work()
            except OperationalError as exc:
                text = str(exc.orig).lower()
                if "locked" in text or "busy" in text:
                    log.warning("database locked (attempt %d/%d); retrying", attempt, attempts)
                    time.sleep(min(2.0, 0.1 * 2**attempt))
                    continue
                raise SinkError(f"cannot write to the database: {exc.orig}") from exc
        raise SinkError(f"database still locked after {attempts} attempts")

    # -- reading -------------------------------------------------------------------------------

    def known_ids(self, ids: list[str]) -> set[str]:
        """Which of ``ids`` are already stored or held for the first fit."""
        found: set[str] = set()
        with self.engine.connect() as conn:
            if self.engine.dialect.name == "sqlite":  # the ids as one JSON array parameter
                rows = conn.exec_driver_sql(KNOWN_IDS_SQLITE, (orjson.dumps(ids).decode(),))
                return {tid for (tid,) in rows}
            for chunk in _chunks(ids):
                for table in (transactions, pending_events):
                    q = select(table.c.transaction_id).where(table.c.transaction_id.in_(chunk))
                    found.update(conn.execute(q).scalars())
        return found

    def unpublished_alerts(self, ids: list[str]) -> list[dict]:
        """Alerts of stored flagged rows among ``ids`` that never reached the alerts topic."""
        out = []
        with self.engine.connect() as conn:
            for chunk in _chunks(ids):
                q = select(transactions).where(
                    transactions.c.transaction_id.in_(chunk),
                    transactions.c.is_flagged == 1,
                    transactions.c.alert_published_at.is_(None),
                )
                out.extend(alert_payload(dict(r._mapping)) for r in conn.execute(q))
        return out

    def _latest(self, kind: str, names_expected: tuple[str, ...]):
        with self.engine.connect() as conn:
            row = conn.execute(
                select(model_versions)
                .where(model_versions.c.kind == kind)
                .order_by(model_versions.c.version.desc())
                .limit(1)
            ).first()
        if row is None:
            return None
        names = tuple(json.loads(row.feature_names))
        if names != names_expected:
            log.warning(
                "saved %s v%s has other features %s; fitting anew", kind, row.version, names
            )
            return None
        return row._mapping

    def latest_supervised(self, run: Callable = call) -> SupervisedModel | None:
        """The newest saved supervised model; ``run(name, *args, **kwargs)`` runs the loader
        where scikit-learn is (the refit worker's ``RefitRunner.run``)."""
        m = self._latest("supervised", SUPERVISED_FEATURE_NAMES)
        if m is None:
            return None
        return run(
            LOAD_SUPERVISED,
            m["model"],
            version=m["version"],
            threshold=m["threshold"],
            fitted_at=m["fitted_at"],
            training_rows=m["training_rows"],
            frauds=m["training_frauds"] or 0,
            fit_seconds=m["fit_seconds"],
            reason=m["reason"],
        )

    def label_history(self, limit: int):
        """The newest ``limit`` learned labels with the features their events were scored with,
        oldest first: (LabelledEvent, Label) pairs that rebuild the label state after a restart."""
        t, lb = transactions, labels
        inner = (
            select(t.c.merchant, t.c.account_id, t.c.features, t.c.score, lb.c.transaction_id,
                   lb.c.is_fraud, lb.c.labelled_at)
            .join(lb, lb.c.transaction_id == t.c.transaction_id)
            .where(lb.c.learned == 1)
            .order_by(lb.c.labelled_at.desc())
            .limit(limit)
            .subquery()
        )  # fmt: skip
        with self.engine.connect() as conn:
            rows = conn.execute(select(inner).order_by(inner.c.labelled_at)).all()
        for r in rows:
            label = Label(r.transaction_id, r.is_fraud, parse_timestamp(r.labelled_at))
            yield LabelledEvent(r.merchant, r.account_id, _vector(r.features, r.score)), label

    def lookup_events(self, ids: list[str]) -> dict[str, LabelledEvent | None]:
        """Stored events among ``ids``, as the supervised model learns from them; None for an
        event whose label was learned already (a repeated label teaches nothing)."""
        t, lb = transactions, labels
        out: dict[str, LabelledEvent | None] = {}
        with self.engine.connect() as conn:
            for chunk in _chunks(ids):
                q = (
                    select(t.c.transaction_id, t.c.merchant, t.c.account_id, t.c.features,
                           t.c.score, lb.c.learned)
                    .outerjoin(lb, lb.c.transaction_id == t.c.transaction_id)
                    .where(t.c.transaction_id.in_(chunk))
                )  # fmt: skip
                for r in conn.execute(q):
                    out[r.transaction_id] = (
                        None
                        if r.learned == 1
                        else LabelledEvent(r.merchant, r.account_id, _vector(r.features, r.score))
                    )
        return out

    def queued_labels(self, limit: int):
        """The newest ``limit`` labels not learned yet, to queue again after a restart."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(labels.c.transaction_id, labels.c.is_fraud, labels.c.labelled_at)
                .where(labels.c.learned.is_(None))
                .order_by(labels.c.labelled_at.desc())
                .limit(limit)
            ).all()
        return [Label(r.transaction_id, r.is_fraud, parse_timestamp(r.labelled_at)) for r in rows]

    def latest_model(self, run: Callable = call) -> FittedModel | None:
        """The newest saved anomaly model, loaded by ``run`` as :meth:`latest_supervised`."""
        m = self._latest("isolation_forest", ANOMALY_FEATURE_NAMES)
        if m is None:
            return None
        return run(
            LOAD_ANOMALY,
            m["model"],
            version=m["version"],
            threshold=m["threshold"],
            flag_quantile=m["flag_quantile"],
            fitted_at=m["fitted_at"],
            training_rows=m["training_rows"],
            fit_seconds=m["fit_seconds"],
            reason=m["reason"],
        )

    def next_version(self) -> int:
        with self.engine.connect() as conn:
            return (conn.execute(select(func.max(model_versions.c.version))).scalar() or 0) + 1

    def held_events(self) -> list[HeldEvent]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(pending_events).order_by(pending_events.c.seq)).all()
        return [
            HeldEvent(decode(r.event.encode()), r.kafka_partition, r.kafka_offset, r.produced_at)
            for r in rows
        ]

    def recent_history(
        self,
        per_account: int,
        account_ids: list[str] | None = None,
        accounts: int | None = None,
    ):
        """The newest ``per_account`` transactions of each account, oldest first: of
        ``account_ids`` only when given, else of the ``accounts`` most recently active
        accounts (all when None)."""
        t = transactions
        rn = (
            func.row_number()
            .over(partition_by=t.c.account_id, order_by=t.c.timestamp.desc())
            .label("rn")
        )
        cols = [t.c[c] for c in ("account_id", "amount", "merchant", "location")]
        inner = select(t.c.transaction_id, t.c.timestamp, *cols, rn)
        if account_ids is not None:
            inner = inner.where(t.c.account_id.in_(account_ids))
        elif accounts is not None:
            recent = (
                select(t.c.account_id)
                .group_by(t.c.account_id)
                .order_by(func.max(t.c.timestamp).desc())
                .limit(accounts)
            )
            inner = inner.where(t.c.account_id.in_(recent.scalar_subquery()))
        inner = inner.subquery()
        q = select(inner).where(inner.c.rn <= per_account).order_by(inner.c.timestamp)
        with self.engine.connect() as conn:
            for r in conn.execute(q):
                yield _history_event(
                    r.transaction_id, r.account_id, r.amount, r.merchant, r.location, r.timestamp
                )

    def account_count(self) -> int:
        """Distinct accounts with stored transactions."""
        with self.engine.connect() as conn:
            return conn.execute(
                select(func.count(func.distinct(transactions.c.account_id)))
            ).scalar()

    def account_history(self, account_ids: list[str], per_account: int) -> list[Transaction]:
        """The newest ``per_account`` stored transactions of each of ``account_ids``, oldest
        first: what rebuilds an account evicted from memory when it comes back."""
        if not account_ids:
            return []
        if self.engine.dialect.name != "sqlite":
            return [
                txn
                for chunk in _chunks(account_ids)
                for txn in self.recent_history(per_account, chunk)
            ]
        with self.engine.connect() as conn:
            rows = conn.exec_driver_sql(
                ACCOUNT_HISTORY_SQLITE, (json.dumps(account_ids), per_account)
            ).all()
        return [_history_event(*r) for r in rows]

    def close(self) -> None:
        if self.checkpointer is not None:
            self.checkpointer.close()
        if self.writer is not None:
            self.writer.close()  # a write in flight is finished first
        self.engine.dispose()


def _history_event(transaction_id, account_id, amount, merchant, location, timestamp):
    return Transaction(
        transaction_id=transaction_id,
        account_id=account_id,
        amount=amount,
        merchant=merchant,
        timestamp=parse_timestamp(timestamp),
        location=location,
    )


def _model_row(m: FittedModel | SupervisedModel) -> dict:
    supervised = isinstance(m, SupervisedModel)
    names = SUPERVISED_FEATURE_NAMES if supervised else ANOMALY_FEATURE_NAMES
    return {
        "version": m.version,
        "kind": m.kind,
        "fitted_at": m.fitted_at,
        "reason": m.reason,
        "training_rows": m.training_rows,
        "training_frauds": m.frauds if supervised else None,
        "threshold": m.threshold,
        "flag_quantile": m.flag_quantile,
        "fit_seconds": m.fit_seconds,
        "feature_names": json.dumps(list(names)),
        "model": m.dumps(),
    }


def _vector(features_json: str, score: float) -> np.ndarray:
    """A stored row's model inputs back as the vector the supervised model learns from."""
    values = json.loads(features_json)
    values["anomaly_score"] = score
    return np.array([float(values.get(name, 0.0)) for name in SUPERVISED_FEATURE_NAMES])


def _chunks(items: list, size: int = CHUNK):
    for i in range(0, len(items), size):
        yield items[i : i + size]
