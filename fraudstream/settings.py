"""Every setting of the pipeline, declared once with its environment variable, type and meaning.

Build one with :meth:`Settings.from_env`; it is frozen so that every component sees the same
values, and a value that does not fit its type is refused naming the variable.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import Field, SecretStr, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict


def _setting(env: str, default: Any, doc: str, **constraints: Any) -> Any:
    return Field(default, validation_alias=env, description=doc, **constraints)


SECRET_MASK = "********"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(frozen=True, extra="forbid", env_ignore_empty=True)

    @classmethod
    def settings_customise_sources(cls, settings_cls, init_settings, **_sources):
        """Only the values given: :meth:`from_env` reads the environment it is handed, and a
        bare ``Settings()`` is the defaults, whatever the process environment says."""
        return (init_settings,)

    bootstrap_servers: str | None = _setting(
        "KAFKA_BOOTSTRAP_SERVERS",
        None,
        "Kafka bootstrap servers (host:port,...). Unset: `run` starts the embedded Tansu broker.",
    )
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] | None = _setting(
        "KAFKA_SECURITY_PROTOCOL",
        None,
        "PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL; passed to every Kafka client.",
    )
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = _setting(
        "KAFKA_SASL_MECHANISM", None, "PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512."
    )
    sasl_username: str | None = _setting("KAFKA_SASL_USERNAME", None, "SASL user name.")
    sasl_password: SecretStr | None = _setting(
        "KAFKA_SASL_PASSWORD", None, "SASL password (never printed)."
    )
    ssl_ca_location: str | None = _setting(
        "KAFKA_SSL_CA_LOCATION",
        None,
        "CA certificate file (PEM) that signed the brokers' certificates.",
    )
    pseudonym_key: SecretStr | None = _setting(
        "PSEUDONYM_KEY",
        None,
        "Secret for `produce --pseudonymize`: account ids leave as keyed HMACs (never printed).",
    )
    transactions_topic: str = _setting(
        "TRANSACTIONS_TOPIC", "transactions", "Topic the producer replays the CSV onto."
    )
    alerts_topic: str = _setting("ALERTS_TOPIC", "alerts", "Topic of flagged transactions.")
    dlq_topic: str = _setting(
        "DLQ_TOPIC", "transactions.dlq", "Topic of undecodable or invalid events (original bytes)."
    )
    labels_topic: str = _setting(
        "LABELS_TOPIC",
        "labels",
        "Topic of confirmed outcomes (transaction_id, is_fraud, labelled_at), e.g. chargebacks.",
    )
    merchants_topic: str = _setting(
        "MERCHANTS_TOPIC",
        "merchants",
        "Compacted topic of merchant profiles shared by several processors (one share each "
        "partition and merchant).",
    )
    learned_topic: str = _setting(
        "LEARNED_TOPIC",
        "learned",
        "What each of several processors learned, for the others: labels (merchant, account, "
        "outcome) and drift in its anomaly scores.",
    )
    rules_topic: str = _setting(
        "RULES_TOPIC",
        "rules",
        "Topic of the fraud rules, kept whole: one rule set a message, its offset its version, "
        "the newest live (`fraudstream rules apply`).",
    )
    label_delay_days: float = _setting(
        "LABEL_DELAY_DAYS",
        7.0,
        "`produce --labels`: event-time delay after which each row's is_fraud is sent as a label.",
    )
    topic_partitions: int = _setting(
        "TOPIC_PARTITIONS",
        4,
        "Partitions of the transactions topic when this tool creates it.",
        gt=0,
    )
    consumer_group: str = _setting(
        "CONSUMER_GROUP", "fraud-stream-processor", "Consumer group of the stream processor."
    )
    session_timeout_ms: int = _setting(
        "KAFKA_SESSION_TIMEOUT_MS",
        6000,
        "Consumer session timeout in ms. Tansu's JoinGroup waits about half of it.",
    )
    runtime: Literal["confluent", "faust"] = _setting(
        "PROCESSOR_RUNTIME",
        "confluent",
        "Stream processor runtime: confluent (batch consumer) or faust (faust-streaming agent).",
    )
    database_url: str = _setting(
        "DATABASE_URL",
        "sqlite:///finance.db",
        "The database: a SQLite file (sqlite:///path, one machine) or PostgreSQL "
        "(postgresql://user@host/name).",
    )
    batch_size: int = _setting(
        "BATCH_SIZE", 1000, "Most events scored together in one batch.", gt=0
    )
    batch_timeout_s: float = _setting(
        "BATCH_TIMEOUT_S",
        0.005,
        "Seconds to wait for a batch to fill before scoring what came (latency at low rates).",
    )
    warmup_events: int = _setting(
        "WARMUP_EVENTS",
        2000,
        "Events held (durably, in the pending_events table) until the first model is fit on them.",
    )
    warmup_idle_s: float = _setting(
        "WARMUP_IDLE_S",
        5.0,
        "Seconds without new events after which the first model is fit on what is held.",
    )
    refit_every_events: int = _setting(
        "REFIT_EVERY_EVENTS", 10000, "Refit the model after this many scored events (0 = never)."
    )
    refit_interval_s: float = _setting(
        "REFIT_INTERVAL_S", 600.0, "Refit after this many seconds with new events (0 = never)."
    )
    refit_min_interval_s: float = _setting(
        "REFIT_MIN_INTERVAL_S",
        5.0,
        "At least this many seconds from one refit's start to the next one's for "
        "REFIT_EVERY_EVENTS (a fast feed would otherwise keep refitting back to back; 0 = none).",
    )
    training_window: int = _setting(
        "TRAINING_WINDOW", 50000, "Most recent feature vectors a refit trains on."
    )
    flag_quantile: float = _setting(
        "FLAG_QUANTILE",
        0.99,
        "The Isolation Forest flags events above this quantile of its last 20,000 scores (of "
        "its training scores until it has 1,000): 1 - this is its share of the feed flagged.",
        gt=0,
        lt=1,
    )
    rules_file: str = _setting(
        "RULES_FILE",
        "",
        "The fraud rules a processor publishes when the rules topic holds none (docs/rules.md); "
        "empty: the shipped rules; 'none': no rules.",
    )
    n_estimators: int = _setting("N_ESTIMATORS", 100, "Trees in the Isolation Forest.")
    drift_delta: float = _setting(
        "DRIFT_DELTA",
        0.002,
        "ADWIN confidence on the anomaly-score stream; a detected change refits early (0 = off).",
    )
    supervised_refit_labels: int = _setting(
        "SUPERVISED_REFIT_LABELS",
        5000,
        "Refit the supervised model after this many new labels matched to scored events.",
    )
    supervised_min_frauds: int = _setting(
        "SUPERVISED_MIN_FRAUDS", 20, "Confirmed frauds needed before the first supervised fit."
    )
    supervised_flag_threshold: float = _setting(
        "SUPERVISED_FLAG_THRESHOLD",
        0.5,
        "Events whose supervised fraud probability reaches this are flagged too.",
    )
    supervised_window: int = _setting(
        "SUPERVISED_WINDOW", 200000, "Most recent labelled events a supervised refit trains on."
    )
    label_memory: int = _setting(
        "LABEL_MEMORY",
        100000,
        "Labels kept waiting for their event when it was not scored yet (another partition lags).",
    )
    model_seed: int = _setting("MODEL_SEED", 42, "Random seed of the Isolation Forest.")
    max_accounts: int = _setting(
        "MAX_ACCOUNTS",
        100_000,
        "Accounts whose state is kept in memory; the least recently seen are evicted, and rebuilt "
        "from their stored events (the newest ACCOUNT_HISTORY) when they come back.",
    )
    account_history: int = _setting(
        "ACCOUNT_HISTORY", 50, "Recent transactions kept per account for the features."
    )
    web_port: int = _setting(
        "PROCESSOR_WEB_PORT",
        6066,
        "Port of the processor's health page (0 = none).",
        ge=0,
        le=65535,
    )
    web_host: str = _setting("PROCESSOR_WEB_HOST", "127.0.0.1", "Address of the health page.")
    dashboard_user: str = _setting(
        "DASHBOARD_USER", "analyst", "User name of the dashboard's login."
    )
    dashboard_password_hash: SecretStr | None = _setting(
        "DASHBOARD_PASSWORD_HASH",
        None,
        "Password hash of the dashboard's login, from `datasette hash-password` (never printed). "
        "Set, the dashboard asks for a login; needed to serve it beyond 127.0.0.1.",
    )
    dashboard_password_hash_file: str | None = _setting(
        "DASHBOARD_PASSWORD_HASH_FILE",
        None,
        "A file holding that hash instead (a Docker secret, say).",
    )

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Settings from ``env`` (default ``os.environ``; an empty value is unset), then
        ``overrides`` (None = keep)."""
        env = os.environ if env is None else env
        given = {name: env.get(f.validation_alias) for name, f in cls.model_fields.items()}
        values = {name: v for name, v in given.items() if v}
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls._validated(values)

    @classmethod
    def _validated(cls, values: dict[str, Any]) -> Settings:
        """``values`` by field name, checked; a value that does not fit names its variable."""
        try:
            return cls(**{cls.model_fields[name].validation_alias: v for name, v in values.items()})
        except ValidationError as exc:
            error = exc.errors()[0]
            variable = error["loc"][0] if error["loc"] else "settings"
            raise ValueError(f"{variable}={error['input']!r}: {error['msg']}") from None
        except KeyError as exc:
            raise TypeError(f"Settings has no field {exc.args[0]!r}") from None

    def to_env(self) -> dict[str, str]:
        """The environment that rebuilds these settings in a child process."""
        return {
            f.validation_alias: reveal(getattr(self, name))
            for name, f in type(self).model_fields.items()
            if getattr(self, name) is not None
        }

    def to_env_all(self) -> list[str]:
        """Current values in declaration order ('' when unset), secrets masked, for printing."""
        return [
            "" if value is None else SECRET_MASK if isinstance(value, SecretStr) else str(value)
            for _name, value in self
        ]

    def kafka_config(self) -> dict[str, str]:
        """librdkafka settings every confluent-kafka client starts from (bootstrap + security)."""
        config = {"bootstrap.servers": self.bootstrap_servers or ""}
        for key, value in (
            ("security.protocol", self.security_protocol),
            ("sasl.mechanisms", self.sasl_mechanism),
            ("sasl.username", self.sasl_username),
            ("sasl.password", reveal(self.sasl_password)),
            ("ssl.ca.location", self.ssl_ca_location),
        ):
            if value:
                config[key] = value
        return config

    def replace(self, **changes: Any) -> Settings:
        return self._validated({**dict(self), **changes})

    @property
    def sqlite_path(self) -> str | None:
        """The database file when the sink is SQLite, else None."""
        prefix = "sqlite:///"
        return self.database_url[len(prefix) :] if self.database_url.startswith(prefix) else None


def reveal(value: Any) -> str | None:
    """A setting's value as text, a secret's included: for clients, never for printing."""
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    return None if value is None else str(value)


def describe() -> list[tuple[str, str, str]]:
    """(env name, default, meaning) for every setting, for docs/settings.md and ``--help``."""
    return [
        (f.validation_alias, repr(f.default), f.description) for f in Settings.model_fields.values()
    ]
