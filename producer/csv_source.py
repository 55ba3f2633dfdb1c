"""Reading a transactions CSV: each row validated, bad rows reported with their line and kept.

A bad row never stops the replay: it is yielded as a :class:`RejectedRow` (file, line, field,
reason, the raw row) and the caller writes it to a rejects file for inspection.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from fraudstream.schema import INPUT_COLUMNS, OPTIONAL_COLUMNS, InvalidRecord, Transaction, validate
from fraudstream.text_safety import spreadsheet_safe


class CsvFormatError(ValueError):
    """The file as a whole cannot be read (missing columns, not a CSV)."""


@dataclass(frozen=True)
class RejectedRow:
    path: str
    line: int
    field: str | None
    reason: str
    raw: list[str]

    def __str__(self) -> str:
        where = f"{self.path}:{self.line}"
        return f"{where}: {self.field + ': ' if self.field else ''}{self.reason}"


def read_transactions(path: Path | str) -> Iterator[tuple[int, Transaction | RejectedRow]]:
    """Yield ``(line number, Transaction or RejectedRow)`` for each data row, in file order."""
    path = Path(path)
    with open(path, newline="", encoding="utf-8", errors="strict") as fh:
        reader = csv.reader(fh)
        try:
            header = next(reader)
        except StopIteration:
            raise CsvFormatError(f"{path}: empty file, expected a header row") from None
        except (UnicodeDecodeError, csv.Error) as exc:
            raise CsvFormatError(f"{path}:1: cannot read the header: {exc}") from None
        header = [h.strip() for h in header]
        missing = [c for c in INPUT_COLUMNS if c not in header and c not in OPTIONAL_COLUMNS]
        if missing:
            raise CsvFormatError(
                f"{path}:1: missing column(s) {', '.join(missing)}; "
                f"expected {', '.join(INPUT_COLUMNS)} ({', '.join(sorted(OPTIONAL_COLUMNS))} optional)"
            )
        line = 1
        while True:
            try:
                row = next(reader)
            except StopIteration:
                return
            except UnicodeDecodeError as exc:
                # The text layer failed: the rest of the file cannot be trusted line by line.
                raise CsvFormatError(
                    f"{path}: after line {line}: not UTF-8 ({exc.reason})"
                ) from None
            except csv.Error as exc:
                line = reader.line_num
                yield line, RejectedRow(str(path), line, None, f"malformed CSV: {exc}", [])
                continue
            line = reader.line_num
            if not row or all(not cell.strip() for cell in row):
                continue  # blank lines are not records
            if len(row) != len(header):
                reason = f"expected {len(header)} fields, found {len(row)}"
                yield line, RejectedRow(str(path), line, None, reason, row)
                continue
            try:
                yield line, validate(dict(zip(header, row, strict=True)))
            except InvalidRecord as exc:
                yield line, RejectedRow(str(path), line, exc.field, exc.reason, row)


class RejectsWriter:
    """Appends rejected rows, with their line, field and reason, to a CSV beside the input
    (cells that could run as a spreadsheet formula are neutralised: text_safety)."""

    def __init__(self, path: Path | str):
        self.path = Path(path)
        self._fh = None
        self._writer = None
        self.count = 0

    def add(self, rejected: RejectedRow) -> None:
        if self._writer is None:
            new = not self.path.exists() or self.path.stat().st_size == 0
            self._fh = open(self.path, "a", newline="", encoding="utf-8")  # noqa: SIM115
            self._writer = csv.writer(self._fh)
            if new:
                self._writer.writerow(["source", "line", "field", "reason", "raw_fields_json"])
        raw = json.dumps(rejected.raw, ensure_ascii=False)
        cells = [rejected.path, rejected.line, rejected.field or "", rejected.reason, raw]
        # An analyst opens this file in a spreadsheet: no cell of it may run as a formula.
        self._writer.writerow([spreadsheet_safe(cell) for cell in cells])
        self.count += 1

    def close(self) -> None:
        if self._fh:
            self._fh.close()
            self._fh = None
            self._writer = None
