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
