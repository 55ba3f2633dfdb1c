"""The embedded broker starts, serves, and leaves no process behind."""

import os
import signal
import subprocess
import sys
import time

import pytest
from confluent_kafka.admin import AdminClient

from fraudstream.broker import BrokerError, EmbeddedBroker, wait_for_cluster

pytestmark = pytest.mark.integration


def alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as fh:  # a zombie is not alive
        return fh.read().split()[2] != "Z"


def test_broker_serves_metadata_and_stops_cleanly():
    with EmbeddedBroker() as broker:
        pid = broker.proc.pid
        meta = AdminClient({"bootstrap.servers": broker.bootstrap}).list_topics(timeout=10)
        assert meta.brokers
    assert not alive(pid)


def test_broker_stops_when_the_block_raises():
    with pytest.raises(RuntimeError), EmbeddedBroker() as broker:
        pid = broker.proc.pid
        raise RuntimeError("a failing test")
    assert not alive(pid)


def test_broker_dies_with_a_killed_parent(tmp_path):
    script = (
        "from fraudstream.broker import EmbeddedBroker; import time, sys\n"
        "b = EmbeddedBroker().start(); print(b.proc.pid, flush=True); time.sleep(600)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    child = int(parent.stdout.readline())
    assert alive(child)
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + 10
    while alive(child) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not alive(child)


def test_unreachable_cluster_is_a_clear_error():
    with pytest.raises(BrokerError, match="no Kafka broker answered on 127.0.0.1:1"):
        wait_for_cluster("127.0.0.1:1", timeout_s=1)
