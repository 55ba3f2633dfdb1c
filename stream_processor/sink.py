"""The processor's database: one interface (:class:`Sink`), two implementations
(:mod:`~stream_processor.sqlite_sink`, :mod:`~stream_processor.postgres_sink`).

Inserts ignore rows whose key already exists, so a replayed event never makes a second row.
Only SQLAlchemy Core and parameterised statements.
"""

from __future__ import annotations

import functools
import json
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import NamedTuple, Protocol

import numpy as np
import orjson
from sqlalchemy import Engine, bindparam, delete, func, select, update
from sqlalchemy.exc import OperationalError

from fraudstream.retry import retry
from fraudstream.schema import Transaction, decode, parse_timestamp
from fraudstream.tables import (
    OutdatedDatabase,
    UnsupportedDatabase,
    dead_letters,
    labels,
    make_engine,
    model_versions,
    pending_events,
    shown_url,
    transactions,
)
from stream_processor.core import (
    ROW_COLUMNS,
    BatchResult,
    HeldEvent,
    LabelledEvent,
    TransactionRow,
    alert_payload,
)
from stream_processor.features import ANOMALY_FEATURE_NAMES, SUPERVISED_FEATURE_NAMES
from stream_processor.labels import Label
from stream_processor.model import LOAD_ANOMALY, LOAD_SUPERVISED, FittedModel, SupervisedModel
from stream_processor.refit import call

log = logging.getLogger(__name__)

CHUNK = 500  # ids per IN (...) list, far below every dialect's parameter limit
# A model's attributes kept in the model_versions columns of the same names.
_MODEL_FIELDS = ("version", "threshold", "flag_quantile", "fitted_at", "training_rows",
                 "fit_seconds", "reason")  # fmt: skip
# The columns of a stored transaction that rebuild it as an event: a Transaction's fields, all
# that the reads of history select (_history_event passes them on by name).
_HISTORY_COLUMNS = ("transaction_id", "account_id", "amount", "merchant", "timestamp", "location")


OUTAGE_ATTEMPTS = 35
"""Tries of a read or a write while a shared database (PostgreSQL) cannot be reached, the waits
doubling to 2 s: about a minute, what a server restart or a fail-over takes; then the processor
stops (FATAL) and a restart resumes where it was."""


def while_away(read: Callable) -> Callable:
    """A read tried again while a shared database cannot be reached (a SQLite file is never
    away: its errors are raised at once)."""

    @functools.wraps(read)
    def tried(self, *args, **kwargs):
        if not self.SHARED:
            return read(self, *args, **kwargs)
        return retry(lambda: read(self, *args, **kwargs), attempts=OUTAGE_ATTEMPTS,
                     transient=lambda exc: isinstance(exc, OperationalError),
                     on_retry=_log_away)  # fmt: skip

    return tried


def _log_away(exc: BaseException, attempt: int) -> None:
    log.warning("the database cannot be read (%s; attempt %d); waiting", exc, attempt)


class SinkError(RuntimeError):
    """The database cannot be written: the processor must stop rather than lose events."""


class GroupCounts(NamedTuple):
    """What every processor sharing a database has stored so far: the trainer's refit counts."""

    scored: int  # events stored
    learned: int  # labels learned


def open_sink(database_url: str) -> Sink:
    """The sink of ``database_url``, its tables created; :class:`SinkError` if it cannot."""
    try:
        engine = make_engine(database_url, auto_checkpoint=False)
    except OperationalError as exc:
        raise SinkError(f"cannot open the database {shown_url(database_url)}: {exc.orig}") from exc
    except (OutdatedDatabase, UnsupportedDatabase) as exc:
        raise SinkError(str(exc)) from exc
    if engine.dialect.name == "sqlite":
        from stream_processor.sqlite_sink import SqliteSink

        return SqliteSink(engine)
    from stream_processor.postgres_sink import PostgresSink

    return PostgresSink(engine)


