"""The transaction event: its fields, how it is validated, and how it travels as JSON.

One validation for both a CSV row (all strings) and a decoded Kafka value (JSON types), so the
producer and the stream processor accept exactly the same records.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import cython
import orjson

from fraudstream.text_safety import hidden_character, hidden_in

INPUT_COLUMNS = ("transaction_id", "account_id", "amount", "merchant", "timestamp", "location")
"""The input columns, in CSV order. Other columns are carried through as ``extras``."""

OPTIONAL_COLUMNS = frozenset(("location",))
"""Input columns a feed may lack: many card feeds carry no place (an unknown one, never a
guess: its features are 0)."""

LABEL_COLUMN = "is_fraud"
"""Ground truth (0/1) when present: stored for evaluation, never a model input."""

MAX_ID_LENGTH = 128
MAX_TEXT_LENGTH = 256
MAX_AMOUNT = 1e9
MAX_MESSAGE_BYTES = 64 * 1024
EARLIEST = datetime(1990, 1, 1, tzinfo=UTC)  # event times outside [EARLIEST, LATEST) are refused
LATEST = datetime(2100, 1, 1, tzinfo=UTC)
EPOCH_MS_ABOVE = 1e11  # a numeric time above this is epoch milliseconds (1e11 s is year 5138)
_NOT_EXTRAS = frozenset((*INPUT_COLUMNS, LABEL_COLUMN, ""))  # every other key is an extra


class InvalidRecord(ValueError):
    """A record that cannot become a :class:`Transaction`; ``field`` names the culprit."""

    def __init__(self, field: str | None, reason: str):
        self.field = field
        self.reason = reason
        super().__init__(f"{field}: {reason}" if field else reason)


# Not frozen: a frozen dataclass's __init__ sets each field through object.__setattr__, several
# times slower, and one is made per event. Nothing changes a Transaction once it is made.
@dataclass(slots=True)
class Transaction:
    transaction_id: str
    account_id: str
    amount: float
    merchant: str
    timestamp: datetime  # timezone-aware, UTC
    location: str | None  # None: not known
    is_fraud: int | None = None
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def event_time(self) -> float:
        """Event time in seconds since the Unix epoch."""
        return self.timestamp.timestamp()

    def to_event(self) -> dict[str, Any]:
        """The JSON object that goes on the transactions topic."""
        event = {
            "transaction_id": self.transaction_id,
            "account_id": self.account_id,
            "amount": self.amount,
            "merchant": self.merchant,
            "timestamp": format_timestamp(self.timestamp),
            "location": self.location,
        }
        if self.is_fraud is not None:
            event[LABEL_COLUMN] = self.is_fraud
        event.update(self.extras)
        return event

    def encode(self) -> bytes:
        return json.dumps(self.to_event(), separators=(",", ":"), ensure_ascii=False).encode()


def format_timestamp(ts: datetime) -> str:
    """ISO 8601 in UTC with a ``Z``, seconds precision unless there are microseconds."""
    if ts.tzinfo is not UTC:
        ts = ts.astimezone(UTC)
    return ts.replace(tzinfo=None).isoformat() + "Z"


def parse_timestamp(value: Any) -> datetime:
    """An ISO 8601 string (naive = UTC), or epoch seconds or milliseconds, as aware UTC; times
    outside 1990-2099 are refused as implausible."""
    ts = _parse_time(value)
    if not EARLIEST <= ts < LATEST:
        raise InvalidRecord("timestamp", f"{ts.isoformat()} is outside 1990-2099: {value!r}")
    return ts


def _parse_time(value: Any) -> datetime:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if not math.isfinite(value):
            raise InvalidRecord("timestamp", f"not a finite epoch time: {value!r}")
        if abs(value) > EPOCH_MS_ABOVE:
            value = value / 1000
        try:
            return datetime.fromtimestamp(value, tz=UTC)
        except (OverflowError, OSError, ValueError):
            raise InvalidRecord("timestamp", f"epoch time out of range: {value!r}") from None
    if not isinstance(value, str) or not value.strip():
        raise InvalidRecord("timestamp", f"expected an ISO 8601 time, got {value!r}")
    text = value.strip()
    try:
        ts = datetime.fromisoformat(text)
    except ValueError:
        raise InvalidRecord(
            "timestamp", f"not an ISO 8601 time (e.g. 2026-01-31T13:45:00Z): {value!r}"
        ) from None
    if ts.tzinfo is None:
        # The same time with the offset written out, parsed again: faster than
        # ts.replace(tzinfo=UTC). A date alone ignores the offset: replaced then.
        aware = datetime.fromisoformat(text + "+00:00")
        return aware if aware.tzinfo is UTC else ts.replace(tzinfo=UTC)
    return ts if ts.tzinfo is UTC else ts.astimezone(UTC)


# The checks below take the value, not the record, and are C functions in the compiled module
# (not a Python-level call and a method lookup for each field of each event).


@cython.cfunc
def _text(value: Any, name: str, limit: int) -> str:
    if type(value) is str and value.isprintable() and 0 < len(value) <= limit:
        if value.strip() is value:  # the common case, in one pass: nothing below applies
            return value
    if value is None:
        raise InvalidRecord(name, "missing")
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise InvalidRecord(name, f"expected text, got {type(value).__name__}")
    text = str(value).strip()
    if not text:
        raise InvalidRecord(name, "empty")
    if len(text) > limit:
        raise InvalidRecord(name, f"longer than {limit} characters")
    hidden = hidden_character(text)
    if hidden:
        raise InvalidRecord(name, f"contains a control or invisible character: {hidden}")
    return text


@cython.cfunc
def _place(value: Any) -> str | None:
    """The location, None when it is not known (missing, null or blank)."""
    if value is None or (type(value) is str and not value.strip()):
        return None
    return _text(value, "location", MAX_TEXT_LENGTH)


@cython.cfunc
def _amount(value: Any) -> float:
    if type(value) is float and 0 < value <= MAX_AMOUNT:  # the common case (NaN fails it)
        return value
    if value is None:
        raise InvalidRecord("amount", "missing")
    if isinstance(value, bool):
        raise InvalidRecord("amount", f"expected a number, got {value!r}")
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            raise InvalidRecord("amount", f"not a number: {value!r}") from None
    if not isinstance(value, (int, float)):
        raise InvalidRecord("amount", f"expected a number, got {type(value).__name__}")
    amount = float(value)
    if not math.isfinite(amount):
        raise InvalidRecord("amount", f"not a finite number: {value!r}")
    if amount < 0:  # a refund or a reversal: not a payment to score
        raise InvalidRecord(
            "amount", f"negative (a refund or reversal?): only payments are scored, got {amount!r}"
        )
    if amount == 0:  # a card verification (and -0.0 stored as 0.0)
        return 0.0
    if amount > MAX_AMOUNT:
        raise InvalidRecord("amount", f"larger than {MAX_AMOUNT:.0e}: {amount!r}")
    return amount


@cython.cfunc
def _label(value: Any) -> int | None:
    if value is None or value == "":
        return None
    if value in (0, 1, "0", "1", True, False) and not isinstance(value, float):
        return int(value)
    raise InvalidRecord(LABEL_COLUMN, f"expected 0 or 1, got {value!r}")


def text_value(value: Any, name: str, limit: int) -> str:
    """``value`` as the text of field ``name`` (stripped, at most ``limit`` characters, no
    control, invisible or bidirectional-override characters), or :class:`InvalidRecord`."""
    return _text(value, name, limit)


def label_value(value: Any) -> int | None:
    """``value`` as a 0 / 1 label, None when absent or empty, or :class:`InvalidRecord`."""
    return _label(value)


def validate(record: Mapping[str, Any]) -> Transaction:
    """A :class:`Transaction` from a CSV row or a decoded event, or :class:`InvalidRecord`."""
    return _validate(record, owned=False)


@cython.locals(d=dict)
def _validate(record: Mapping[str, Any], owned: bool) -> Transaction:
    """:func:`validate`; ``owned``: ``record`` is a dict of the caller's own making (a decoded
    value), which becomes the extras once the fields are taken out of it."""
    if type(record) is dict:
        d = record  # compiled: the dict's lookups in C
    elif isinstance(record, Mapping):
        d, owned = dict(record), True  # a copy: ours to take the extras from
    else:
        raise InvalidRecord(None, f"expected a JSON object, got {type(record).__name__}")
    txn = Transaction(
        _text(d.get("transaction_id"), "transaction_id", MAX_ID_LENGTH),
        _text(d.get("account_id"), "account_id", MAX_ID_LENGTH),
        _amount(d.get("amount")),
        _text(d.get("merchant"), "merchant", MAX_TEXT_LENGTH),
        parse_timestamp(d.get("timestamp")),
        _place(d.get("location")),
        _label(d.get(LABEL_COLUMN)),
    )
    if owned:
        # What is left once the fields are taken out: cheaper than a new dict of the other keys,
        # one per event
        for name in _NOT_EXTRAS:
            d.pop(name, None)
        txn.extras = d
    else:
        txn.extras = {k: v for k, v in d.items() if k not in _NOT_EXTRAS}
    _check_extras(txn.extras)
    return txn


@cython.cfunc
@cython.locals(extras=dict)
def _check_extras(extras: dict) -> cython.void:
    """Extra columns are shown too (the dashboard's table pages): their names and text, nested
    ones included, follow the fields' rule (no control, invisible or bidirectional-override
    characters)."""
    for name, value in extras.items():
        if type(value) is str and value.isprintable() and name.isprintable():
            continue  # the common case
        hidden = hidden_character(name)
        field = name.encode("unicode_escape").decode() if hidden else name
        hidden = hidden or hidden_in(value)
        if hidden:
            raise InvalidRecord(field[:64], f"contains a control or invisible character: {hidden}")


def decode(value: bytes | None) -> Transaction:
    """A Kafka value (UTF-8 JSON object) as a :class:`Transaction`, or :class:`InvalidRecord`."""
    return _validate(load_json(value), owned=True)


def load_json(value: bytes | None) -> Any:
    """A Kafka value parsed as UTF-8 JSON, or :class:`InvalidRecord` saying what is wrong."""
    if value is None:
        raise InvalidRecord(None, "empty message (null value)")
    if len(value) > MAX_MESSAGE_BYTES:
        raise InvalidRecord(
            None, f"message of {len(value):,} bytes is larger than {MAX_MESSAGE_BYTES:,}"
        )
    record = _fast_json(value)
    if record is not None:
        return record
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidRecord(None, f"not UTF-8 at byte {exc.start}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidRecord(None, f"invalid JSON at char {exc.pos}: {exc.msg}") from None


_INT64 = 2.0**63


def _fast_json(value: bytes) -> dict | None:
    """``value`` parsed by orjson (several times faster than ``json.loads`` with the UTF-8
    decode), or None where it could differ from the standard library, which
    then parses it: anything orjson refuses (NaN, a lone surrogate, invalid UTF-8: the standard
    library's own error or acceptance stands), anything but a flat object (nested values), and
    a float beyond 64-bit integers, which orjson also gives for an integer literal that large
    (``json.loads`` keeps it exact)."""
    try:
        record = orjson.loads(value)
    except orjson.JSONDecodeError:
        return None
    if type(record) is not dict:
        return None
    for v in record.values():
        t = type(v)
        if t is dict or t is list or (t is float and abs(v) >= _INT64):
            return None
    return record
