"""The tables the stream processor writes, and how to open the database.

SQLAlchemy Core: ``DATABASE_URL`` is a SQLite file (``sqlite:///finance.db``, the one-machine
default) or a PostgreSQL database (``postgresql://user@host/name``, through psycopg 3).
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import (
    BigInteger,
    Column,
    Engine,
    Float,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    Sequence,
    String,
    Table,
    Text,
    create_engine,
    event,
    func,
    inspect,
    select,
)
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import OperationalError

from fraudstream.retry import is_lock_error, retry

metadata = MetaData()

transactions = Table(
    "transactions",
    metadata,
    Column("transaction_id", String(128), primary_key=True),
    Column("account_id", String(128), nullable=False),
    Column("amount", Float, nullable=False),
    Column("merchant", String(256), nullable=False),
    # UTC, 'YYYY-MM-DD HH:MM:SS[.ffffff]': sorts as text, and SQLite's date functions read it.
    Column("timestamp", String(32), nullable=False),
    Column("location", String(256), nullable=True, comment="null: not known"),
    Column("is_fraud", Integer, nullable=True, comment="ground truth when the input had it"),
    Column("extras", Text, nullable=True, comment="other input columns, JSON object"),
    Column(
        "score", Float, nullable=False, comment="anomaly score in (0, 1]; higher = more anomalous"
    ),
    Column("threshold", Float, nullable=False, comment="score above which the event is flagged"),
    Column(
        "supervised_score",
        Float,
        nullable=True,
        comment="P(fraud) from the supervised model trained on delayed labels; null before one",
    ),
    Column(
        "risk_score",
        Float,
        nullable=False,
        comment="the combined risk: supervised_score when a supervised model exists (it takes "
        "the anomaly score as an input), else the anomaly score",
    ),
    Column("is_flagged", Integer, nullable=False, comment="anomaly, supervised or alert-rule flag"),
    Column("model_flagged", Integer, nullable=True, comment="the models' own flag: anomaly or supervised"),
    Column("reasons", Text, nullable=True, comment="JSON list of readable reasons, when flagged"),
    Column("rules_hit", Text, nullable=True, comment="JSON list of the ids of the rules matched"),
    Column("rules_version", Integer, nullable=True, comment="the rule set's version (its offset on the rules topic); null: not published"),
    Column("model_version", Integer, nullable=False),
    Column("supervised_version", Integer, nullable=True),
    Column("features", Text, nullable=False, comment="JSON object of the models' inputs"),
    Column("kafka_partition", Integer, nullable=True),
    Column("kafka_offset", BigInteger, nullable=True),
    Column("produced_at", Float, nullable=True, comment="epoch s, from the producer's header"),
    Column("scored_at", Float, nullable=False, comment="epoch s"),
    Column("alert_published_at", Float, nullable=True, comment="epoch s; null until delivered"),
)
Index("ix_transactions_account_time", transactions.c.account_id, transactions.c.timestamp)
Index("ix_transactions_timestamp", transactions.c.timestamp)

model_versions = Table(
    "model_versions",
    metadata,
    Column("version", Integer, primary_key=True, autoincrement=False),
    Column("kind", String(32), nullable=False, comment="isolation_forest or supervised"),
    Column("fitted_at", Float, nullable=False, comment="epoch s"),
    Column(
        "reason",
        String(64),
        nullable=False,
        comment="initial, events, interval, drift (isolation forest); labels (supervised)",
    ),
    Column("training_rows", Integer, nullable=False),
    Column("training_frauds", Integer, nullable=True, comment="supervised: fraud labels"),
    Column("threshold", Float, nullable=False),
    Column("flag_quantile", Float, nullable=True, comment="isolation forest only"),
    Column("fit_seconds", Float, nullable=False),
    Column("feature_names", Text, nullable=False, comment="JSON list"),
    Column("model", LargeBinary, nullable=False, comment="joblib dump of the fitted estimator"),
)

dead_letters = Table(
    "dead_letters",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("source_topic", String(256), nullable=False),
    Column("source_partition", Integer, nullable=False),
    Column("source_offset", BigInteger, nullable=False),
    Column("message_key", LargeBinary, nullable=True),
    Column("message_value", LargeBinary, nullable=True, comment="the original bytes"),
    Column("error_field", String(64), nullable=True),
    Column("error", Text, nullable=False),
    Column("received_at", Float, nullable=False, comment="epoch s"),
)
Index(
    "ux_dead_letters_source",
    dead_letters.c.source_topic,
    dead_letters.c.source_partition,
    dead_letters.c.source_offset,
    unique=True,
)

pending_events = Table(
    "pending_events",
    metadata,
    Column("transaction_id", String(128), primary_key=True),
    Column("seq", Integer, nullable=False, comment="arrival order"),
    Column("event", Text, nullable=False, comment="the validated event, JSON"),
    Column("kafka_partition", Integer, nullable=True),
    Column("kafka_offset", BigInteger, nullable=True),
    Column("produced_at", Float, nullable=True),
    comment="events held before the first model exists; scored and moved on the first fit",
)

labels = Table(
    "labels",
    metadata,
    Column("transaction_id", String(128), primary_key=True),
    Column("is_fraud", Integer, nullable=False),
    Column("labelled_at", String(32), nullable=False, comment="UTC, like transactions.timestamp"),
    Column("received_at", Float, nullable=False, comment="epoch s"),
    Column(
        "learned",
        Integer,
        nullable=True,
        comment="1 once the label trained on its scored event; null until then (the event clock "
        "has not reached labelled_at, or the event was not scored yet, or it left memory)",
    ),
    comment="confirmed outcomes from the labels topic; the first label of a transaction wins",
)

labels_table = labels  # for modules with a local variable called labels

# PostgreSQL only (SQLite has no sequences; its one processor counts its own): advanced by every
# processor's write for each event it stored and each label it learned, so the trainer knows
# how much the group saw without counting the tables. Not transactional: a write tried again
# counts twice, which only brings a refit forward.
events_scored = Sequence("events_scored", metadata=metadata)
labels_learned = Sequence("labels_learned", metadata=metadata)
# PostgreSQL only: the models' version numbers, drawn by whichever processor fits them, so two
# processors that both believe they hold the trainer's lease (the lease moving while the old
# holder has not noticed yet) never number two models alike.
model_version = Sequence("model_version", metadata=metadata)
SEQUENCES = (events_scored, labels_learned, model_version)
# A database whose models were numbered before model_version existed: the new sequence starts
# past them.
MODEL_VERSION_PAST_STORED = (
    "select setval('model_version', newest) from"
    " (select max(version) as newest from model_versions) stored where newest is not null"
)

SQLITE_BUSY_TIMEOUT_MS = 30_000
BUSY_TIMEOUT_PRAGMA = f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}"


def engine_url(database_url: str) -> str:
    """``database_url`` as SQLAlchemy opens it: PostgreSQL through psycopg 3, whatever driver
    the URL names or omits (``postgresql://``, ``postgres://``, ``postgresql+psycopg://``)."""
    scheme, sep, rest = database_url.partition("://")
    if sep and scheme.split("+")[0] in ("postgresql", "postgres"):
        return f"postgresql+psycopg://{rest}"
    return database_url


def shown_url(database_url: str | URL) -> str:
    """``database_url`` without its password, for messages and logs."""
    try:
        return make_url(database_url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - not a URL: say it as given
        return database_url


def make_engine(database_url: str, *, auto_checkpoint: bool = True) -> Engine:
    """An engine with the tables created; SQLite in WAL mode with a busy timeout.

    ``auto_checkpoint=False`` (SQLite): this engine's commits never copy the write-ahead log back
    into the database file; whoever asks for that runs the checkpoints (the processor's SQLite
    writer process)."""
    url = make_url(engine_url(database_url))
    if url.get_backend_name() not in ("sqlite", "postgresql"):
        raise UnsupportedDatabase(
            f"DATABASE_URL={shown_url(url)}: {url.get_backend_name()} is not supported; use "
            "sqlite:///path/to/finance.db or postgresql://user@host/database"
        )
    # PostgreSQL: a pooled connection the server closed (a restart) is replaced, not used.
    engine = create_engine(url, pool_pre_ping=url.get_backend_name() == "postgresql")
    if engine.dialect.name == "sqlite":

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record):
            cur = dbapi_conn.cursor()
            cur.execute(BUSY_TIMEOUT_PRAGMA)  # PRAGMA takes no parameters; a module constant
            # A new database only (an existing file keeps its own): rows of about 1.2 KB fit
            # 13 to a 16 KB page, 3 to SQLite's default 4 KB; the writer's insert took a third
            # less time (docs/benchmarks.md). Before WAL mode, which fixes the page size.
            cur.execute("PRAGMA page_size=16384")
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            if not auto_checkpoint:
                cur.execute("PRAGMA wal_autocheckpoint=0")
            cur.close()

    _create_tables(engine)
    return engine


def ensure_database(database_url: str) -> bool:
    """Create the PostgreSQL database that ``database_url`` names if it does not exist yet
    (SQLite creates its file itself): True when it was created."""
    import psycopg
    from psycopg import sql

    url = make_url(engine_url(database_url))
    if url.get_backend_name() != "postgresql":
        return False
    try:  # a user may be allowed into their own database only: look there first
        psycopg.connect(url.set(drivername="postgresql").render_as_string(hide_password=False)).close()
        return False
    except psycopg.OperationalError as exc:
        if "does not exist" not in str(exc):
            raise UnreachableDatabase(f"cannot connect to {shown_url(url)}: {exc}") from None
    with _maintenance(url) as conn:
        try:
            conn.execute(sql.SQL("create database {}").format(sql.Identifier(url.database)))
        except psycopg.errors.DuplicateDatabase:
            return False  # another process made it meanwhile
        except psycopg.Error as exc:
            raise UnreachableDatabase(f"cannot create the database {url.database}: {exc}") from None
    return True


def drop_database(database_url: str) -> None:
    """Drop the PostgreSQL database that ``database_url`` names, connections and all (tests and
    benchmarks make databases of their own)."""
    from psycopg import sql

    url = make_url(engine_url(database_url))
    with _maintenance(url) as conn:
        conn.execute(
            sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(url.database))
        )


