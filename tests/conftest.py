"""Shared fixtures: the embedded broker (one per session) and per-test settings.

Each test that touches Kafka gets its own topics and consumer group (uuid names), and its own
SQLite file, so tests never see each other's events.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

from fraudstream.broker import EmbeddedBroker, ensure_topics
from fraudstream.settings import Settings
from producer.generate import GeneratorConfig, write_csv


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory) -> str:
    """A real Kafka-protocol broker: KAFKA_BOOTSTRAP_SERVERS if set, else embedded Tansu."""
    if os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        yield os.environ["KAFKA_BOOTSTRAP_SERVERS"]
        return
    log = tmp_path_factory.mktemp("broker") / "broker.log"
    with EmbeddedBroker(log_path=log) as broker:
        yield broker.bootstrap


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """Settings for a test without Kafka: a private SQLite file, fast refits."""
    env = {k: v for k, v in os.environ.items() if k != "KAFKA_BOOTSTRAP_SERVERS"}
    return Settings.from_env(
        env,
        database_url=f"sqlite:///{tmp_path / 'finance.db'}",
        warmup_events=200,
        warmup_idle_s=1.0,
        refit_every_events=300,
        refit_min_interval_s=0.0,
        training_window=2000,
        n_estimators=50,
    )


@pytest.fixture
def kafka_settings(settings: Settings, kafka_bootstrap: str) -> Settings:
    """``settings`` on the broker, with topics and a consumer group of this test's own."""
    tag = uuid.uuid4().hex[:10]
    s = settings.replace(
        bootstrap_servers=kafka_bootstrap,
        transactions_topic=f"transactions-{tag}",
        alerts_topic=f"alerts-{tag}",
        dlq_topic=f"transactions.dlq-{tag}",
        labels_topic=f"labels-{tag}",
        merchants_topic=f"merchants-{tag}",
        learned_topic=f"learned-{tag}",
        rules_topic=f"rules-{tag}",
        consumer_group=f"processor-{tag}",
        topic_partitions=2,
        web_port=0,
        batch_timeout_s=0.2,
    )
    ensure_topics(kafka_bootstrap, s)
    return s


@pytest.fixture(scope="session")
def small_csv(tmp_path_factory) -> Path:
    """1,500 generated rows with labels (is_fraud, fraud_scenario)."""
    path = tmp_path_factory.mktemp("data") / "small.csv"
    write_csv(path, GeneratorConfig(rows=1500, days=20, seed=11))
    return path


# PostgreSQL: a real server (127.0.0.1:5432, user postgres, trust authentication, as .ci/run
# starts it; TEST_POSTGRES_URL points elsewhere). Each test gets a database of its own.
POSTGRES_SERVER = os.environ.get("TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432")


@pytest.fixture
def postgres_url() -> str:
    """A new PostgreSQL database for this test, dropped after it."""
    from fraudstream.tables import drop_database, ensure_database

    url = f"{POSTGRES_SERVER.rstrip('/')}/fraudstream_test_{uuid.uuid4().hex[:10]}"
    try:
        ensure_database(url)
    except Exception as exc:  # noqa: BLE001 - say what to start, whatever the driver said
        pytest.fail(
            f"PostgreSQL is not reachable at {POSTGRES_SERVER} ({exc}); start it with "
            "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start, "
            "or set TEST_POSTGRES_URL"
        )
    yield url
    drop_database(url)


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request, tmp_path) -> str:
    """Each test that takes it runs on both sinks: a SQLite file, a PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'finance.db'}"
    return request.getfixturevalue("postgres_url")


@pytest.fixture
def db_settings(settings: Settings, database_url: str) -> Settings:
    """``settings`` on each database in turn (see ``database_url``)."""
    return settings.replace(database_url=database_url)