class Sink:
    """What every sink does; :func:`open_sink` makes one. Writes: :meth:`submit` a batch's
    result, then :meth:`wait` until it is committed, in one transaction (one write in flight at
    a time, so the next batch is scored meanwhile; a failed one raises :class:`SinkError`
    there). Reads: the queries below, what a restart needs."""

    SHARED = False
    """Whether several processors may share the database (PostgreSQL; a SQLite file is one
    processor's): then partitions move between them, and one of them fits the models."""
    # Each dialect's one-statement-a-batch reads, run by its _by_ids.
    KNOWN_IDS: str  # which of the ids are stored or held
    ACCOUNT_HISTORY: str  # the newest n stored transactions of each account

    def __init__(self, engine: Engine):
        self.engine = engine

    # -- writing -------------------------------------------------------------------------------

    def submit(self, result: BatchResult, published: Mapping[str, float] | None = None) -> None:
        """Start writing ``result`` and recording ``published`` (earlier alerts delivered:
        transaction id -> epoch s) in one transaction, after waiting for the write in flight."""
        if result or published:
            self.wait()
            self._start(write_plan(result, published))

    def _start(self, steps: list[Step]) -> None:
        """Start running ``steps`` in one transaction, beside the batch path."""
        raise NotImplementedError

    def wait(self) -> None:
        """Until the write submitted last is committed; :class:`SinkError` if it failed."""
        raise NotImplementedError

    @property
    def in_flight(self) -> bool:
        """A write was submitted and not waited for."""
        raise NotImplementedError

    def write(self, result: BatchResult, published: Mapping[str, float] | None = None) -> None:
        self.submit(result, published)
        self.wait()

    def mark_published(self, published: Mapping[str, float] | Iterable[str]) -> None:
        """Record that these alerts were delivered to the alerts topic (transaction id ->
        epoch s of the delivery; ids alone: now), in a transaction of its own (a runtime
        usually hands them to the next :meth:`write` instead)."""
        if not isinstance(published, Mapping):
            published = dict.fromkeys(published, time.time())
        self.write(BatchResult(), published)

    # -- reading -------------------------------------------------------------------------------

    @while_away
    def known_ids(self, ids: list[str]) -> set[str]:
        """Which of ``ids`` are already stored or held for the first fit."""
        return {tid for (tid,) in self._by_ids(self.KNOWN_IDS, ids)}

    @while_away
    def account_history(self, account_ids: list[str], per_account: int) -> list[Transaction]:
        """The newest ``per_account`` stored transactions of each of ``account_ids``, oldest
        first: what rebuilds an account evicted from memory when it comes back."""
        if not account_ids:
            return []
        rows = self._by_ids(self.ACCOUNT_HISTORY, account_ids, n=per_account)
        return [_history_event(r) for r in rows]

    def _by_ids(self, sql: str, ids: list[str], **more) -> list:
        """The rows of ``sql``, the dialect's ``KNOWN_IDS`` or ``ACCOUNT_HISTORY`` (one statement
        a batch), given ``ids`` as one parameter and then ``more``."""
        raise NotImplementedError

    @while_away
    def dead_lettered(self, topic: str, partition: int, offsets: list[int]) -> set[int]:
        """Which of ``offsets`` (of ``topic``'s ``partition``) are in ``dead_letters``."""
        d = dead_letters
        query = select(d.c.source_offset).where(
            d.c.source_topic == topic, d.c.source_partition == partition
        )  # fmt: skip
        with self.engine.connect() as conn:
            return {offset for chunk in _chunks(offsets)
                    for (offset,) in conn.execute(query.where(d.c.source_offset.in_(chunk)))}  # fmt: skip

    @while_away
    def unpublished_alerts(self, ids: list[str] | None = None) -> list[dict]:
        """Alerts of stored flagged rows (among ``ids``; None: all) whose delivery to the alerts
        topic was never recorded."""
        t = transactions
        undelivered = select(t).where(t.c.is_flagged == 1, t.c.alert_published_at.is_(None))
        queries = [undelivered]
        if ids is not None:
            queries = [undelivered.where(t.c.transaction_id.in_(chunk)) for chunk in _chunks(ids)]
        with self.engine.connect() as conn:
            rows = [r for q in queries for r in conn.execute(q)]
        return [alert_payload(TransactionRow(**r._mapping)) for r in rows]

    def latest_model(self, run: Callable = call) -> FittedModel | None:
        """The newest saved anomaly model; ``run(name, *args, **kwargs)`` runs the loader where
        scikit-learn is (the refit worker's ``RefitRunner.run``)."""
        return self._latest("isolation_forest", ANOMALY_FEATURE_NAMES, LOAD_ANOMALY, run)

    def latest_supervised(self, run: Callable = call) -> SupervisedModel | None:
        """The newest saved supervised model, loaded by ``run`` as :meth:`latest_model`."""
        return self._latest("supervised", SUPERVISED_FEATURE_NAMES, LOAD_SUPERVISED, run)

    def _latest(self, kind: str, names_expected: tuple[str, ...], loader: str, run: Callable):
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
        fields = {c: row._mapping[c] for c in _MODEL_FIELDS}
        if kind == "supervised":
            fields["frauds"] = row.training_frauds or 0
        return run(loader, row.model, **fields)

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
            yield _labelled(r), Label(r.transaction_id, r.is_fraud, parse_timestamp(r.labelled_at))

    @while_away
    def lookup_events(self, ids: list[str]) -> dict[str, LabelledEvent | None]:
        """Stored events among ``ids``, as the supervised model learns from them; None for an
        event whose label was learned already (a repeated label teaches nothing)."""
        t, lb = transactions, labels
        stored = (
            select(t.c.transaction_id, t.c.merchant, t.c.account_id, t.c.features, t.c.score,
                   lb.c.learned)
            .outerjoin(lb, lb.c.transaction_id == t.c.transaction_id)
        )  # fmt: skip
        queries = [stored.where(t.c.transaction_id.in_(chunk)) for chunk in _chunks(ids)]
        with self.engine.connect() as conn:
            rows = [r for q in queries for r in conn.execute(q)]
        return {r.transaction_id: None if r.learned == 1 else _labelled(r) for r in rows}

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

    def newest_versions(self) -> dict[str, int]:
        """The newest recorded version of each kind of model (``isolation_forest``,
        ``supervised``): what another processor's trainer may have recorded."""
        m = model_versions
        with self.engine.connect() as conn:
            rows = conn.execute(select(m.c.kind, func.max(m.c.version)).group_by(m.c.kind)).all()
        return dict(rows)

    def trainer_lease(self) -> TrainerLease:
        """Whether this processor fits the models (see :class:`TrainerLease`)."""
        return SoleTrainer()

    def group_counts(self) -> GroupCounts:
        """How many events the processors sharing the database stored and labels they learned
        (SHARED sinks only: one processor counts its own)."""
        raise NotImplementedError

    def next_version(self) -> int:
        with self.engine.connect() as conn:
            return (conn.execute(select(func.max(model_versions.c.version))).scalar() or 0) + 1

    @while_away
    def held_events(self, partitions: list[int] | None = None) -> list[HeldEvent]:
        """The events held for the first fit (of ``partitions`` when given), in the order their
        processor consumed them."""
        p = pending_events
        held = select(p).order_by(p.c.seq, p.c.kafka_partition, p.c.kafka_offset)
        if partitions is not None:
            held = held.where(p.c.kafka_partition.in_(partitions))
        with self.engine.connect() as conn:
            rows = conn.execute(held).all()
        return [
            HeldEvent(decode(r.event.encode()), r.kafka_partition, r.kafka_offset, r.produced_at)
            for r in rows
        ]

    def recent_history(
        self, per_account: int, accounts: int | None = None, partitions: list[int] | None = None
    ):
        """The newest ``per_account`` transactions of each of the ``accounts`` most recently
        active accounts (all when None), oldest first; only those consumed from ``partitions``
        of the transactions topic when given (an account's events all come from one)."""
        t = transactions
        # Events of one time in the order they were consumed: one account's events come from
        # one partition, in offset order.
        rn = (
            func.row_number()
            .over(partition_by=t.c.account_id,
                  order_by=[t.c.timestamp.desc(), t.c.kafka_offset.desc()])
            .label("rn")
        )  # fmt: skip
        inner = select(*(t.c[c] for c in _HISTORY_COLUMNS), t.c.kafka_offset, rn)
        if accounts is not None:
            recent = (
                select(t.c.account_id)
                .where(*_in_partitions(partitions))
                .group_by(t.c.account_id)
                .order_by(func.max(t.c.timestamp).desc())
                .limit(accounts)
            )
            inner = inner.where(t.c.account_id.in_(recent.scalar_subquery()))
        inner = inner.where(*_in_partitions(partitions))
        inner = inner.subquery()
        q = (
            select(*(inner.c[c] for c in _HISTORY_COLUMNS))
            .where(inner.c.rn <= per_account)
            .order_by(inner.c.timestamp, inner.c.kafka_offset)
        )
        with self.engine.connect() as conn:
            for r in conn.execute(q):
                yield _history_event(r)

    @while_away
    def partition_history(self, per_account: int, accounts: int, partitions: list[int]):
        """:meth:`recent_history` of ``partitions``, read whole: what rebuilds the accounts of
        partitions a processor gained."""
        return list(self.recent_history(per_account, accounts, partitions))

    @while_away
    def account_count(self, partitions: list[int] | None = None) -> int:
        """Distinct accounts with stored transactions (of ``partitions`` when given)."""
        count = select(func.count(func.distinct(transactions.c.account_id))).where(
            *_in_partitions(partitions)
        )
        with self.engine.connect() as conn:
            return conn.execute(count).scalar()

    def close(self) -> None:
        self.engine.dispose()


