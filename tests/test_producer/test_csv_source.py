import csv
import json

import pytest

from fraudstream.schema import Transaction
from producer.csv_source import CsvFormatError, RejectedRow, RejectsWriter, read_transactions

HEADER = "transaction_id,account_id,amount,merchant,timestamp,location\n"


def test_bad_rows_are_reported_with_line_and_field_and_good_rows_go_on(tmp_path):
    path = tmp_path / "in.csv"
    path.write_text(
        HEADER
        + "T1,A1,10.00,Shop,2026-01-01T10:00:00,Paris\n"
        + "T2,A1,ten,Shop,2026-01-01T10:01:00,Paris\n"
        + "\n"
        + "T3,A1,5.00,Shop,2026-01-01T10:02:00\n"
        + "T4,A2,7.50,Shop,not-a-time,Paris\n"
        + "T5,A2,7.50,Shop,2026-01-01T10:03:00,Paris\n"
    )
    items = list(read_transactions(path))
    good = [(line, i.transaction_id) for line, i in items if isinstance(i, Transaction)]
    bad = [i for _line, i in items if isinstance(i, RejectedRow)]
    assert good == [(2, "T1"), (7, "T5")]
    assert [(b.line, b.field) for b in bad] == [(3, "amount"), (5, None), (6, "timestamp")]
    assert str(bad[0]).startswith(f"{path}:3: amount: not a number")
    assert "expected 6 fields, found 5" in bad[1].reason


def test_quoted_commas_and_unicode_survive(tmp_path):
    path = tmp_path / "in.csv"
    path.write_text(HEADER + 'T1,A1,3.20,"Café, Zürich",2026-01-01T10:00:00,Zürich\n', "utf-8")
    [(_, txn)] = list(read_transactions(path))
    assert txn.merchant == "Café, Zürich"


def test_missing_columns_fail_the_whole_file_with_a_clear_message(tmp_path):
    path = tmp_path / "in.csv"
    path.write_text("transaction_id,account_id,amount\nT1,A1,3\n")
    with pytest.raises(CsvFormatError, match=r"missing column\(s\) merchant, timestamp; .*"
                       r"\(location optional\)"):  # fmt: skip
        list(read_transactions(path))


def test_a_feed_without_locations_or_with_blank_ones_reads_them_as_not_known(tmp_path):
    without = tmp_path / "without.csv"
    without.write_text("transaction_id,account_id,amount,merchant,timestamp\n"
                       "T1,A1,0.00,Shop,2026-01-01T10:00:00\n")  # fmt: skip
    blank = tmp_path / "blank.csv"
    blank.write_text(HEADER + "T1,A1,0.00,Shop,2026-01-01T10:00:00,\n")
    for path in (without, blank):
        [(_, txn)] = list(read_transactions(path))
        assert (txn.location, txn.amount) == (None, 0.0)


def test_rejects_file_keeps_each_bad_row_for_inspection(tmp_path):
    path = tmp_path / "in.csv"
    path.write_text(HEADER + "T2,A1,ten,Shop,2026-01-01T10:01:00,Paris\n")
    writer = RejectsWriter(tmp_path / "rejects.csv")
    for _line, item in read_transactions(path):
        writer.add(item)
    writer.close()
    with open(tmp_path / "rejects.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert rows[0]["line"] == "2" and rows[0]["field"] == "amount"
    assert json.loads(rows[0]["raw_fields_json"])[2] == "ten"


def test_rejects_file_cells_cannot_run_as_spreadsheet_formulas(tmp_path):
    # An extra column's name comes from the file: a hidden character in its value names it as
    # the field, which must not reach a spreadsheet as a formula.
    path = tmp_path / "in.csv"
    path.write_text(
        HEADER.rstrip("\n") + ",@SUM(1+1)\nT2,A1,10,Shop,2026-01-01T10:01:00,Paris,a\u202eb\n"
    )
    writer = RejectsWriter(tmp_path / "rejects.csv")
    for _line, item in read_transactions(path):
        writer.add(item)
    writer.close()
    with open(tmp_path / "rejects.csv", newline="") as fh:
        [row] = list(csv.DictReader(fh))
    assert row["field"] == "'@SUM(1+1)"
    assert "U+202E RIGHT-TO-LEFT OVERRIDE" in row["reason"]
