"""The bad-input corpus: each kind of bad or odd event has a defined outcome.

Either it is stored (normalised as stated) or it is dead-lettered with the field and reason;
nothing raises and nothing is lost. Plus property-based tests: the parser, the features and the
CSV reader never crash on arbitrary input.
"""

from __future__ import annotations

import json
import math
import string

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from sqlalchemy import text

from fraudstream.schema import InvalidRecord, Transaction, decode, validate
from fraudstream.tables import make_engine
from producer.csv_source import CsvFormatError, read_transactions
from stream_processor.core import RawMessage, ScoringCore
from stream_processor.features import AccountStates
from stream_processor.sink import SinkStore, open_sink

BASE = {
    "transaction_id": "T1", "account_id": "AC1", "amount": 12.5, "merchant": "Acme Market",
    "timestamp": "2026-01-05T10:22:31Z", "location": "Berlin",
}  # fmt: skip


def ev(**change) -> bytes:
    event = {**BASE, **change}
    return json.dumps({k: v for k, v in event.items() if v is not ...}).encode()


DEAD = [
    # kind, raw value, field named in the error (None = the whole message), words in the reason
    ("undecodable bytes", b"\xff\xfe\x00", None, "not UTF-8"),
    ("invalid JSON", b'{"transaction_id": "T1",', None, "invalid JSON"),
    ("empty bytes", b"", None, "invalid JSON"),
    ("JSON array", b"[1, 2, 3]", None, "JSON object"),
    ("JSON null", b"null", None, "JSON object"),
    ("Kafka tombstone (null value)", None, None, "null value"),
    ("missing transaction_id", ev(transaction_id=...), "transaction_id", "missing"),
    ("missing amount", ev(amount=...), "amount", "missing"),
    ("missing timestamp", ev(timestamp=...), "timestamp", "ISO 8601"),
    ("amount of wrong type", ev(amount=[1]), "amount", "expected a number"),
    ("amount as boolean", ev(amount=True), "amount", "expected a number"),
    ("amount with a decimal comma", ev(amount="12,50"), "amount", "not a number"),
    ("empty merchant", ev(merchant=""), "merchant", "empty"),
    ("location of wrong type", ev(location=["Paris"]), "location", "expected text"),
    ("NaN amount", b'{"transaction_id":"T1","account_id":"A","amount":NaN,"merchant":"m","timestamp":"2026-01-01","location":"x"}', "amount", "finite"),
    ("infinite amount", b'{"transaction_id":"T1","account_id":"A","amount":Infinity,"merchant":"m","timestamp":"2026-01-01","location":"x"}', "amount", "finite"),
    ("negative amount (a refund)", ev(amount=-20), "amount", "negative (a refund or reversal?)"),
    ("absurdly large amount", ev(amount=1e15), "amount", "larger than"),
    ("timestamp in another format", ev(timestamp="05/01/2026 10:22"), "timestamp", "ISO 8601"),
    ("timestamp far in the future", ev(timestamp="2999-01-01T00:00:00"), "timestamp", "outside"),
    ("timestamp far in the past", ev(timestamp="1900-01-01T00:00:00"), "timestamp", "outside"),
    ("timestamp as boolean", ev(timestamp=True), "timestamp", "ISO 8601"),
    ("control characters in merchant", ev(merchant="Shop\x07\x1b[2J"), "merchant", "control"),
    ("bidi override in merchant", ev(merchant="Acme\u202eevil"), "merchant", "U+202E RIGHT-TO-LEFT OVERRIDE"),
    ("zero-width space in location", ev(location="Ber\u200blin"), "location", "U+200B ZERO WIDTH SPACE"),
    ("terminal escape (C1) in account_id", ev(account_id="AC\x9b2J"), "account_id", "U+009B"),
    ("bidi isolate in an extra column", ev(note="a\u2066b"), "note", "U+2066"),
    ("bidi override inside a nested extra", ev(note={"k": ["a\u202eb"]}), "note", "U+202E"),
    ("bidi override in an extra column's name", ev(**{"n\u202eote": "x"}), "n\\u202eote", "U+202E"),
    ("oversized message", ev(notes="x" * 100_000), None, "larger than"),
    ("transaction_id too long", ev(transaction_id="T" * 500), "transaction_id", "longer than"),
    ("merchant as an object", ev(merchant={"name": "Acme"}), "merchant", "expected text"),
    ("label that is not 0/1", ev(is_fraud="maybe"), "is_fraud", "0 or 1"),
]  # fmt: skip

