import json
from datetime import UTC, datetime

import pytest

from fraudstream.schema import InvalidRecord, decode, validate

GOOD = {
    "transaction_id": "T1",
    "account_id": "AC1",
    "amount": "12.50",
    "merchant": "Acme Market",
    "timestamp": "2026-01-05T10:22:31",
    "location": "Berlin",
}


def test_csv_row_becomes_typed_transaction_with_utc_time_and_extras():
    txn = validate({**GOOD, "is_fraud": "1", "fraud_scenario": "card_testing"})
    assert txn.amount == 12.5
    assert txn.timestamp == datetime(2026, 1, 5, 10, 22, 31, tzinfo=UTC)
    assert txn.is_fraud == 1
    assert txn.extras == {"fraud_scenario": "card_testing"}


def test_event_round_trips_through_json():
    txn = validate({**GOOD, "is_fraud": 0, "channel": "pos"})
    again = decode(txn.encode())
    assert again == txn
    assert json.loads(txn.encode())["timestamp"] == "2026-01-05T10:22:31Z"


def test_offset_timestamps_are_converted_to_utc():
    txn = validate({**GOOD, "timestamp": "2026-01-05T12:22:31+02:00"})
    assert txn.timestamp == datetime(2026, 1, 5, 10, 22, 31, tzinfo=UTC)


def test_label_column_is_optional():
    assert validate(GOOD).is_fraud is None


@pytest.mark.parametrize("place", [None, "", "   "])
def test_a_location_missing_null_or_blank_is_not_known(place):
    row = {k: v for k, v in GOOD.items() if k != "location"}
    if place is not None:
        row["location"] = place
    txn = validate(row)
    assert txn.location is None
    assert decode(txn.encode()) == txn  # travels as null
    assert json.loads(txn.encode())["location"] is None
    assert validate({**GOOD, "location": None}).location is None


@pytest.mark.parametrize("amount", ["0", "0.00", 0, 0.0, -0.0])
def test_a_zero_amount_is_a_payment_stored_as_zero(amount):
    txn = validate({**GOOD, "amount": amount})  # card verifications: real traffic, and a signal
    assert txn.amount == 0.0 and str(txn.amount) == "0.0"


@pytest.mark.parametrize(
    ("change", "field", "words"),
    [
        ({"amount": "abc"}, "amount", "not a number"),
        ({"amount": "-3"}, "amount", "negative (a refund or reversal?)"),
        ({"amount": -0.01}, "amount", "only payments are scored"),
        ({"amount": "nan"}, "amount", "finite"),
        ({"amount": "1e12"}, "amount", "larger"),
        ({"amount": True}, "amount", "number"),
        ({"account_id": ""}, "account_id", "empty"),
        ({"account_id": None}, "account_id", "missing"),
        ({"merchant": "a\x00b"}, "merchant", "control"),
        ({"location": "Ber\u202elin"}, "location", "U+202E"),
        ({"location": 7.5}, "location", "expected text"),
        ({"timestamp": "yesterday"}, "timestamp", "ISO 8601"),
        ({"is_fraud": "maybe"}, "is_fraud", "0 or 1"),
        ({"transaction_id": "x" * 200}, "transaction_id", "longer"),
    ],
)
def test_invalid_fields_are_named(change, field, words):
    with pytest.raises(InvalidRecord) as err:
        validate({**GOOD, **change})
    assert err.value.field == field
    assert words in err.value.reason


@pytest.mark.parametrize(
    ("raw", "words"),
    [
        (b"\xff\xfe", "not UTF-8"),
        (b"{not json", "invalid JSON"),
        (b"[1, 2]", "JSON object"),
        (None, "null value"),
    ],
)
def test_undecodable_values_say_why(raw, words):
    with pytest.raises(InvalidRecord, match=words):
        decode(raw)


def test_json_nan_amount_is_rejected():
    value = json.dumps({**GOOD, "amount": float("nan")}).encode()
    with pytest.raises(InvalidRecord, match="finite"):
        decode(value)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-01-05T10:22:31", datetime(2026, 1, 5, 10, 22, 31, tzinfo=UTC)),
        ("2026-01-05 10:22", datetime(2026, 1, 5, 10, 22, tzinfo=UTC)),
        ("2026-01-05T10:22:31.250000", datetime(2026, 1, 5, 10, 22, 31, 250000, tzinfo=UTC)),
        ("20260105T102231", datetime(2026, 1, 5, 10, 22, 31, tzinfo=UTC)),
        ("2026-01-05", datetime(2026, 1, 5, tzinfo=UTC)),  # a date alone takes no offset
        ("2026-W02-1", datetime(2026, 1, 5, tzinfo=UTC)),
        (" 2026-01-05T10:22:31Z ", datetime(2026, 1, 5, 10, 22, 31, tzinfo=UTC)),
    ],
)
def test_naive_times_of_every_iso_form_are_utc(text, expected):
    ts = validate({**GOOD, "timestamp": text}).timestamp
    assert ts == expected
    assert ts.tzinfo is UTC


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        # orjson reads an integer literal beyond 64 bits as a float: the standard library keeps it
        (b'"ref": 123456789012345678901234', {"ref": 123456789012345678901234}),
        (b'"ref": -9223372036854775809', {"ref": -9223372036854775809}),
        (b'"ref": 18446744073709551615', {"ref": 18446744073709551615}),
        (b'"ref": 1e300', {"ref": 1e300}),  # a float literal stays a float either way
        (b'"ref": {"deep": 123456789012345678901234}', {"ref": {"deep": 123456789012345678901234}}),
        (b'"ref": [123456789012345678901234]', {"ref": [123456789012345678901234]}),
        (b'"ref": 1, "ref": 2', {"ref": 2}),  # a repeated key: the last one, as json.loads
    ],
)
def test_values_decode_as_the_standard_library_reads_them(raw, expected):
    good = json.dumps({**GOOD, "amount": 12.5}).encode()
    value = good[:-1] + b", " + raw + b"}"
    txn = decode(value)
    assert txn.extras == expected
    assert repr(txn.extras) == repr(expected)  # types too: an int stays an int


def test_a_lone_surrogate_is_refused_like_any_hidden_character():
    # orjson refuses it, the standard library reads it; as text it can be neither shown nor
    # stored as UTF-8.
    good = json.dumps({**GOOD, "amount": 12.5}).encode()
    with pytest.raises(InvalidRecord, match="U\\+D800 surrogate") as refused:
        decode(good[:-1] + b', "ref": "\\ud800"}')
    assert refused.value.field == "ref"


def test_decoded_extras_are_the_other_keys_and_a_row_is_left_as_it_was():
    value = json.dumps({"channel": "pos", **GOOD, "is_fraud": 1, "": "x", "ref": [1]}).encode()
    assert decode(value).extras == {"channel": "pos", "ref": [1]}
    assert list(decode(value).extras) == ["channel", "ref"]  # in the event's order
    row = {**GOOD, "channel": "pos"}
    txn = validate(row)
    assert txn.extras == {"channel": "pos"}
    assert row == {**GOOD, "channel": "pos"}  # the caller's row: nothing taken out of it
    txn.extras["more"] = 1
    assert "more" not in row
