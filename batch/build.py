"""Running ``dbt build`` (models, unit tests and data tests) on the processor's database, once or
on a schedule: a SQLite file (dbt-sqlite) or a PostgreSQL database (dbt-postgres), one dbt
project for both (``dbt_project/macros/portable.sql`` holds what differs).

Through dbt's programmatic runner, in this process. Safe beside the live writer: SQLite is in WAL
mode (readers never block the processor, the processor never blocks readers), writers wait for
each other, and a build that still meets "database is locked" is retried; PostgreSQL's MVCC
needs none of that.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from fraudstream.retry import is_lock_error, retry
from fraudstream.tables import engine_url

log = logging.getLogger(__name__)

PROJECT_DIR = Path(__file__).resolve().parent / "dbt_project"  # the repository's dbt_project/
ANSI = re.compile(r"\x1b\[[0-9;]*m")


class BuildError(RuntimeError):
    pass


@dataclass
class BuildOutcome:
    ok: bool
    seconds: float
    attempts: int
    passed: int = 0
    failures: list[str] = field(default_factory=list)  # "<kind> <name>: <message>"
    warnings: list[str] = field(default_factory=list)  # warn-severity tests that found rows

    def describe(self) -> str:
        warned = "".join(f"\n  warning: {w}" for w in self.warnings)
        if self.ok:
            return (
                f"dbt build passed: {self.passed} models and tests in {self.seconds:.1f} s{warned}"
            )
        return "dbt build failed:\n  " + "\n  ".join(self.failures) + warned


def dbt_build(
    database: Path | str,
    *,
    select: str | None = None,
    dbt_vars: dict | None = None,
    retries: int = 3,
    target_dir: Path | None = None,
    full_refresh: bool = False,
) -> BuildOutcome:
    """Build every model and run every test against ``database`` (a SQLite file's path, or a
    ``DATABASE_URL``); never raises for dbt failures.

    dbt's target and log folders go to ``target_dir``, or to a temporary folder removed after
    the build (each build used to leave one behind, 2.7 MB: a scheduled build filled the disk).
    """
    target = dbt_target(database)
    if target_dir is not None:
        return _build(target, Path(target_dir), select, dbt_vars, retries, full_refresh)
    with tempfile.TemporaryDirectory(prefix="fraudstream-dbt-") as work:
        return _build(target, Path(work), select, dbt_vars, retries, full_refresh)


def dbt_target(database: Path | str) -> tuple[str, dict[str, str]]:
    """(profile target, the environment it reads) for a SQLite path or a ``DATABASE_URL``."""
    text = str(database)
    if "://" in text and not text.startswith("sqlite:///"):
        from sqlalchemy.engine import make_url

        url = make_url(engine_url(text))
        if url.get_backend_name() != "postgresql":
            raise BuildError(f"dbt builds on SQLite or PostgreSQL, not {url.get_backend_name()}")
        return "postgres", {
            "FRAUDSTREAM_PG_HOST": url.host or "127.0.0.1",
            "FRAUDSTREAM_PG_PORT": str(url.port or 5432),
            "FRAUDSTREAM_PG_USER": url.username or "postgres",
            "FRAUDSTREAM_PG_PASSWORD": url.password or "",
            "FRAUDSTREAM_PG_DATABASE": url.database or "",
            "FRAUDSTREAM_PG_SSLMODE": str(url.query.get("sslmode", "prefer")),
        }
    path = Path(text.removeprefix("sqlite:///")).resolve()
    if not path.is_file():
        raise BuildError(f"{path}: no such database (run the stream processor first)")
    return "sqlite", {"FRAUDSTREAM_DB": str(path)}


def _build(
    target: tuple[str, dict[str, str]],
    work: Path,
    select: str | None,
    dbt_vars: dict | None,
    retries: int,
    full_refresh: bool,
) -> BuildOutcome:
    name, env = target
    schemas = work / "schemas"  # dbt-sqlite attaches every *.db here: keep it empty
    schemas.mkdir(parents=True, exist_ok=True)
    env = {**env, "FRAUDSTREAM_DBT_SCHEMAS": str(schemas)}  # what profiles.yml reads
    with _environment(env):
        return _run_dbt(name, work, select, dbt_vars, retries, full_refresh)


@contextlib.contextmanager
def _environment(values: dict[str, str]):
    """``values`` in the environment for dbt (it reads its profile from there), and the previous
    environment back afterwards: a password never stays for later child processes."""
    before = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _run_dbt(name, work, select, dbt_vars, retries, full_refresh) -> BuildOutcome:
    from dbt.cli.main import dbtRunner

    args = [
        "build",
        "--target", name,
        "--project-dir", str(PROJECT_DIR),
        "--profiles-dir", str(PROJECT_DIR),
        "--target-path", str(work / "target"),
        "--log-path", str(work / "logs"),
        "--quiet",
        # No usage events: they would write .user.yml into the project, read-only when installed.
        "--no-send-anonymous-usage-stats",
    ]  # fmt: skip
    if select:
        args += ["--select", select]
    if full_refresh:
        args.append("--full-refresh")
    if dbt_vars:
        args += ["--vars", json.dumps(dbt_vars)]
    started = time.monotonic()
    tries: list[BuildOutcome] = []

    def attempt() -> BuildOutcome:
        tries.append(_invoke(dbtRunner(), args))
        if not tries[-1].ok and any(is_lock_error(f) for f in tries[-1].failures):
            raise LockedBuild(tries[-1].failures[0])
        return tries[-1]

    def retrying(exc: BaseException, n: int) -> None:
        log.warning("dbt build met a locked database (attempt %d/%d); retrying", n, retries)

    try:
        retry(attempt, transient=lambda exc: isinstance(exc, LockedBuild), attempts=retries,
              first_wait_s=2.0, max_wait_s=8.0, on_retry=retrying)  # fmt: skip
    except LockedBuild:
        pass  # still locked: the last outcome says so
    outcome = tries[-1]
    outcome.attempts = len(tries)
    outcome.seconds = time.monotonic() - started
    return outcome


class LockedBuild(RuntimeError):
    """A build that failed on a locked SQLite file: worth another try."""


def _invoke(runner, args: list[str]) -> BuildOutcome:
    res = runner.invoke(args)
    outcome = BuildOutcome(ok=bool(res.success), seconds=0.0, attempts=1)
    if res.exception is not None:
        outcome.ok = False
        outcome.failures.append(f"dbt: {res.exception}")
        return outcome
    for r in getattr(res.result, "results", None) or []:
        status = str(r.status).lower()
        node = r.node
        kind = getattr(node, "resource_type", "node")
        message = ANSI.sub("", r.message or "").strip().splitlines()
        text = f"{kind} {node.name}: {message[0] if message else status}"
        if status in ("success", "pass"):
            outcome.passed += 1
        elif status == "warn":
            outcome.passed += 1
            outcome.warnings.append(text)
        elif status in ("error", "fail", "runtime error"):
            outcome.failures.append(text)
    if outcome.failures:
        outcome.ok = False
    return outcome


def run_every(
    database: Path | str, seconds: float, stop: threading.Event | None = None, **kwargs
) -> None:
    """Build every ``seconds`` until ``stop`` is set; a failed build is logged and retried next time."""
    stop = stop or threading.Event()
    while not stop.is_set():
        started = time.monotonic()
        try:
            outcome = dbt_build(database, **kwargs)
            (log.info if outcome.ok else log.error)("%s", outcome.describe())
        except BuildError as exc:
            log.error("%s", exc)
        stop.wait(max(0.0, seconds - (time.monotonic() - started)))