class TrainerLease(Protocol):
    """One trainer fits the models for every processor of a database; the others take the
    versions it records. Whoever holds the lease is the trainer; a lease is released when its
    holder dies, and another processor takes it over at its next :meth:`held`."""

    def held(self) -> bool:
        """Whether this processor holds the lease now (taking it if it is free)."""
        ...

    def close(self) -> None: ...


class SoleTrainer:
    """The lease where one processor is all there is (SQLite): always held."""

    def held(self) -> bool:
        return True

    def close(self) -> None:
        pass


class SinkStore:
    """A sink as the scoring core's :class:`~stream_processor.core.EventStore`, also while a
    write is in flight: the ids being written (``in_flight_ids``) count as stored, and a read of
    stored events waits for the write first."""

    def __init__(self, sink: Sink, per_account: int):
        self.sink = sink
        self.per_account = per_account  # stored events that rebuild an account (ACCOUNT_HISTORY)
        self.in_flight_ids: frozenset[str] = frozenset()

    def known_ids(self, ids: list[str]) -> set[str]:
        return self.sink.known_ids(ids) | self.in_flight_ids.intersection(ids)

    def lookup_events(self, ids: list[str]) -> dict[str, LabelledEvent | None]:
        self.sink.wait()
        return self.sink.lookup_events(ids)

    def account_events(self, ids: list[str]) -> list[Transaction]:
        self.sink.wait()
        return self.sink.account_history(ids, self.per_account)


