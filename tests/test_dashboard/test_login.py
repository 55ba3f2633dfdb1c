"""The dashboard's login: required beyond loopback, a login page first, data after."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
import urllib.error
import urllib.request

import pytest
from browsing import count, serve
from click.testing import CliRunner

from fraudstream.cli import main
from fraudstream.dashboard import DASHBOARD_PATH, Login, is_loopback
from fraudstream.settings import Settings

PASSWORD = "correct horse battery staple"


@pytest.fixture(scope="module")
def password_hash() -> str:
    done = subprocess.run([sys.executable, "-m", "datasette", "hash-password", "--no-confirm"],
                          input=PASSWORD, capture_output=True, text=True, check=True)  # fmt: skip
    return done.stdout.strip()


def no_login_env() -> dict:
    return {k: v for k, v in os.environ.items() if not k.startswith("DASHBOARD_")}


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.20", "dashboard.example.com"])
def test_a_host_beyond_loopback_without_a_login_is_refused_saying_how_to_set_one(
    finance_db, host
):
    result = CliRunner().invoke(
        main, ["dashboard", "--db", str(finance_db), "--host", host], env=no_login_env()
    )
    assert result.exit_code == 1
    assert f"refusing to serve the dashboard on {host}:8001 without a login" in result.output
    assert "DASHBOARD_PASSWORD_HASH" in result.output and "datasette hash-password" in result.output


def test_loopback_needs_no_login():
    assert all(is_loopback(h) for h in ("127.0.0.1", "127.0.1.1", "::1", "localhost"))
    assert not any(is_loopback(h) for h in ("0.0.0.0", "::", "10.0.0.5", "example.com"))


def test_a_password_instead_of_its_hash_is_refused(finance_db, tmp_path):
    result = CliRunner().invoke(
        main, ["dashboard", "--db", str(finance_db), "--host", "0.0.0.0"],
        env={**no_login_env(), "DASHBOARD_PASSWORD_HASH": "hunter2"},
    )  # fmt: skip
    assert result.exit_code == 1
    assert "DASHBOARD_PASSWORD_HASH is not a password hash" in result.output
    assert "hunter2" not in result.output
    missing = tmp_path / "nothing-here"
    with pytest.raises(ValueError, match="DASHBOARD_PASSWORD_HASH_FILE .*cannot read it"):
        Login.from_settings(Settings.from_env({"DASHBOARD_PASSWORD_HASH_FILE": str(missing)}))


def test_the_hash_never_enters_the_metadata_file(password_hash, tmp_path):
    login = Login.from_settings(Settings.from_env({"DASHBOARD_PASSWORD_HASH": password_hash}))
    assert password_hash not in repr(login.metadata())
    secret = tmp_path / "hash"
    secret.write_text(password_hash + "\n")
    login = Login.from_settings(Settings.from_env({"DASHBOARD_PASSWORD_HASH_FILE": str(secret),
                                                   "DASHBOARD_USER": "fraud-team"}))  # fmt: skip
    assert login.metadata() == {
        "allow": {"id": "fraud-team"},
        "plugins": {"datasette-auth-passwords": {"fraud-team_password_hash": {"$file": str(secret)}}},
    }


@pytest.mark.browser
@pytest.mark.parametrize("source", ["environment", "file"])
def test_beyond_loopback_the_login_page_comes_first_and_the_data_after(
    finance_db, password_hash, port, browser, tmp_path, source
):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    env = {**no_login_env(), "DASHBOARD_USER": "analyst"}
    if source == "file":
        (tmp_path / "hash").write_text(password_hash)
        env["DASHBOARD_PASSWORD_HASH_FILE"] = str(tmp_path / "hash")
    else:
        env["DASHBOARD_PASSWORD_HASH"] = password_hash
    command = [sys.executable, "-m", "fraudstream", "dashboard", "--db", str(finance_db),
               "--host", "0.0.0.0", "--port", str(port)]  # fmt: skip
    with serve(command, port, env=env) as base:
        # Without a login: no data, from the JSON API the charts use, exports or pages.
        for path in ("/finance/transactions.json", "/finance.json?sql=select+1",
                     "/finance/transactions.csv", "/finance", DASHBOARD_PATH):  # fmt: skip
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(base + path, timeout=10)
            assert refused.value.code == 403, path
        # The right password in an HTTP Basic header opens nothing: logins are by form only.
        basic = base64.b64encode(f"analyst:{PASSWORD}".encode()).decode()
        request = urllib.request.Request(base + "/finance/transactions.json",
                                         headers={"Authorization": f"Basic {basic}"})  # fmt: skip
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=10)
        assert refused.value.code == 403
        browser.get(base + DASHBOARD_PATH)
        assert browser.current_url == base + "/-/login"
        assert count(browser, "table") == 0 and "Transactions" not in browser.page_source

        def log_in(password: str) -> None:
            username = browser.find_element(By.NAME, "username")
            username.clear()
            username.send_keys("analyst")
            browser.find_element(By.NAME, "password").send_keys(password)
            browser.find_element(By.CSS_SELECTOR, "form [type=submit]").click()

        log_in("wrong password")
        WebDriverWait(browser, 30).until(
            lambda d: "Invalid username or password" in d.page_source
        )
        log_in(PASSWORD)
        home = base + "/"
        WebDriverWait(browser, 30).until(lambda d: d.current_url == home)
        browser.get(base + DASHBOARD_PATH)
        WebDriverWait(browser, 60).until(
            lambda d: count(d, "#chart-recent-alerts table tbody tr") > 0
        )
        kpi = browser.execute_script(
            "return document.querySelector('#chart-kpi-transactions p').innerText"
        )
        assert kpi.strip() == "8000"
