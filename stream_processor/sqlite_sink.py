"""The SQLite sink: a file in WAL mode. A batch's statements are compiled here (SQL text with
``?`` placeholders, parameter tuples) and run in one transaction by the writer process
(:mod:`stream_processor.writer`), which also runs the write-ahead log's checkpoints; this
process's own connections only read (``make_engine(auto_checkpoint=False)``).
"""

from __future__ import annotations

from operator import itemgetter

import orjson
from sqlalchemy import Engine
from sqlalchemy.dialects import sqlite
from sqlalchemy.dialects.sqlite import insert

from fraudstream.tables import SQLITE_BUSY_TIMEOUT_MS
from stream_processor.core import ROW_COLUMNS
from stream_processor.sink import Sink, SinkError, Step
from stream_processor.writer import WriterProcess

# One statement for a whole batch (not SQLAlchemy IN lists of a few hundred ids each): each id
# of the JSON array looked up in the two tables' keys. A join, not ``in (select value from
# json_each(?1))``, which sorts the ids into a temporary index first; CROSS JOIN keeps the ids
# the outer loop whatever SQLite's statistics say.
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


class SqliteSink(Sink):
    KNOWN_IDS, ACCOUNT_HISTORY = KNOWN_IDS_SQLITE, ACCOUNT_HISTORY_SQLITE

    def __init__(self, engine: Engine):
        super().__init__(engine)
        path = engine.url.database
        if path in (None, "", ":memory:"):
            raise SinkError("the SQLite sink needs a file: DATABASE_URL=sqlite:///path/to/file.db")
        self._compiled: dict = {}  # Step.key -> (SQL, row -> parameter tuple)
        try:
            self.writer = WriterProcess(path, SQLITE_BUSY_TIMEOUT_MS)
        except (SinkError, OSError) as exc:
            engine.dispose()
            raise SinkError(f"cannot start the SQLite writer process: {exc}") from exc

    def _start(self, steps: list[Step]) -> None:
        self.writer.submit([self._statement(step) for step in steps])

    def wait(self) -> None:
        self.writer.wait()

    @property
    def in_flight(self) -> bool:
        return self.writer.in_flight

    def _statement(self, step: Step) -> tuple[str, list[tuple]]:
        """(SQL, parameter tuples) of a step, what the writer process takes; compiled once."""
        found = self._compiled.get(step.key)
        if found is None:
            compiled = step.compile(insert, sqlite.dialect())
            names = compiled.positiontup or ()
            if step.name == "rows" and tuple(names) != ROW_COLUMNS:
                raise SinkError(f"the insert's parameters {names} are not ROW_COLUMNS' order")
            if len(names) > 1:
                values = itemgetter(*names)
            else:
                values = lambda row: tuple(row[n] for n in names)  # noqa: E731
            found = self._compiled[step.key] = (str(compiled), values)
        sql, values = found
        # "rows": tuples in the statement's order already (checked when compiled)
        return sql, step.rows if step.name == "rows" else list(map(values, step.rows))

    def _by_ids(self, sql: str, ids: list[str], **more) -> list:
        with self.engine.connect() as conn:  # ?1: the ids as one JSON array; ?2...: more's values
            return conn.exec_driver_sql(sql, (orjson.dumps(ids).decode(), *more.values())).all()

    def close(self) -> None:
        self.writer.close()  # a write in flight is finished first; the log copied back
        super().close()
