"""Opening the database: the schema is created once, whoever opens a new file first."""

import sqlite3
import threading

import pytest

from fraudstream.tables import OutdatedDatabase, make_engine, metadata


def test_many_openers_of_a_new_database_all_get_the_schema(tmp_path):
    # The processor and a reader (a test, the dashboard, the benchmark's poller) may open a new
    # file at the same moment; each checks which tables exist, then creates the rest.
    for round_ in range(5):
        url = f"sqlite:///{tmp_path / f'new-{round_}.db'}"
        start = threading.Barrier(8)
        errors: list[BaseException] = []

        def open_it(url=url, start=start, errors=errors):
            start.wait()
            try:
                make_engine(url).dispose()
            except BaseException as exc:  # noqa: BLE001 - collected and asserted below
                errors.append(exc)

        threads = [threading.Thread(target=open_it) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert errors == []
        with sqlite3.connect(tmp_path / f"new-{round_}.db") as conn:
            tables = {
                r[0] for r in conn.execute("select name from sqlite_master where type='table'")
            }
        assert set(metadata.tables) <= tables


def test_a_new_database_gets_16_kb_pages_and_an_existing_one_keeps_its_own(tmp_path):
    from sqlalchemy import text

    make_engine(f"sqlite:///{tmp_path / 'new.db'}").dispose()
    with sqlite3.connect(tmp_path / "new.db") as conn:
        assert conn.execute("pragma page_size").fetchone() == (16384,)
        assert conn.execute("pragma journal_mode").fetchone() == ("wal",)
    with sqlite3.connect(tmp_path / "old.db") as conn:  # made by an earlier version
        conn.execute("pragma page_size=4096")
        conn.execute("create table kept (x)")
        conn.execute("insert into kept values (1)")
    engine = make_engine(f"sqlite:///{tmp_path / 'old.db'}")
    with engine.begin() as conn:
        assert conn.execute(text("pragma page_size")).scalar() == 4096
        assert conn.execute(text("select x from kept")).scalar() == 1
        conn.execute(text("insert into kept values (2)"))
    engine.dispose()
    with sqlite3.connect(tmp_path / "old.db") as conn:
        assert conn.execute("select count(*) from kept").fetchone() == (2,)
        assert set(metadata.tables) <= {
            r[0] for r in conn.execute("select name from sqlite_master where type='table'")
        }


def test_a_database_whose_models_were_numbered_before_the_version_sequence_numbers_past_them(
    postgres_url,
):
    from sqlalchemy import text

    from fraudstream.tables import model_versions

    engine = make_engine(postgres_url)
    with engine.begin() as conn:
        conn.exec_driver_sql("drop sequence model_version")
        conn.execute(model_versions.insert().values(
            version=7, kind="isolation_forest", fitted_at=0.0, reason="initial", training_rows=1,
            threshold=0.5, fit_seconds=0.0, model=b"", feature_names="[]"))  # fmt: skip
    engine.dispose()
    engine = make_engine(postgres_url)
    with engine.begin() as conn:
        assert conn.execute(text("select nextval('model_version')")).scalar() == 8
    engine.dispose()
    engine = make_engine(postgres_url)  # opened again: the sequence goes on where it was
    with engine.begin() as conn:
        assert conn.execute(text("select nextval('model_version')")).scalar() == 9
    engine.dispose()


def test_a_database_that_requires_a_location_is_refused_with_what_to_do(postgres_url):
    make_engine(postgres_url).dispose()
    engine = make_engine(postgres_url)
    with engine.begin() as conn:  # as written before a location could be unknown
        conn.exec_driver_sql("alter table transactions alter column location set not null")
    engine.dispose()
    with pytest.raises(
        OutdatedDatabase, match=r"transactions requires a value in \['location'\].*--fresh"
    ):
        make_engine(postgres_url)