def _maintenance(url: URL):
    """An autocommit connection to the server's ``postgres`` database, as ``url``'s user."""
    import psycopg

    admin = url.set(drivername="postgresql", database="postgres")
    try:
        return psycopg.connect(admin.render_as_string(hide_password=False), autocommit=True)
    except psycopg.Error as exc:
        shown = url.render_as_string(hide_password=True)
        raise UnreachableDatabase(f"cannot reach the PostgreSQL server of {shown}: {exc}") from None


def drop_tables(database_url: str) -> None:
    """Remove what the processor stored (``run --fresh``): the SQLite file, or the tables in
    PostgreSQL (with the dbt views over them; dbt's own tables are rebuilt by a full refresh)."""
    url = engine_url(database_url)
    if url.startswith("sqlite:///"):
        path = url.removeprefix("sqlite:///")
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
        return
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            for table in reversed(metadata.sorted_tables):
                # CASCADE: dbt's staging views select from these tables. The names are the
                # tables' own, quoted by the dialect.
                name = engine.dialect.identifier_preparer.format_table(table)
                conn.exec_driver_sql(f"drop table if exists {name} cascade")
            for sequence in SEQUENCES:
                conn.exec_driver_sql(f"drop sequence if exists {sequence.name}")
    finally:
        engine.dispose()


