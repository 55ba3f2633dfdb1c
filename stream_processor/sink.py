"""Writing batch results to the database, and reading back what a restart needs.

Every :class:`BatchResult` is written in one transaction. Inserts ignore rows whose key already
exists, so a replayed event never makes a second row. Only SQLAlchemy Core and parameterised
statements; the dialect's own "insert ... on conflict do nothing" is chosen at start-up.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable, Sequence

from sqlalchemy import delete, func, select, update
from sqlalchemy.exc import OperationalError

from fraudstream.schema import decode
from fraudstream.tables import (
    dead_letters,
    make_engine,
    model_versions,
    pending_events,
    transactions,
)
from stream_processor.core import BatchResult, HeldEvent, alert_payload
from stream_processor.features import FEATURE_NAMES
from stream_processor.model import FittedModel

log = logging.getLogger(__name__)

CHUNK = 500  # ids per IN (...) list, far below every dialect's parameter limit


class SinkError(RuntimeError):
    """The database cannot be written: the processor must stop rather than lose events."""


class Sink:
    def __init__(self, database_url: str):
        try:
            self.engine = make_engine(database_url)
        except OperationalError as exc:
            raise SinkError(f"cannot open the database {database_url}: {exc.orig}") from exc
        name = self.engine.dialect.name
        if name == "sqlite":
            from sqlalchemy.dialects.sqlite import insert
        elif name == "postgresql":
            from sqlalchemy.dialects.postgresql import insert
        else:
            raise SinkError(f"unsupported database {name!r}: use SQLite or PostgreSQL")
        self._insert = insert

    def _insert_ignore(self, table, keys: Sequence[str]):
        return self._insert(table).on_conflict_do_nothing(index_elements=list(keys))

    # -- writing -------------------------------------------------------------------------------

    def write(self, result: BatchResult) -> None:
        """Everything in ``result``, in one transaction (retried while the database is locked)."""
        if not result:
            return
        self._retrying(lambda: self._write(result))

    def _write(self, result: BatchResult) -> None:
        with self.engine.begin() as conn:
            if result.models:
                conn.execute(
                    self._insert_ignore(model_versions, ["version"]),
                    [_model_row(m) for m in result.models],
                )
            if result.pending_add:
                conn.execute(
                    self._insert_ignore(pending_events, ["transaction_id"]), result.pending_add
                )
            if result.rows:
                conn.execute(self._insert_ignore(transactions, ["transaction_id"]), result.rows)
            if result.pending_clear:
                conn.execute(delete(pending_events))
            if result.dead_letters:
                conn.execute(
                    self._insert_ignore(
                        dead_letters, ["source_topic", "source_partition", "source_offset"]
                    ),
                    result.dead_letters,
                )

    def mark_published(self, transaction_ids: Iterable[str]) -> None:
        """Record that these alerts were delivered to the alerts topic."""
        ids = list(transaction_ids)
        now = time.time()

        def run():
            with self.engine.begin() as conn:
                for chunk in _chunks(ids):
                    conn.execute(
                        update(transactions)
                        .where(transactions.c.transaction_id.in_(chunk))
                        .values(alert_published_at=now)
                    )

        if ids:
            self._retrying(run)

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

    def latest_model(self) -> FittedModel | None:
        with self.engine.connect() as conn:
            row = conn.execute(
                select(model_versions).order_by(model_versions.c.version.desc()).limit(1)
            ).first()
        if row is None:
            return None
        m = row._mapping
        names = tuple(json.loads(m["feature_names"]))
        if names != FEATURE_NAMES:
            log.warning("saved model v%s has other features %s; fitting anew", m["version"], names)
            return None
        return FittedModel(
            version=m["version"],
            forest=FittedModel.load_forest(m["model"]),
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

    def recent_history(self, per_account: int):
        """The newest ``per_account`` transactions of each account, oldest first."""
        from fraudstream.schema import Transaction, parse_timestamp

        rn = (
            func.row_number()
            .over(partition_by=transactions.c.account_id, order_by=transactions.c.timestamp.desc())
            .label("rn")
        )
        cols = [transactions.c[c] for c in ("account_id", "amount", "merchant", "location")]
        inner = select(
            transactions.c.transaction_id, transactions.c.timestamp, *cols, rn
        ).subquery()
        q = select(inner).where(inner.c.rn <= per_account).order_by(inner.c.timestamp)
        with self.engine.connect() as conn:
            for r in conn.execute(q):
                yield Transaction(
                    transaction_id=r.transaction_id,
                    account_id=r.account_id,
                    amount=r.amount,
                    merchant=r.merchant,
                    timestamp=parse_timestamp(r.timestamp),
                    location=r.location,
                )

    def close(self) -> None:
        self.engine.dispose()


def _model_row(m: FittedModel) -> dict:
    return {
        "version": m.version,
        "fitted_at": m.fitted_at,
        "reason": m.reason,
        "training_rows": m.training_rows,
        "threshold": m.threshold,
        "flag_quantile": m.flag_quantile,
        "fit_seconds": m.fit_seconds,
        "feature_names": json.dumps(list(FEATURE_NAMES)),
        "model": m.dumps(),
    }


def _chunks(items: list, size: int = CHUNK):
    for i in range(0, len(items), size):
        yield items[i : i + size]
