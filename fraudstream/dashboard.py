"""Serving the bundled dashboard: Datasette with datasette-dashboards, read-only, on finance.db."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import yaml

METADATA = Path(__file__).resolve().parent.parent / "dashboard" / "metadata.yml"
DASHBOARD_PATH = "/-/dashboards/fraud-monitoring"


def metadata_for(db: Path) -> dict:
    """The dashboard metadata with every chart pointed at ``db`` (Datasette names it by stem)."""
    meta = yaml.safe_load(METADATA.read_text())
    for board in meta["plugins"]["datasette-dashboards"].values():
        for chart in board["charts"].values():
            if "db" in chart:
                chart["db"] = db.stem
    return meta


def datasette_command(db: Path, host: str = "127.0.0.1", port: int = 8001) -> list[str]:
    """The command that serves ``db`` read-only with the dashboard."""
    db = Path(db).resolve()
    if not db.is_file():
        raise FileNotFoundError(f"{db}: no such database (run `make run` first)")
    meta_file = Path(tempfile.mkdtemp(prefix="fraudstream-dashboard-")) / "metadata.yml"
    meta_file.write_text(yaml.safe_dump(metadata_for(db), sort_keys=False))
    return [
        sys.executable, "-m", "datasette", "serve", str(db),
        "--metadata", str(meta_file),
        "--host", host, "--port", str(port),
        # Reads go through Datasette's read-only connections; no plugin here writes.
        "--setting", "sql_time_limit_ms", "5000",
        "--setting", "default_page_size", "50",
    ]  # fmt: skip
