"""Helpers of the dashboard tests: a scored database with the dbt marts, Datasette serving it."""

from __future__ import annotations

import contextlib
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path

from batch.build import dbt_build
from fraudstream.schema import Transaction
from fraudstream.settings import Settings
from producer.csv_source import read_transactions
from stream_processor.core import RawMessage, ScoringCore
from stream_processor.sink import SinkStore, open_sink


def build_finance_db(csv: Path, root: Path, warmup: int = 1000) -> Path:
    """Every valid row of ``csv`` scored and stored, one dead letter, and the dbt marts built."""
    db = root / "finance.db"
    settings = Settings.from_env({}, database_url=f"sqlite:///{db}", warmup_events=warmup,
                                 refit_every_events=3000, n_estimators=50)  # fmt: skip
    sink = open_sink(settings.database_url)
    core = ScoringCore(settings, SinkStore(sink, settings.account_history))
    txns = [t for _l, t in read_transactions(csv) if isinstance(t, Transaction)]
    msgs = [RawMessage(t.encode(), offset=i) for i, t in enumerate(txns)]
    msgs.append(RawMessage(b"not json", offset=len(msgs)))
    for i in range(0, len(msgs), 500):
        sink.write(core.process(msgs[i : i + 500]))
    sink.write(core.wait_for_refit())
    sink.close()
    outcome = dbt_build(db, target_dir=root / "dbt")
    assert outcome.ok, outcome.describe()
    return db


def wait_until_served(base: str, proc: subprocess.Popen, path: str = "/-/versions.json") -> None:
    deadline = time.monotonic() + 30
    while True:
        try:
            urllib.request.urlopen(base + path, timeout=2).close()
            return
        except urllib.error.HTTPError:
            return  # it answers (a login can stand in front of every page)
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"datasette did not start: {proc.stderr.read()!r}") from None
            time.sleep(0.2)


@contextlib.contextmanager
def serve(command: Sequence[str], port: int, env: dict | None = None) -> Iterator[str]:
    """Run ``command`` (a Datasette listening on ``port``) until the test ends."""
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_served(base, proc)
        yield base
    finally:
        proc.terminate()
        proc.wait(10)



def count(driver, css: str) -> int:
    return driver.execute_script(f"return document.querySelectorAll({css!r}).length")
