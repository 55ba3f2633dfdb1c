"""Serving the bundled dashboard: Datasette with datasette-dashboards, read-only, on finance.db.

Served beyond the loopback interface, it needs a login (datasette-auth-passwords): the dashboard
shows every transaction, account id and feature. The escaping of text from the feed and the
CSV exports are handled by this project's Datasette plugin (fraudstream.datasette_plugin)."""

from __future__ import annotations

import ipaddress
import re
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from fraudstream.settings import Settings, reveal

METADATA = Path(__file__).resolve().parent / "dashboard_definition" / "metadata.yml"
DASHBOARD_PATH = "/-/dashboards/fraud-monitoring"
_PASSWORD_HASH = re.compile(r"pbkdf2_sha256\$\d+\$[^$\s]+\$[A-Za-z0-9+/=]+")
_USER = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


class DashboardError(ValueError):
    """The dashboard cannot be served as asked; the message says what to change."""


@dataclass(frozen=True)
class Login:
    """The dashboard's one login: a user name and where Datasette reads its password hash."""

    user: str
    password_hash_file: str | None = None  # None: the hash is in DASHBOARD_PASSWORD_HASH

    @classmethod
    def from_settings(cls, settings: Settings) -> Login | None:
        """The configured login, None when there is none, or :class:`DashboardError`."""
        in_env = reveal(settings.dashboard_password_hash)
        in_file = settings.dashboard_password_hash_file
        if in_env and in_file:
            raise DashboardError(
                "set DASHBOARD_PASSWORD_HASH or DASHBOARD_PASSWORD_HASH_FILE, not both"
            )
        if not (in_env or in_file):
            return None
        if not _USER.fullmatch(settings.dashboard_user):
            raise DashboardError(
                f"DASHBOARD_USER={settings.dashboard_user!r}: use letters, digits, '.', '_' "
                "or '-' (at most 64)"
            )
        where = "DASHBOARD_PASSWORD_HASH"
        if in_file:
            where = f"DASHBOARD_PASSWORD_HASH_FILE ({in_file})"
            try:
                in_env = Path(in_file).read_text()
            except OSError as exc:
                raise DashboardError(f"{where}: cannot read it: {exc.strerror}") from None
        if not _PASSWORD_HASH.fullmatch(in_env.strip()):
            raise DashboardError(
                f"{where} is not a password hash (pbkdf2_sha256$...): make one with "
                "`datasette hash-password`, and keep the password itself out of the environment"
            )
        return cls(settings.dashboard_user, in_file)

    def metadata(self) -> dict[str, Any]:
        """Datasette metadata: only this user sees anything; the hash is read at start-up from
        the environment or the file, never written into the metadata file."""
        source = {"$env": "DASHBOARD_PASSWORD_HASH"}
        if self.password_hash_file:
            source = {"$file": self.password_hash_file}
        return {
            "allow": {"id": self.user},
            "plugins": {"datasette-auth-passwords": {f"{self.user}_password_hash": source}},
        }


def is_loopback(host: str) -> bool:
    """Whether only this machine can reach ``host`` (127.0.0.0/8, ::1, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to any interface


def metadata_for(db: Path, login: Login | None = None) -> dict:
    """The dashboard metadata with every chart pointed at ``db`` (Datasette names it by stem),
    behind ``login`` when there is one."""
    meta = yaml.safe_load(METADATA.read_text())
    for board in meta["plugins"]["datasette-dashboards"].values():
        for chart in board["charts"].values():
            if "db" in chart:
                chart["db"] = db.stem
    if login:
        extra = login.metadata()
        meta["allow"] = extra["allow"]
        meta["plugins"].update(extra["plugins"])
    return meta


def datasette_command(
    db: Path, host: str = "127.0.0.1", port: int = 8001, login: Login | None = None
) -> list[str]:
    """The command that serves ``db`` read-only with the dashboard, behind ``login`` if given."""
    if login is None and not is_loopback(host):
        raise DashboardError(
            f"refusing to serve the dashboard on {host}:{port} without a login: anyone who can "
            "reach that port would see every transaction and account id.\n"
            "Set a login first (the hash comes from `datasette hash-password`, which asks for the "
            "password):\n"
            '  export DASHBOARD_PASSWORD_HASH="$(datasette hash-password)"\n'
            "  export DASHBOARD_USER=analyst            # the default\n"
            "or put the hash in a file and set DASHBOARD_PASSWORD_HASH_FILE to its path; "
            "or serve on --host 127.0.0.1 (the default), reachable from this machine only."
        )
    db = Path(db).resolve()
    if not db.is_file():
        raise FileNotFoundError(f"{db}: no such database (run `make run` first)")
    meta_file = Path(tempfile.mkdtemp(prefix="fraudstream-dashboard-")) / "metadata.yml"
    meta_file.write_text(yaml.safe_dump(metadata_for(db, login), sort_keys=False))
    return [
        sys.executable, "-m", "datasette", "serve", str(db),
        "--metadata", str(meta_file),
        "--host", host, "--port", str(port),
        # Reads go through Datasette's read-only connections; no plugin here writes.
        "--setting", "sql_time_limit_ms", "5000",
        "--setting", "default_page_size", "50",
    ]  # fmt: skip
