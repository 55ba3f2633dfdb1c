"""The bundled dashboard in a real headless Chromium: the charts render with data."""

from __future__ import annotations

import os
import shutil

import pytest
from browsing import count, serve

from fraudstream.dashboard import DASHBOARD_PATH, datasette_command, metadata_for

pytestmark = pytest.mark.browser


@pytest.fixture
def served(finance_db, port):
    with serve(datasette_command(finance_db, port=port), port) as base:
        yield base


def test_dashboard_renders_every_chart_with_data(served, browser, finance_db, tmp_path):
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(served + DASHBOARD_PATH)
    checks = {
        "monthly spending line": "#chart-spending-trend svg .mark-line path",
        "monthly spending points": "#chart-spending-trend svg .mark-symbol path",
        "anomaly bars": "#chart-anomalies-per-day svg .mark-rect path",
        "flagged share points": "#chart-flagged-share svg .mark-symbol path",
        "rule hit bars": "#chart-rule-hits svg .mark-rect path",
        "rule quality rows": "#chart-rule-quality table tbody tr",
        "high-value rows": "#chart-high-value table tbody tr",
        "alert rows": "#chart-recent-alerts table tbody tr",
    }
    WebDriverWait(browser, 60).until(lambda d: all(count(d, css) > 0 for css in checks.values()))
    rendered = {name: count(browser, css) for name, css in checks.items()}
    assert rendered["monthly spending points"] >= 4  # four months of data
    assert rendered["anomaly bars"] >= 100  # about 120 days x 2 kinds, zero bars omitted
    assert rendered["flagged share points"] >= 100  # one a day
    assert rendered["rule hit bars"] >= 50  # the shipped rules hit on most days
    quality = browser.execute_script(
        "return document.querySelector('#chart-rule-quality').innerText"
    )
    assert "rapid_transactions" in quality and "precision" in quality
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
    import urllib.request

    sql = urllib.parse.quote("delete from transactions")
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(f"{served}/finance.json?sql={sql}", timeout=10)
    assert err.value.code in (400, 403)


def test_metadata_points_every_chart_at_the_served_file(tmp_path):
    meta = metadata_for(tmp_path / "other.db")
    charts = meta["plugins"]["datasette-dashboards"]["fraud-monitoring"]["charts"]
    assert {c["db"] for c in charts.values() if "db" in c} == {"other"}
