"""Security basics: Kafka security settings reach every client, secrets are never printed,
SQL is parameterised, and account ids can leave the producer pseudonymised."""

import hashlib
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from fraudstream.cli import main
from fraudstream.settings import Settings
from producer.pseudonymize import PseudonymKeyError, check_key, pseudonymize
from stream_processor.faust_app import faust_credentials

ROOT = Path(__file__).resolve().parents[2]
SECURE = {
    "KAFKA_BOOTSTRAP_SERVERS": "kafka-1:9093",
    "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
    "KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
    "KAFKA_SASL_USERNAME": "fraud-bot",
    "KAFKA_SASL_PASSWORD": "s3cret-Pa55",
    "PSEUDONYM_KEY": "another-long-secret-key",
    "DASHBOARD_PASSWORD_HASH": "pbkdf2_sha256$480000$5a1t$HASHED",
}


def test_security_settings_pass_through_to_confluent_clients():
    config = Settings.from_env(SECURE).kafka_config()
    assert config == {
        "bootstrap.servers": "kafka-1:9093",
        "security.protocol": "SASL_SSL",
        "sasl.mechanisms": "SCRAM-SHA-512",
        "sasl.username": "fraud-bot",
        "sasl.password": "s3cret-Pa55",
    }


def test_security_settings_pass_through_to_faust():
    creds = faust_credentials(Settings.from_env(SECURE))
    assert (creds.username, creds.password, creds.mechanism.value) == (
        "fraud-bot",
        "s3cret-Pa55",
        "SCRAM-SHA-512",
    )
    assert creds.ssl_context is not None
    assert faust_credentials(Settings.from_env({})) is None
    with pytest.raises(ValueError, match="KAFKA_SECURITY_PROTOCOL='CARRIER_PIGEON'.*'SASL_SSL'"):
        Settings.from_env({"KAFKA_SECURITY_PROTOCOL": "CARRIER_PIGEON"})


def test_every_kafka_client_starts_from_the_shared_config():
    # A client built from a bare bootstrap address would silently drop SASL/SSL.
    offenders = []
    for path in [
        *ROOT.glob("fraudstream/*.py"),
        *ROOT.glob("producer/*.py"),
        *ROOT.glob("stream_processor/*.py"),
    ]:
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if re.search(r"(Consumer|Producer|AdminClient)\(\{\s*\"bootstrap\.servers\"", line):
                offenders.append(f"{path.name}:{n}")
    assert offenders == []


def test_secrets_are_never_printed():
    settings = Settings.from_env(SECURE)
    assert "s3cret-Pa55" not in repr(settings) and "another-long-secret" not in repr(settings)
    assert "HASHED" not in repr(settings)
    out = CliRunner().invoke(main, ["settings"], env=SECURE).output
    assert "s3cret-Pa55" not in out and "another-long-secret" not in out and "HASHED" not in out
    assert "KAFKA_SASL_PASSWORD        ********" in out
    assert "DASHBOARD_PASSWORD_HASH    ********" in out


def test_sql_is_parameterised():
    # No SQL text built from values: statements are SQLAlchemy Core or fixed strings.
    pattern = re.compile(r"execute\((f|\"[^\"]*\"\s*%|\"[^\"]*\"\.format)")
    for path in [
        *ROOT.glob("fraudstream/*.py"),
        *ROOT.glob("stream_processor/*.py"),
        *ROOT.glob("batch/*.py"),
    ]:
        assert not pattern.search(path.read_text()), path.name


def test_pseudonyms_are_keyed_stable_and_not_a_plain_hash():
    key = check_key("k" * 16)
    a = pseudonymize("AC000123", key)
    assert a == pseudonymize("AC000123", key) and a.startswith("acct_")
    assert a != pseudonymize("AC000123", check_key("j" * 16))
    assert a[5:] not in hashlib.sha256(b"AC000123").hexdigest()
    with pytest.raises(PseudonymKeyError, match="at least 16"):
        check_key("short")
    with pytest.raises(PseudonymKeyError, match="PSEUDONYM_KEY"):
        check_key(None)


@pytest.mark.integration
def test_produce_pseudonymize_replaces_account_ids_on_the_topic(kafka_settings, small_csv):
    env = {**kafka_settings.to_env(), "PSEUDONYM_KEY": "another-long-secret-key"}
    done = subprocess.run(
        [sys.executable, "-m", "fraudstream", "produce", "--csv", str(small_csv), "--limit", "50",
         "--pseudonymize", "--no-progress"],
        env={**__import__("os").environ, **env}, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    from confluent_kafka import Consumer, TopicPartition

    c = Consumer(
        {**kafka_settings.kafka_config(), "group.id": "pseudo", "enable.auto.commit": False}
    )
    topic = kafka_settings.transactions_topic
    parts = c.list_topics(topic, timeout=10).topics[topic].partitions
    c.assign([TopicPartition(topic, p, 0) for p in parts])
    msgs = []
    while len(msgs) < 50:
        batch = c.consume(100, timeout=5)
        assert batch, f"only {len(msgs)} of 50 events arrived"
        msgs.extend(m for m in batch if not m.error())
    c.close()
    ids = {json.loads(m.value())["account_id"] for m in msgs}
    assert all(i.startswith("acct_") for i in ids)
    assert {m.key().decode() for m in msgs} == ids
    assert "another-long-secret-key" not in done.stdout + done.stderr
