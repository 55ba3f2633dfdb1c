"""What the scoring core takes and gives, shared by its parts, the sinks and the runtimes
(:mod:`stream_processor.core` re-exports all of it)."""

from __future__ import annotations

import json
import time
from collections import namedtuple
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import numpy as np

from fraudstream.schema import InvalidRecord, Transaction
from fraudstream.tables import transactions

if TYPE_CHECKING:
    from stream_processor.labels import Label
    from stream_processor.model import FittedModel, Model, SupervisedModel


# RawMessage and HeldEvent: one of each per event, so not frozen (a frozen dataclass sets each
# field through object.__setattr__, several times slower to make). Nothing changes them after
# they are made.
@dataclass(slots=True)
class RawMessage:
    """One consumed Kafka record, as any runtime sees it."""

    value: bytes | None
    key: bytes | None = None
    topic: str = "transactions"
    partition: int = 0
    offset: int = 0
    produced_at: float | None = None  # epoch s, from the producer's header


@dataclass(slots=True)
class HeldEvent:
    """A valid event with where it was consumed: held for the first fit, or being scored."""

    txn: Transaction
    partition: int | None
    offset: int | None
    produced_at: float | None


TransactionRow = namedtuple("TransactionRow", [column.name for column in transactions.columns])
"""A row of the transactions table read by name: its fields are the table's columns, in the
table's order. ``TransactionRow(*row)`` names a stored row's values (:attr:`BatchResult.named_rows`)."""
ROW_COLUMNS: tuple[str, ...] = TransactionRow._fields


def rows_from_columns(columns: dict[str, list]) -> list[tuple]:
    """The rows whose values ``columns`` holds by column name (every column of the transactions
    table once), each a plain tuple in ROW_COLUMNS order.

    A batch's rows are built this way, a column at a time: a row built by keyword, one per event,
    costs more than the rest of making it (Python binds 22 keywords per call). Plain tuples, not
    TransactionRows: the SQLite writer process is sent them with marshal, which takes no tuple
    subclass, and a second copy of each row would make marshal track every shared value."""
    if columns.keys() != _COLUMN_SET:
        raise ValueError(
            f"not the transactions table's columns: missing {sorted(_COLUMN_SET - columns.keys())}"
            f", unknown {sorted(columns.keys() - _COLUMN_SET)}"
        )
    return list(zip(*(columns[c] for c in ROW_COLUMNS), strict=True))


_COLUMN_SET = frozenset(ROW_COLUMNS)
TRANSACTION_ID = ROW_COLUMNS.index("transaction_id")  # where a row holds its id


@dataclass
class BatchResult:
    rows: list[tuple] = field(default_factory=list)  # for the transactions table (ROW_COLUMNS)
    alerts: list[dict] = field(default_factory=list)  # for the alerts topic
    dead_letters: list[dict] = field(default_factory=list)  # for dead_letters and the DLQ
    pending_add: list[dict] = field(default_factory=list)  # held until the first fit
    pending_clear: list[str] = field(default_factory=list)  # held events scored: their ids
    models: list[Model] = field(default_factory=list)  # to record
    duplicate_ids: list[str] = field(default_factory=list)  # already stored or held
    labels: list[dict] = field(default_factory=list)  # for the labels table
    labels_released: dict[str, int] = field(default_factory=dict)  # id -> learned (1) or not
    # Seconds this batch spent on refits: starting one (copying and sending the training
    # window), swapping one in (receiving and installing it), recording it (the sink adds that).
    refit_s: float = 0.0

    @property
    def named_rows(self) -> list[TransactionRow]:
        """:attr:`rows`, each read by column name."""
        return list(map(TransactionRow._make, self.rows))

    def __bool__(self) -> bool:
        return any((self.rows, self.dead_letters, self.pending_add, self.pending_clear,
                    self.models, self.labels, self.labels_released))  # fmt: skip


@dataclass(frozen=True, slots=True)
class LabelledEvent:
    """What the supervised model learns from once the event's label arrives."""

    merchant: str
    account_id: str
    features: np.ndarray  # SUPERVISED_FEATURE_NAMES, as computed when the event was scored


class EventStore(Protocol):
    """What the core reads from the database (a :class:`stream_processor.sink.SinkStore` over
    the sink; :class:`MemoryStore` without one)."""

    def known_ids(self, ids: list[str]) -> set[str]:
        """Which of ``ids`` are already stored or held for the first fit (duplicates)."""

    def lookup_events(self, ids: list[str]) -> dict[str, LabelledEvent | None]:
        """Stored events among ``ids`` as the supervised model learns from them; None for one
        whose label was learned already."""

    def account_events(self, ids: list[str]) -> list[Transaction]:
        """The stored events that rebuild these accounts (evicted from memory), oldest first."""


class MemoryStore:
    """An :class:`EventStore` of what it is given (tests, a core without a database)."""

    def __init__(
        self,
        ids: Iterable[str] = (),
        events: dict[str, LabelledEvent | None] | None = None,
        accounts: dict[str, list[Transaction]] | None = None,
    ):
        self.ids = set(ids)
        self.events = dict(events or {})
        self.accounts = dict(accounts or {})

    def known_ids(self, ids: list[str]) -> set[str]:
        return self.ids.intersection(ids)

    def lookup_events(self, ids: list[str]) -> dict[str, LabelledEvent | None]:
        return {i: self.events[i] for i in ids if i in self.events}

    def account_events(self, ids: list[str]) -> list[Transaction]:
        found = [t for a in ids for t in self.accounts.get(a, ())]
        return sorted(found, key=lambda t: t.timestamp)


@dataclass
class Restored:
    """The state a restart reads back from the database; the defaults are a first start."""

    model: FittedModel | None = None
    next_version: int = 1
    held: Iterable[HeldEvent] = ()  # events held for the first fit
    history: Iterable[Transaction] = ()  # recent events that rebuild the accounts in memory
    supervised: SupervisedModel | None = None
    label_history: Iterable[tuple[LabelledEvent, Label]] = ()  # labels learned, oldest first
    queued_labels: Iterable[Label] = ()  # labels not learned yet


def alert_payload(row: TransactionRow) -> dict:
    """The JSON object published to the alerts topic for a flagged row."""
    return {
        "transaction_id": row.transaction_id,
        "account_id": row.account_id,
        "amount": row.amount,
        "merchant": row.merchant,
        "timestamp": row.timestamp.replace(" ", "T") + "Z",
        "location": row.location,
        "score": round(row.score, 6),
        "threshold": round(row.threshold, 6),
        "supervised_score": _rounded(row.supervised_score),
        "risk_score": _rounded(row.risk_score),
        "model_version": row.model_version,
        "reasons": json.loads(row.reasons) if row.reasons else [],
        "rules": json.loads(row.rules_hit) if row.rules_hit else [],
        "rules_version": row.rules_version,
        "scored_at": row.scored_at,
    }


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 6)


def dead_letter(msg: RawMessage, exc: InvalidRecord) -> dict:
    """The dead_letters row (and DLQ record) of a message that failed validation."""
    return {
        "source_topic": msg.topic,
        "source_partition": msg.partition,
        "source_offset": msg.offset,
        "message_key": msg.key,
        "message_value": msg.value,
        "error_field": exc.field,
        "error": exc.reason,
        "received_at": time.time(),
    }
