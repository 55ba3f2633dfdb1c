"""The dashboard tests' fixtures: a scored database with its marts, a free port, and a real
headless Chromium (Debian chromium and chromium-driver)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from browsing import build_finance_db

from fraudstream.broker import free_port
from producer.generate import GeneratorConfig, write_csv

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


@pytest.fixture(scope="session")
def finance_db(tmp_path_factory) -> Path:
    """Four months of scored transactions, one dead letter, and the dbt marts built."""
    root = tmp_path_factory.mktemp("dashboard")
    csv = root / "transactions.csv"
    write_csv(csv, GeneratorConfig(rows=8000, days=120, seed=21))
    return build_finance_db(csv, root)


@pytest.fixture
def port() -> int:
    return free_port()


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
