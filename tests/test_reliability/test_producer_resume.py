"""Kill the producer mid-replay and restart it with --resume: no gap, duplicates absorbed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from fraudstream.run import start_processor, stop_processor, wait_until_processed
from fraudstream.tables import make_engine
from fraudstream.topics import read_topic
from producer.generate import GeneratorConfig, write_csv

pytestmark = [pytest.mark.integration, pytest.mark.slow]
ROWS = 30_000


def produce_cmd(s, csv, checkpoint, *extra):
    return subprocess.Popen(
        [sys.executable, "-m", "fraudstream", "produce", "--csv", str(csv), "--rate", "8000",
         "--checkpoint", str(checkpoint), "--no-progress", *extra],
        env={**os.environ, **s.to_env()}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def test_killed_producer_resumes_without_a_gap(kafka_settings, tmp_path):
    s = kafka_settings.replace(runtime="confluent", warmup_events=500, refit_every_events=0)
    csv = tmp_path / "feed.csv"
    write_csv(csv, GeneratorConfig(rows=ROWS, days=30, seed=8))
    checkpoint = tmp_path / "feed.checkpoint.json"

    first = produce_cmd(s, csv, checkpoint)
    deadline = time.monotonic() + 60
    while not checkpoint.exists() or json.loads(checkpoint.read_text())["line"] < 5000:
        assert first.poll() is None and time.monotonic() < deadline, (
            first.stderr.read() if first.poll() else ""
        )
        time.sleep(0.1)
    first.send_signal(signal.SIGKILL)
    first.wait()
    killed_at = json.loads(checkpoint.read_text())["line"]
    assert 5000 <= killed_at < ROWS + 1

    second = produce_cmd(s, csv, checkpoint, "--resume")
    out, err = second.communicate(timeout=120)
    assert second.returncode == 0, err
    assert json.loads(checkpoint.read_text())["line"] == ROWS + 1  # the last data line

    msgs = read_topic(s, s.transactions_topic)
    ids = [json.loads(m.value())["transaction_id"] for m in msgs]
    assert len(set(ids)) == ROWS  # no gap
    duplicates = len(ids) - ROWS
    assert 0 <= duplicates < ROWS // 2  # only what was in flight at the kill

    offsets = {}
    for m in msgs:
        offsets[m.partition()] = max(offsets.get(m.partition(), -1), m.offset())
    engine = make_engine(s.database_url)
    proc = start_processor(s, tmp_path / "processor.log")
    try:
        wait_until_processed(s, engine, [proc], [tmp_path / "processor.log"], offsets, timeout_s=300)
    finally:
        stop_processor(proc)
    with engine.connect() as conn:
        stored = conn.exec_driver_sql(
            "select count(*), count(distinct transaction_id) from transactions"
        ).one()
    engine.dispose()
    assert tuple(stored) == (ROWS, ROWS)  # the duplicates were absorbed