STORED = [
    # kind, raw value, column -> stored value
    ("amount as a numeric string", ev(amount="12.50"), {"amount": 12.5}),
    ("timestamp with an offset", ev(timestamp="2026-01-05T12:22:31+02:00"), {"timestamp": "2026-01-05 10:22:31"}),
    ("timestamp without a zone (UTC)", ev(timestamp="2026-01-05 10:22:31"), {"timestamp": "2026-01-05 10:22:31"}),
    ("timestamp in epoch seconds", ev(timestamp=1767608551), {"timestamp": "2026-01-05 10:22:31"}),
    ("timestamp in epoch milliseconds", ev(timestamp=1767608551000), {"timestamp": "2026-01-05 10:22:31"}),
    ("unicode merchant and location", ev(merchant="Café Zürich 東京 🙂", location="Kraków"), {"merchant": "Café Zürich 東京 🙂", "location": "Kraków"}),
    ("SQL injection text", ev(merchant="x'); DROP TABLE transactions;--"), {"merchant": "x'); DROP TABLE transactions;--"}),
    ("numeric account_id", ev(account_id=12345), {"account_id": "12345"}),
    ("padded ids", ev(transaction_id="  T1 ", account_id=" AC1"), {"transaction_id": "T1", "account_id": "AC1"}),
    ("extra columns", ev(channel="pos", mcc=5411), {"extras": '{"channel":"pos","mcc":5411}'}),
    ("extra text not ASCII", ev(branch="Zürich Süd"), {"extras": '{"branch":"Zürich Süd"}'}),
    ("extra integer beyond 64 bits", ev(ref=2**70), {"extras": '{"ref": 1180591620717411303424}'}),
    ("label as boolean", ev(is_fraud=True), {"is_fraud": 1}),
    ("microsecond timestamp", ev(timestamp="2026-01-05T10:22:31.250000Z"), {"timestamp": "2026-01-05 10:22:31.250000"}),
    ("zero amount (a card verification)", ev(amount=0), {"amount": 0.0}),
    ("no location", ev(location=...), {"location": None}),
    ("null location", ev(location=None), {"location": None}),
    ("whitespace-only location", ev(location="   "), {"location": None}),
]  # fmt: skip


def core_and_sink(settings):
    sink = open_sink(settings.database_url)
    return ScoringCore(settings.replace(warmup_events=1), SinkStore(sink, settings.account_history)), sink


def stored(settings, sql: str, **params) -> list:
    """The rows of ``sql`` as mappings (column -> value), on either database."""
    engine = make_engine(settings.database_url)
    try:
        with engine.connect() as conn:
            return [r._mapping for r in conn.execute(text(sql), params)]
    finally:
        engine.dispose()


def stored_row(settings, transaction_id="T1"):
    rows = stored(settings, "select * from transactions where transaction_id = :t", t=transaction_id)
    return rows[0] if rows else None


def test_the_corpus_has_at_least_30_kinds():
    assert len(DEAD) + len(STORED) + 3 >= 30  # + the three ordering / duplicate cases below


@pytest.mark.parametrize(("kind", "raw", "field", "words"), DEAD, ids=[d[0] for d in DEAD])
def test_bad_events_are_dead_lettered_with_field_and_reason(db_settings, kind, raw, field, words):
    settings = db_settings
    core, sink = core_and_sink(settings)
    result = core.process([RawMessage(raw, b"AC1", offset=7)])
    sink.write(result)
    assert result.rows == []
    [dl] = result.dead_letters
    assert (dl["error_field"], dl["source_offset"], dl["message_value"]) == (field, 7, raw)
    assert words in dl["error"], dl["error"]
    rows = stored(settings, "select error_field, message_value from dead_letters")
    assert [(r["error_field"], r["message_value"]) for r in rows] == [(field, raw)]
    sink.close()