# -- the write of a batch, as steps both sinks run ---------------------------------------------


class Step:
    """One statement of a batch's write: its ``name`` (what :meth:`compile` builds) and its
    ``rows`` (parameter dicts; tuples in ROW_COLUMNS order for ``"rows"``). ``key`` names the
    statement for the sinks' caches of compiled SQL: the same name and columns, the same SQL."""

    __slots__ = ("name", "rows", "key")

    def __init__(self, name: str, rows: Sequence):
        self.name, self.rows = name, rows
        self.key = (name, ROW_COLUMNS if name == "rows" else tuple(rows[0]))

    def compile(self, insert, dialect):
        """The statement, SQLAlchemy Core from the dialect's ``insert``, compiled for it."""
        if self.name in _INSERTS:
            table, keys = _INSERTS[self.name]
            statement = insert(table).on_conflict_do_nothing(index_elements=keys)
        elif self.name == "published":
            statement = (
                update(transactions)
                .where(transactions.c.transaction_id == bindparam("tid"))
                .values(alert_published_at=bindparam("delivered_at"))
            )
        elif self.name == "labels_released":
            # Only the first label of an id is stored; a later duplicate updates nothing new.
            statement = (
                update(labels)
                .where(labels.c.transaction_id == bindparam("tid"), labels.c.learned.is_(None))
                .values(learned=bindparam("learned_value"))
            )
        else:  # "pending_clear": held events now scored (other processors may hold others)
            statement = delete(pending_events).where(
                pending_events.c.transaction_id == bindparam("tid")
            )
        return statement.compile(dialect=dialect, column_keys=list(self.key[1]) or None)


