"""The bundled dashboard in a real headless Chromium: the charts render with data."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from batch.build import dbt_build
from fraudstream.broker import free_port
from fraudstream.dashboard import DASHBOARD_PATH, datasette_command, metadata_for
from fraudstream.schema import Transaction
from producer.csv_source import read_transactions
from producer.generate import GeneratorConfig, write_csv
from stream_processor.core import RawMessage, ScoringCore
from stream_processor.sink import Sink

pytestmark = pytest.mark.browser
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


@pytest.fixture(scope="module")
def finance_db(tmp_path_factory) -> Path:
    """Four months of scored transactions, one dead letter, and the dbt marts built."""
    from fraudstream.settings import Settings

    root = tmp_path_factory.mktemp("dashboard")
    csv = root / "transactions.csv"
    write_csv(csv, GeneratorConfig(rows=8000, days=120, seed=21))
    db = root / "finance.db"
    settings = Settings.from_env({}, database_url=f"sqlite:///{db}", warmup_events=1000,
                                 refit_every_events=3000, n_estimators=50)  # fmt: skip
    sink = Sink(settings.database_url)
    core = ScoringCore(settings, known_ids=sink.known_ids)
    txns = [t for _l, t in read_transactions(csv) if isinstance(t, Transaction)]
    msgs = [RawMessage(t.encode(), offset=i) for i, t in enumerate(txns)]
    msgs.append(RawMessage(b"not json", offset=len(msgs)))
    for i in range(0, len(msgs), 500):
        sink.write(core.process(msgs[i : i + 500]))
    sink.write(core.wait_for_refit())
    outcome = dbt_build(db, target_dir=root / "dbt")
    assert outcome.ok, outcome.describe()
    return db


@pytest.fixture
def served(finance_db):
    port = free_port()
    proc = subprocess.Popen(datasette_command(finance_db, port=port),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            urllib.request.urlopen(base + "/-/versions.json", timeout=2).close()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"datasette did not start: {proc.stderr.read()!r}") from None
            time.sleep(0.2)
    yield base
    proc.terminate()
    proc.wait(10)


@pytest.fixture
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    for path in (CHROMIUM, CHROMEDRIVER):
        assert shutil.which(path), f"{path} is missing: apt-get install chromium chromium-driver"
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-quic", "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--window-size=1500,1900"):  # fmt: skip
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    yield driver
    driver.quit()


def count(driver, css: str) -> int:
    return driver.execute_script(f"return document.querySelectorAll({css!r}).length")


def test_dashboard_renders_every_chart_with_data(served, browser, finance_db, tmp_path):
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(served + DASHBOARD_PATH)
    checks = {
        "monthly spending line": "#chart-spending-trend svg .mark-line path",
        "monthly spending points": "#chart-spending-trend svg .mark-symbol path",
        "anomaly bars": "#chart-anomalies-per-day svg .mark-rect path",
        "high-value rows": "#chart-high-value table tbody tr",
        "alert rows": "#chart-recent-alerts table tbody tr",
    }
    WebDriverWait(browser, 60).until(lambda d: all(count(d, css) > 0 for css in checks.values()))
    rendered = {name: count(browser, css) for name, css in checks.items()}
    assert rendered["monthly spending points"] >= 4  # four months of data
    assert rendered["anomaly bars"] >= 100  # about 120 days x 2 kinds, zero bars omitted
    kpi = browser.execute_script(
        "return document.querySelector('#chart-kpi-transactions p').innerText"
    )
    assert kpi.strip() == "8000"
    dead = browser.execute_script(
        "return document.querySelector('#chart-kpi-dead-letters p').innerText"
    )
    assert dead.strip() == "1"
    alerts_text = browser.execute_script(
        "return document.querySelector('#chart-recent-alerts').innerText"
    )
    assert "score" in alerts_text and "above threshold" in alerts_text  # reasons are shown

    shot = tmp_path / "dashboard.png"
    browser.save_screenshot(str(shot))
    assert shot.stat().st_size > 50_000
    if os.environ.get("DASHBOARD_SCREENSHOT"):  # to refresh docs/dashboard.png
        shutil.copy(shot, os.environ["DASHBOARD_SCREENSHOT"])


def test_dashboard_is_read_only(served):
    import urllib.error
    import urllib.parse

    sql = urllib.parse.quote("delete from transactions")
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(f"{served}/finance.json?sql={sql}", timeout=10)
    assert err.value.code in (400, 403)


def test_metadata_points_every_chart_at_the_served_file(tmp_path):
    meta = metadata_for(tmp_path / "other.db")
    charts = meta["plugins"]["datasette-dashboards"]["fraud-monitoring"]["charts"]
    assert {c["db"] for c in charts.values() if "db" in c} == {"other"}