@pytest.mark.parametrize(("kind", "raw", "expected"), STORED, ids=[s[0] for s in STORED])
def test_odd_but_valid_events_are_stored_normalised(db_settings, kind, raw, expected):
    settings = db_settings
    core, sink = core_and_sink(settings)
    result = core.process([RawMessage(raw, offset=1)])
    sink.write(result)
    assert result.dead_letters == []
    row = stored_row(settings, expected.get("transaction_id", "T1"))
    assert row is not None and row["score"] is not None
    for column, value in expected.items():
        assert row[column] == value, column
    assert stored_row(settings)["transaction_id"] == "T1"  # the table survived any injected SQL


def test_out_of_order_and_late_events_are_stored_with_event_time_features(settings):
    core, sink = core_and_sink(settings)
    msgs = [
        RawMessage(ev(transaction_id="T1", timestamp="2026-01-05T10:00:00Z")),
        RawMessage(ev(transaction_id="T2", timestamp="2026-01-05T09:00:00Z")),  # out of order
        RawMessage(ev(transaction_id="T3", timestamp="2025-12-20T09:00:00Z")),  # weeks late
    ]
    result = core.process(msgs)
    sink.write(result)
    assert [r.transaction_id for r in result.named_rows] == ["T1", "T2", "T3"]
    gaps = [json.loads(r.features)["log_gap_s"] for r in result.named_rows]
    assert all(g >= 0 and math.isfinite(g) for g in gaps)


def test_same_id_twice_with_different_content_keeps_the_first(settings):
    core, sink = core_and_sink(settings)
    sink.write(core.process([RawMessage(ev(amount=10.0))]))
    second = core.process([RawMessage(ev(amount=9999.0, merchant="Other"))])
    sink.write(second)
    assert second.rows == [] and second.dead_letters == [] and second.duplicate_ids == ["T1"]
    assert stored_row(settings)["amount"] == 10.0


# -- property-based: nothing crashes -----------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3)
    ),
    max_leaves=8,
)
FIELDS = ["transaction_id", "account_id", "amount", "merchant", "timestamp", "location", "is_fraud"]


@given(st.binary(max_size=300))
def test_decode_never_raises_anything_but_invalid_record(raw):
    try:
        txn = decode(raw)
    except InvalidRecord:
        return
    assert isinstance(txn, Transaction)


@given(st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=8), json_values, max_size=9))
def test_validate_accepts_or_names_a_reason(record):
    try:
        txn = validate(record)
    except InvalidRecord as exc:
        assert exc.reason
        return
    assert txn.amount > 0 and math.isfinite(txn.amount)
    assert txn.timestamp.tzinfo is not None


valid_txns = st.builds(
    lambda i, acc, amount, minute, merchant, loc: validate(
        {
            "transaction_id": f"T{i}",
            "account_id": acc,
            "amount": amount,
            "merchant": merchant,
            "timestamp": 1767225600 + minute * 60,
            "location": loc,
        }
    ),  # fmt: skip
    st.integers(0, 10**6),
    st.sampled_from(["A", "B", "C"]),
    st.floats(0.01, 1e8),
    st.integers(-(10**5), 10**6),
    st.sampled_from(["m1", "m2", "Café"]),
    st.sampled_from(["Paris", "Oslo"]),
)


@hsettings(suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.lists(valid_txns, max_size=60))
def test_features_are_always_finite(txns):
    out = AccountStates(max_accounts=2, history=5).transform(txns)
    assert out.shape[0] == len(txns)
    assert bool((out == out).all()) and bool(abs(out).max(initial=0) < float("inf"))


@hsettings(
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture], deadline=None
)
@given(st.lists(st.text(alphabet=string.printable + "é\x00\"',", max_size=40), max_size=8))
def test_csv_reader_reports_or_reads_every_line(tmp_path, lines):
    path = tmp_path / "fuzz.csv"
    path.write_text("transaction_id,account_id,amount,merchant,timestamp,location\n" + "\n".join(lines),
                    encoding="utf-8")  # fmt: skip
    try:
        items = list(read_transactions(path))
    except CsvFormatError:
        return
    for line, item in items:
        assert line >= 2
        assert isinstance(item, Transaction) or item.reason
