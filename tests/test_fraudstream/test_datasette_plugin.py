"""The dashboard's Datasette plugin without a browser: the CSV rewriter, and the check that the
chart renderers it replaces are still the ones datasette-dashboards has."""

from __future__ import annotations

import csv
import io
import re

import pytest

from fraudstream import datasette_plugin
from fraudstream.datasette_plugin import (
    REPLACED_RENDERERS,
    SAFE_CHARTS,
    SAFE_RENDERERS,
    CsvRewriter,
    UnreviewedDashboardsVersion,
    upstream_dashboards_js,
)

EXPORT = (
    'transaction_id,merchant,amount,reasons\r\n'
    'T1,"=HYPERLINK(""http://x"",""y"")",-12.5,"line one\r\n=line two"\r\n'
    "T2,@SUM(1+1),3,Zürich café\r\n"
    'T3,"-2+3, and more",1e3,+cmd\r\n'
).encode()


MARKUP_SINKS = re.compile(r"\.(innerHTML|outerHTML|insertAdjacentHTML)\b|document\.write")


def rewritten(chunks) -> list[list[str]]:
    rewriter = CsvRewriter()
    out = b"".join(rewriter.feed(c) for c in chunks) + rewriter.feed(b"", final=True)
    return list(csv.reader(io.StringIO(out.decode(), newline="")))


def test_formulas_are_neutralised_and_everything_else_kept():
    assert rewritten([EXPORT]) == [
        ["transaction_id", "merchant", "amount", "reasons"],
        ["T1", "'=HYPERLINK(\"http://x\",\"y\")", "-12.5", "line one\r\n=line two"],
        ["T2", "'@SUM(1+1)", "3", "Zürich café"],
        ["T3", "'-2+3, and more", "1e3", "'+cmd"],
    ]


def test_the_result_does_not_depend_on_how_the_stream_is_cut():
    whole = rewritten([EXPORT])
    for size in (1, 2, 3, 7, 50):  # cuts inside quotes, inside UTF-8 characters, at line ends
        chunks = [EXPORT[i : i + size] for i in range(0, len(EXPORT), size)]
        assert rewritten(chunks) == whole, size


def test_a_last_record_without_a_line_end_is_kept():
    rewriter = CsvRewriter()
    assert rewriter.feed(b"a,b\r\n=1,2") == b"a,b\r\n"
    assert rewriter.feed(b"", final=True) == b"'=1,2"


def test_a_spreadsheet_splitting_on_semicolons_finds_no_formula_either():
    out = CsvRewriter().feed(b"id,merchant\r\nZ1,Shop;=1+1\r\n", final=True).decode()
    for row in csv.reader(io.StringIO(out, newline=""), delimiter=";"):
        assert not any(cell.startswith("=") for cell in row), row


def test_every_renderer_of_the_installed_datasette_dashboards_was_reviewed():
    # If this fails, datasette-dashboards changed its renderers: check each new one for
    # innerHTML, and replace it in dashboard/safe_charts.js if it builds markup from data.
    upstream = upstream_dashboards_js()
    registered = dict(re.findall(r"renderers\.set\('([\w-]+)', (\w+)\)", upstream))
    assert registered == {**REPLACED_RENDERERS, **SAFE_RENDERERS}
    for name in SAFE_RENDERERS.values():
        body = upstream[upstream.index(f"function {name}(") :]
        body = body[: body.index("\n}\n")]
        assert not MARKUP_SINKS.search(body), name
    ours = SAFE_CHARTS.read_text()
    assert not MARKUP_SINKS.search(ours)
    for name in REPLACED_RENDERERS.values():
        assert f"async function {name}(" in ours, name
    for helper in ("getDataUrl", "enableChartTooltip"):  # upstream's, called by ours
        assert f"function {helper}(" in upstream, helper


def test_another_datasette_dashboards_version_is_refused_until_reviewed(monkeypatch):
    monkeypatch.setattr(datasette_plugin.metadata, "version", lambda name: "0.9.0")
    with pytest.raises(UnreviewedDashboardsVersion, match="0.9.0 is installed"):
        upstream_dashboards_js()
