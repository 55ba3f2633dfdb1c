"""Confirmed outcomes on the labels topic: ``{"transaction_id", "is_fraud", "labelled_at"}``.

A label says, after the fact (a chargeback, a customer's confirmation), whether a transaction was
fraud. Labels are validated like transactions: a bad one is dead-lettered with the field named.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from fraudstream.schema import (
    LABEL_COLUMN,
    MAX_ID_LENGTH,
    InvalidRecord,
    label_value,
    load_json,
    parse_timestamp,
    text_value,
)


@dataclass(frozen=True, slots=True)
class Label:
    transaction_id: str
    is_fraud: int
    labelled_at: datetime  # when the outcome became known (UTC)


def decode_label(value: bytes | None) -> Label:
    """A labels-topic value as a :class:`Label`, or :class:`InvalidRecord` naming the field."""
    record = load_json(value)
    if not isinstance(record, dict):
        raise InvalidRecord(None, f"label: expected a JSON object, got {type(record).__name__}")
    is_fraud = label_value(record.get(LABEL_COLUMN))
    if is_fraud is None:
        raise InvalidRecord(LABEL_COLUMN, "missing")
    try:
        labelled_at = parse_timestamp(record.get("labelled_at"))
    except InvalidRecord as exc:
        raise InvalidRecord("labelled_at", exc.reason) from None
    return Label(
        transaction_id=text_value(record.get("transaction_id"), "transaction_id", MAX_ID_LENGTH),
        is_fraud=is_fraud,
        labelled_at=labelled_at,
    )