# Inserts that skip rows whose key is stored already: the table, and its key.
_INSERTS = {
    "models": (model_versions, ["version"]),
    "pending_add": (pending_events, ["transaction_id"]),
    "rows": (transactions, ["transaction_id"]),
    "labels": (labels, ["transaction_id"]),
    "dead_letters": (dead_letters, ["source_topic", "source_partition", "source_offset"]),
}


def write_plan(result: BatchResult, published: Mapping[str, float] | None) -> list[Step]:
    """The steps writing ``result`` and ``published``, in the order one transaction runs them."""
    released = result.labels_released.items()
    plan = {
        "published": [{"tid": t, "delivered_at": at} for t, at in (published or {}).items()],
        "models": [_model_row(m) for m in result.models],
        "pending_add": result.pending_add,
        "rows": result.rows,
        "pending_clear": [{"tid": t} for t in result.pending_clear],
        "labels": result.labels,
        "labels_released": [{"tid": t, "learned_value": v} for t, v in released],
        "dead_letters": result.dead_letters,
    }
    return [Step(name, rows) for name, rows in plan.items() if rows]


def _in_partitions(partitions: list[int] | None) -> list:
    """The condition selecting stored transactions of ``partitions`` (none: every one)."""
    return [] if partitions is None else [transactions.c.kafka_partition.in_(partitions)]


def _history_event(row) -> Transaction:
    return Transaction(**{**row._mapping, "timestamp": parse_timestamp(row.timestamp)})


def _model_row(m: FittedModel | SupervisedModel) -> dict:
    supervised = isinstance(m, SupervisedModel)
    names = SUPERVISED_FEATURE_NAMES if supervised else ANOMALY_FEATURE_NAMES
    return {
        **{c: getattr(m, c) for c in ("kind", *_MODEL_FIELDS)},
        "training_frauds": m.frauds if supervised else None,
        "feature_names": json.dumps(list(names)),
        "model": m.dumps(),
    }


def stored_labels(database_url: str, limit: int) -> tuple[np.ndarray, np.ndarray]:
    """The supervised inputs and labels of the newest ``limit`` learned labels (every
    processor's): what the trainer of a group fits on, read on a connection of its own."""
    engine = make_engine(database_url)
    try:
        pairs = list(Sink(engine).label_history(limit))
    finally:
        engine.dispose()
    features = np.array([event.features for event, _ in pairs])
    features = features.reshape(len(pairs), len(SUPERVISED_FEATURE_NAMES))
    return features, np.array([label.is_fraud for _, label in pairs], dtype=np.int8)


def stored_anomaly_inputs(database_url: str, limit: int) -> np.ndarray:
    """The anomaly model's inputs (ANOMALY_FEATURE_NAMES) of the newest ``limit`` stored events
    by event time (every processor's): what the trainer of a group refits the Isolation Forest
    on, read on a connection of its own."""
    t = transactions
    newest = select(t.c.features).order_by(t.c.timestamp.desc()).limit(limit)
    engine = make_engine(database_url)
    try:
        with engine.connect() as conn:
            stored = conn.execute(newest).scalars().all()
    finally:
        engine.dispose()
    # the features text is ours (core.features_json): orjson reads it in half json's time
    rows = [orjson.loads(text) for text in reversed(stored)]  # oldest first, as a window is
    names = ANOMALY_FEATURE_NAMES
    inputs = np.array([[row.get(name, 0.0) for name in names] for row in rows], dtype=float)
    return inputs.reshape(len(rows), len(names))


def _labelled(r) -> LabelledEvent:
    """A stored row as the supervised model learns from it: its model inputs as a vector."""
    values = orjson.loads(r.features)
    values["anomaly_score"] = r.score
    vector = np.array([float(values.get(name, 0.0)) for name in SUPERVISED_FEATURE_NAMES])
    return LabelledEvent(r.merchant, r.account_id, vector)


def _chunks(items: list):
    for i in range(0, len(items), CHUNK):
        yield items[i : i + CHUNK]
