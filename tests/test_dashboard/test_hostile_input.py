"""A replay whose every text field carries HTML, script or spreadsheet-formula payloads, then every
dashboard page and every table page in a real headless Chromium: no payload runs, no element is
made from the data, and every CSV export is safe to open in a spreadsheet.

Each markup payload carries a ``data-fsxss`` attribute: an element with it can only have come
from the data being parsed as HTML. Each script payload sets ``window.__pwned`` and the title.
"""

from __future__ import annotations

import csv
import io
import itertools
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from browsing import build_finance_db, serve

from fraudstream.dashboard import DASHBOARD_PATH, datasette_command, metadata_for
from fraudstream.text_safety import FORMULA_STARTS
from producer.generate import GeneratorConfig, write_csv

pytestmark = pytest.mark.browser

MARKUP = [
    '<img data-fsxss src=x onerror="window.__pwned=1;document.title=\'PWNED\'">',
    '<script data-fsxss>window.__pwned=2;document.title="PWNED"</script>',
    '"><svg data-fsxss onload="window.__pwned=3;document.title=\'PWNED\'">',
    "' data-fsxss onmouseover='window.__pwned=4' x='",
    '<a data-fsxss href="javascript:window.__pwned=5">open</a>',
    '<details data-fsxss open ontoggle="window.__pwned=6;document.title=\'PWNED\'">',
    "&lt;img data-fsxss src=x onerror=window.__pwned=7&gt;",
    "%3Cimg%20data-fsxss%20src%3Dx%20onerror%3Dwindow.__pwned%3D8%3E",
    '<iframe data-fsxss srcdoc="<script>parent.__pwned=9</script>"></iframe>',
    '<svg><animate data-fsxss onbegin="window.__pwned=10" attributeName=x dur=1s>',
    "javascript:window.__pwned=11",
    "![fsxss](https://evil.example/beacon.png) [fsxss](https://evil.example/)",  # Markdown
]
FORMULAS = ['=HYPERLINK("http://evil.example","x")', "+cmd|' /C calc'!A0", "@SUM(1+1)", "-2+3"]
PAYLOADS = MARKUP + FORMULAS
TEXT_FIELDS = ["transaction_id", "account_id", "merchant", "location", "merchant_category",
               "fraud_scenario"]  # fmt: skip


def hostile_rows(day: str) -> list[dict]:
    """For each payload, an account with a few ordinary purchases, then one of 9,000 (flagged:
    it shows in the alert and high-value charts). Field j of account i carries payload i + j,
    so that every text field carries every payload, and each row's fields differ."""
    rows = []
    for i in range(len(PAYLOADS)):
        fields = {f: PAYLOADS[(i + j) % len(PAYLOADS)] for j, f in enumerate(TEXT_FIELDS)}
        for n, amount in enumerate([21.5, 18.0, 25.25, 19.9, 22.0, 9000 + i]):
            rows.append(fields | {"transaction_id": f"{fields['transaction_id']} #{i}.{n}",
                                  "amount": amount, "timestamp": f"{day}T0{n}:1{i % 10}:00",
                                  "is_fraud": int(amount > 9000)})  # fmt: skip
    return rows


