"""The dashboard's safety, as a Datasette plugin (registered in pyproject.toml, so every Datasette
run in this environment loads it, `fraudstream dashboard` or a plain `datasette finance.db`).

- Charts: datasette-dashboards 0.8.0 renders table cells, metric values and map popups with
  ``innerHTML``, so text from the feed (a merchant name) would run as markup. Its script is
  served with ``dashboard/safe_charts.js`` appended, whose renderers only set ``textContent``.
- CSV: no cell of any CSV Datasette serves can run as a spreadsheet formula.
- Login: a browser that is not logged in is sent to the login page; logins are by form only and
  the password plugin's hashing page is off. Without a login, only localhost is answered.
"""

from __future__ import annotations

import codecs
import csv
import io
import re
from importlib import metadata, resources
from pathlib import Path
from types import MappingProxyType

from datasette import hookimpl
from datasette.utils.asgi import Response

from fraudstream.text_safety import spreadsheet_safe

SAFE_CHARTS = Path(__file__).resolve().parent / "dashboard_definition" / "safe_charts.js"
REVIEWED_DASHBOARDS_VERSION = "0.8.0"
# The renderers of that version, by chart library: those that set innerHTML are replaced.
REPLACED_RENDERERS = MappingProxyType(
    {"metric": "renderMetricChart", "table": "renderTableChart", "map": "renderMapChart"}
)
SAFE_RENDERERS = MappingProxyType(  # their tooltips are escaped
    {"vega": "renderVegaChart", "vega-lite": "renderVegaLiteChart"}
)
DASHBOARDS_JS = r"^/-/static-plugins/datasette[-_]dashboards/dashboards\.js$"
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "[::1]")


class UnreviewedDashboardsVersion(RuntimeError):
    """datasette-dashboards is not the version whose renderers safe_charts.js replaces."""


def upstream_dashboards_js() -> str:
    """datasette-dashboards' own chart script, after checking it is the reviewed version."""
    version = metadata.version("datasette-dashboards")
    if version != REVIEWED_DASHBOARDS_VERSION:
        raise UnreviewedDashboardsVersion(
            f"datasette-dashboards {version} is installed; {SAFE_CHARTS.name} replaces the "
            f"renderers of {REVIEWED_DASHBOARDS_VERSION}. Check which of its renderers set "
            f"innerHTML, update {SAFE_CHARTS} and REPLACED_RENDERERS, then the version here."
        )
    return (resources.files("datasette_dashboards") / "static" / "dashboards.js").read_text()


async def _serve_safe_dashboards_js(request, datasette) -> Response:
    # Our renderers after upstream's: a later function declaration wins.
    script = upstream_dashboards_js() + "\n\n" + SAFE_CHARTS.read_text()
    return Response(script, content_type="application/javascript; charset=utf-8")


@hookimpl
def register_routes(datasette):
    # Plugin routes come before Datasette's static files: this one shadows the upstream script.
    return [(DASHBOARDS_JS, _serve_safe_dashboards_js)]


@hookimpl
def forbidden(datasette, request, message):
    # A browser opening a page goes to the login; an API client (JSON, CSV) keeps the 403.
    login_configured = bool(datasette.plugin_config("datasette-auth-passwords"))
    wants_page = "text/html" in request.headers.get("accept", "")
    if login_configured and request.actor is None and request.method == "GET" and wants_page:
        return Response.redirect(datasette.urls.path("/-/login"))
    return None


@hookimpl
def asgi_wrapper(datasette):
    login = bool(datasette.plugin_config("datasette-auth-passwords"))

    def wrap(app):
        async def guard(scope, receive, send):
            if scope.get("type") != "http":
                return await app(scope, receive, send)
            if (refusal := _refused(scope, login)) is not None:
                return await refusal.asgi_send(send)
            # The password plugin checks any HTTP Basic header with a 480,000-round PBKDF2 on
            # the event loop, for every path: a few such requests would stall every visitor.
            # This dashboard logs in by form only.
            scope = _without_headers(scope, lambda k, v: k == b"authorization")
            if scope["path"].endswith(".csv"):
                # Datasette's CSV: tables, queries, rows; ``_trace`` would serve it as HTML,
                # past the rewriter.
                scope = _without_query_arg(scope, b"_trace")
                send = _rewriting_csv(send)
            await app(scope, receive, send)

        return guard

    return wrap


def _refused(scope, login: bool) -> Response | None:
    if scope["path"] == "/-/password-tool":  # hashes on the event loop for anyone; use the CLI
        return Response.text("Not found: use `datasette hash-password`", status=404)
    host = dict(scope.get("headers", [])).get(b"host", b"").decode("latin-1")
    name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
    if not login and name not in LOOPBACK_NAMES:
        # Without a login the dashboard is for this machine only: a page on any web site can
        # point a name of its own at 127.0.0.1 (DNS rebinding) and read whatever answers.
        return Response.text(
            f"this dashboard has no login, so it answers to localhost only, not to {host!r}: "
            "set DASHBOARD_PASSWORD_HASH to serve it to other machines (docs/guarantees.md)",
            status=403,
        )
    return None


def _without_headers(scope, drop) -> dict:
    return {**scope, "headers": [(k, v) for k, v in scope.get("headers", []) if not drop(k, v)]}


def _without_query_arg(scope, name: bytes) -> dict:
    query = scope.get("query_string", b"")
    kept = [a for a in query.split(b"&") if a and a.split(b"=", 1)[0] != name]
    return {**scope, "query_string": b"&".join(kept)}


def _rewriting_csv(send):
    """``send`` with every CSV body rewritten by a :class:`CsvRewriter` (text/csv is a
    download, text/plain is shown in the browser)."""
    rewriter: CsvRewriter | None = None

    async def rewriting_send(message):
        nonlocal rewriter
        if message["type"] == "http.response.start":
            kind = dict(message.get("headers", [])).get(b"content-type", b"")
            if kind.split(b";")[0].strip() in (b"text/csv", b"text/plain"):
                rewriter = CsvRewriter()
                message = _without_headers(message, lambda k, v: k.lower() == b"content-length")
        elif message["type"] == "http.response.body" and rewriter is not None:
            final = not message.get("more_body", False)
            message = {**message, "body": rewriter.feed(message.get("body", b""), final)}
        await send(message)

    return rewriting_send


class CsvRewriter:
    """Rewrites a CSV byte stream, whatever its chunking, so that no cell can run as a formula.

    Only whole records are rewritten; the rest of a chunk waits for the next one. A record
    ends at a newline outside quotes (RFC 4180: quotes inside a quoted cell come in pairs).
    """

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._pending = ""

    def feed(self, chunk: bytes, final: bool = False) -> bytes:
        text = self._pending + self._decoder.decode(chunk, final)
        end = len(text) if final else _end_of_last_record(text)
        self._pending = text[end:]
        return _rewrite(text[:end]).encode()


def _end_of_last_record(text: str) -> int:
    end, quoted = 0, False
    for match in re.finditer(r'["\n]', text):
        if match.group() == '"':
            quoted = not quoted
        elif not quoted:
            end = match.end()
    return end


def _rewrite(records: str) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    for row in csv.reader(io.StringIO(records, newline="")):
        writer.writerow([spreadsheet_safe(cell) for cell in row])
    # A stream whose last record has no line end keeps it so.
    return out.getvalue() if records.endswith("\n") else out.getvalue()[:-2]
