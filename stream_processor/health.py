"""The processor's health page: ``GET /health`` answers the pipeline's status as JSON.

Both runtimes serve it the same way, on ``PROCESSOR_WEB_HOST:PROCESSOR_WEB_PORT`` (0: none), from a
thread of their own. It shows counts and model versions, never a transaction: it has no login.
"""

from __future__ import annotations

import json
import logging
import threading
import urllib.request
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

log = logging.getLogger(__name__)


class HealthServer:
    """Serves ``{"status": "ok", **status()}`` at ``/health`` until :meth:`close` (port 0: no)."""

    def __init__(self, host: str, port: int, status: Callable[[], dict]):
        self._server: ThreadingHTTPServer | None = None
        if not port:
            return

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - the http.server interface
                if self.path.split("?")[0] != "/health":
                    self.send_error(404)
                    return
                try:
                    body, code = {"status": "ok", **status()}, 200
                except Exception as exc:  # noqa: BLE001 - the page says the processor is unwell
                    body, code = {"status": "error", "error": str(exc)}, 503
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args) -> None:  # the healthchecks every few seconds: not logged
                pass

        try:
            self._server = ThreadingHTTPServer((host, port), Handler)
        except OSError as exc:  # e.g. a second processor on this machine, on the same port
            raise OSError(
                f"the health page cannot listen on {host}:{port} ({exc.strerror}): give each "
                "processor on a machine a PROCESSOR_WEB_PORT of its own (0: none)"
            ) from exc
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, name="health", daemon=True).start()
        log.info("health page on http://%s:%d/health", host, port)

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()


def read_health(port: int, host: str = "127.0.0.1", timeout_s: float = 5.0) -> dict | None:
    """The health page of the processor on ``host:port``; None while it does not answer."""
    try:
        with urllib.request.urlopen(f"http://{host}:{port}/health", timeout=timeout_s) as page:
            return json.loads(page.read())
    except OSError:
        return None