@pytest.fixture(scope="module")
def hostile_db(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("hostile")
    path = root / "transactions.csv"
    write_csv(path, GeneratorConfig(rows=3000, days=30, seed=5))
    with open(path, newline="") as fh:
        header = next(csv.reader(fh))
    with open(path, "a", newline="") as fh:
        writer = csv.DictWriter(fh, header)
        writer.writerows(hostile_rows("2026-02-03"))
    return build_finance_db(path, root, warmup=500)


@pytest.fixture(scope="module")
def served(hostile_db):
    from fraudstream.broker import free_port

    port = free_port()
    with serve(datasette_command(hostile_db, port=port), port) as base:
        yield base


def every_page(base: str, db: Path) -> list[str]:
    import sqlite3

    with sqlite3.connect(db) as conn:
        tables = [r[0] for r in conn.execute(
            "select name from sqlite_master where type in ('table', 'view') "
            "and name not like 'sqlite_%' order by name")]  # fmt: skip
        hostile_id = conn.execute(
            "select transaction_id from transactions where transaction_id like '%fsxss%' limit 1"
        ).fetchone()[0]
    charts = metadata_for(db)["plugins"]["datasette-dashboards"]["fraud-monitoring"]["charts"]
    quoted = urllib.parse.quote
    pages = ["/", f"/{db.stem}", "/-/dashboards", DASHBOARD_PATH, DASHBOARD_PATH + "/embed"]
    pages += [f"{DASHBOARD_PATH}/{c}" for c in charts] + [f"{DASHBOARD_PATH}/{c}/embed" for c in charts]
    pages += [f"/{db.stem}/{t}" for t in tables]
    pages.append(f"/{db.stem}/transactions/{tilde(hostile_id)}")
    pages.append(f"/{db.stem}?sql=" + quoted("select * from transactions where amount >= 9000"))
    # datasette-render-markdown would render any column named *_markdown
    pages.append(f"/{db.stem}?sql=" + quoted(
        "select merchant as m_markdown from transactions where transaction_id not glob 'T[0-9]*'"
    ))  # fmt: skip
    return [base + p for p in pages]


def tilde(value: str) -> str:
    """``value`` as a row's key in a Datasette URL."""
    from datasette.utils import tilde_encode

    return urllib.parse.quote(tilde_encode(value), safe="~+")


def assert_no_payload_ran(browser, url: str) -> None:
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(url)
    # Charts render after their data arrives: wait until every chart holds something.
    WebDriverWait(browser, 30).until(lambda d: d.execute_script(
        "return document.readyState === 'complete' && [...document.querySelectorAll("
        "'.dashboard-card-chart, .chart-container')].every(c => c.childElementCount > 0)"))  # fmt: skip
    state = browser.execute_script(
        "return {pwned: window.__pwned === undefined ? null : String(window.__pwned),"
        " title: document.title, made: document.querySelectorAll('[data-fsxss]').length,"
        " jslinks: document.querySelectorAll('a[href^=\"javascript:\" i]').length,"
        " images: document.querySelectorAll('img[src*=\"evil.example\"]').length}"
    )
    expected = {"pwned": None, "title": state["title"], "made": 0, "jslinks": 0, "images": 0}
    assert state == expected, url
    assert "PWNED" not in state["title"], url
    assert not state["title"].lower().startswith(("not found", "error")), url  # a real page


def test_no_payload_runs_on_any_dashboard_or_table_page(served, browser, hostile_db):
    pages = every_page(served, hostile_db)
    assert len(pages) > 25
    for url in pages:
        assert_no_payload_ran(browser, url)
    # The payloads were on screen, as text: the checks above looked at the right rows.
    browser.get(served + DASHBOARD_PATH)
    from selenium.webdriver.support.ui import WebDriverWait

    for chart in ("recent-alerts", "high-value"):
        WebDriverWait(browser, 30).until(lambda d, c=chart: MARKUP[0] in d.execute_script(
            f"return document.querySelector('#chart-{c}').innerText"))  # fmt: skip
    transactions = browser.execute_script("return document.body.innerText")
    assert all(p in transactions for p in MARKUP[:3])


def test_invisible_characters_in_stored_text_are_shown_not_obeyed(served, browser):
    # The schema refuses them from the feed; the charts still show any that a database holds
    # (rows written by other tools) as <U+...> instead of letting them reorder the text.
    browser.get(served + DASHBOARD_PATH)
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(browser, 30).until(lambda d: d.execute_script(
        "return typeof shownText === 'function'"))  # fmt: skip
    text = browser.execute_script("return shownText('Shop\\u202eevil\\u200b!')")
    assert text == "Shop<U+202E>evil<U+200B>!"


def exported(url: str) -> list[list[str]]:
    with urllib.request.urlopen(url, timeout=30) as response:
        return list(csv.reader(io.StringIO(response.read().decode())))


def test_every_csv_export_is_safe_to_open_in_a_spreadsheet(served, hostile_db):
    sql = urllib.parse.quote("select * from transactions where amount >= 9000")
    row = tilde(f"{FORMULAS[0]} #{len(MARKUP)}.5")
    exports = {
        "table, streamed": f"{served}/finance/transactions.csv?_stream=on&_size=max&_dl=1",
        "table, one page": f"{served}/finance/transactions.csv?amount__gte=9000",
        "query": f"{served}/finance.csv?sql={sql}",
        "mart": f"{served}/finance/fraud_flags.csv?_stream=on&_size=max",
        "row": f"{served}/finance/transactions/{row}.csv",
        "traced": f"{served}/finance.csv?sql={sql}&_trace=1&_dl=1",
    }
    for name, url in exports.items():
        rows = exported(url)
        assert len(rows) > 1, name
        cells = list(itertools.chain.from_iterable(rows))
        risky = [c for c in cells if c.startswith(FORMULA_STARTS) and not _number(c)]
        assert risky == [], name
        if "mart" not in name:
            # the payload is there, neutralised
            assert any(c.startswith("'" + FORMULAS[0]) for c in cells), name
    full = exported(exports["table, streamed"])
    assert len(full) == 3000 + 6 * len(PAYLOADS) + 1  # every row, and the header


def _number(cell: str) -> bool:
    try:
        float(cell)
        return True
    except ValueError:
        return False


def test_without_a_login_only_localhost_is_answered(served):
    # A web page can point a name of its own at 127.0.0.1 (DNS rebinding): such a request
    # carries that name as its Host, and gets no data.
    port = served.rsplit(":", 1)[1]
    for host, status in [(f"rebind.evil.example:{port}", 403), (f"localhost:{port}", 200),
                         (f"127.0.0.1:{port}", 200)]:  # fmt: skip
        request = urllib.request.Request(f"{served}/finance/transactions.json", headers={"Host": host})
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                assert (response.status, status) == (200, 200), host
        except urllib.error.HTTPError as err:
            assert err.code == status, host
            assert b"answers to localhost only" in err.read()


def test_the_password_plugins_hashing_page_is_off(served):
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(f"{served}/-/password-tool", timeout=10)
    assert err.value.code == 404