CREATE_LOCK = 0x66726175  # PostgreSQL advisory lock held while the tables are created


def _create_tables(engine: Engine) -> None:
    """create_all, safe when several processes open a new database at once.

    create_all checks which tables exist, then creates the rest: two processes (the processor
    and a reader, say) could both see a table missing. PostgreSQL: the creators take turns
    under an advisory lock. SQLite: the slower one's CREATE fails with "already exists" (the
    other created it), or finds the new file locked: look again.
    """
    if engine.dialect.name == "postgresql":
        with engine.begin() as conn:
            conn.execute(select(func.pg_advisory_xact_lock(CREATE_LOCK)))
            numbered = inspect(conn).has_sequence(model_version.name)
            metadata.create_all(conn)
            if not numbered:
                conn.exec_driver_sql(MODEL_VERSION_PAST_STORED)
    else:
        retry(lambda: metadata.create_all(engine), transient=_sqlite_transient, first_wait_s=0.05)
    _check_columns(engine)


def _sqlite_transient(exc: BaseException) -> bool:
    # A new SQLite file: switching it to WAL takes an exclusive lock that another opener may
    # hold for a moment, and SQLite can refuse that without waiting.
    return isinstance(exc, OperationalError) and (
        "already exists" in str(exc.orig) or is_lock_error(exc.orig)
    )


class OutdatedDatabase(RuntimeError):
    pass


class UnsupportedDatabase(ValueError):
    pass


class UnreachableDatabase(RuntimeError):
    pass


def _check_columns(engine: Engine) -> None:
    """Refuse a database written by an older version instead of failing on the first insert."""
    from sqlalchemy import inspect

    inspector = inspect(engine)
    for table in metadata.sorted_tables:
        have = {c["name"]: c for c in inspector.get_columns(table.name)}
        missing = [c.name for c in table.columns if c.name not in have]
        # a column that may be null now (an unknown location) but was not then
        required = [
            c.name for c in table.columns
            if c.name in have and c.nullable and not c.primary_key and not have[c.name]["nullable"]
        ]  # fmt: skip
        if missing or required:
            lacks = f"lacks columns {missing}" if missing else f"requires a value in {required}"
            raise OutdatedDatabase(
                f"{engine.url.database}: table {table.name} {lacks} (written by an older "
                "fraudstream); use a new file or `run --fresh`"
            )
