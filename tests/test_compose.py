"""docker-compose.yml and the Dockerfile, checked without a Docker engine.

Every service's command must be a real `fraudstream` command with valid options, every
environment variable must be one the code reads, every `service_healthy` dependency must have a
healthcheck, and every file the Dockerfile copies must exist.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from fraudstream.cli import main
from fraudstream.dashboard import Login, metadata_for
from fraudstream.settings import Settings, describe

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]
APP_SERVICES = [name for name, svc in SERVICES.items() if svc.get("build")]
ENV_READ_BY_CODE = {env for env, _default, _doc in describe()}


def test_the_live_feed_has_every_part():
    assert {"kafka", "producer", "stream-processor", "batch", "dashboard"} <= set(SERVICES)


def test_kafka_is_the_official_image_in_kraft_mode_with_a_healthcheck():
    kafka = SERVICES["kafka"]
    assert kafka["image"].startswith("apache/kafka:")
    env = kafka["environment"]
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert "zookeeper" not in str(kafka).lower()
    assert kafka["healthcheck"]["test"]


@pytest.mark.parametrize("name", APP_SERVICES)
def test_each_command_exists_with_valid_options(name, monkeypatch):
    monkeypatch.chdir(ROOT)  # paths in commands are relative to the image's /app = the repo
    command = SERVICES[name]["command"]
    assert command[0] == "fraudstream"
    sub = main.commands.get(command[1])
    assert sub is not None, f"{name}: fraudstream has no command {command[1]!r}"
    sub.make_context(command[1], list(command[2:]))  # raises on an unknown or invalid option


@pytest.mark.parametrize("name", APP_SERVICES)
def test_environment_variables_are_ones_the_code_reads(name):
    env = SERVICES[name].get("environment", {})
    unknown = set(env) - ENV_READ_BY_CODE
    assert not unknown, f"{name}: {unknown} are read by nothing"
    for value in env.values():
        assert "localhost" not in str(value), "inside compose, services reach each other by name"


def test_dependencies_exist_and_healthy_ones_have_healthchecks():
    for name, svc in SERVICES.items():
        for dep, cond in (svc.get("depends_on") or {}).items():
            assert dep in SERVICES, f"{name} depends on unknown {dep}"
            if cond.get("condition") == "service_healthy":
                assert SERVICES[dep].get("healthcheck"), (
                    f"{name} waits for {dep}, which has no healthcheck"
                )


def test_the_database_volume_is_shared_by_its_writers_and_readers():
    for name in ("stream-processor", "batch", "dashboard"):
        svc = SERVICES[name]
        assert "finance-data:/data" in svc["volumes"], name
        assert svc["environment"]["DATABASE_URL"] == "sqlite:////data/finance.db"
    assert "finance-data" in COMPOSE["volumes"]


def test_published_ports_match_what_the_services_listen_on():
    dash = SERVICES["dashboard"]
    port = dash["command"][dash["command"].index("--port") + 1]
    assert f"{port}:{port}" in dash["ports"]
    proc = SERVICES["stream-processor"]
    assert f"127.0.0.1:{proc['environment']['PROCESSOR_WEB_PORT']}:6066" in proc["ports"]


def test_only_the_dashboard_is_published_beyond_loopback():
    # Kafka takes no authentication here and the health page no login: this machine only.
    for name, svc in SERVICES.items():
        for mapping in svc.get("ports", []):
            if name != "dashboard":
                assert mapping.startswith("127.0.0.1:"), f"{name}: {mapping}"


def test_the_dashboard_requires_the_login_from_an_env_file_the_user_creates(tmp_path):
    dash = SERVICES["dashboard"]
    assert dash["env_file"] == [{"path": "dashboard.env", "required": False}]
    assert not [k for k in dash["environment"] if k.startswith("DASHBOARD_")]  # no secret here
    assert "/dashboard.env" in (ROOT / ".gitignore").read_text().split()
    assert "dashboard.env" in (ROOT / ".dockerignore").read_text().split()
    example = dict(
        line.split("=", 1)
        for line in (ROOT / "dashboard.env.example").read_text().splitlines()
        if line and not line.startswith("#")
    )
    assert set(example) == {"DASHBOARD_USER", "DASHBOARD_PASSWORD_HASH"} <= ENV_READ_BY_CODE

    db = tmp_path / "finance.db"
    db.touch()
    env = {**dash["environment"], "DATABASE_URL": f"sqlite:///{db}"}
    no_login = {**env, "DASHBOARD_PASSWORD_HASH": None, "DASHBOARD_PASSWORD_HASH_FILE": None}
    command = dash["command"]
    refused = CliRunner().invoke(main, command[1:], env=no_login)
    assert refused.exit_code == 1, refused.output
    assert "refusing to serve the dashboard on 0.0.0.0:8001 without a login" in refused.output
    # The example's placeholder is no hash: copied as it is, it is refused too.
    placeholder = example["DASHBOARD_PASSWORD_HASH"].strip("'")
    refused = CliRunner().invoke(
        main, command[1:], env={**no_login, "DASHBOARD_PASSWORD_HASH": placeholder}
    )
    assert refused.exit_code == 1 and "is not a password hash" in refused.output
    # With a real hash in dashboard.env, only its user sees anything.
    hashed = "pbkdf2_sha256$480000$0123abcd$" + "A" * 43 + "="
    settings = Settings.from_env({**env, "DASHBOARD_PASSWORD_HASH": hashed})
    assert metadata_for(db, Login.from_settings(settings))["allow"] == {"id": "analyst"}


def test_dockerfile_copies_files_that_exist():
    text = (ROOT / "Dockerfile").read_text()
    copied = [p for line in re.findall(r"^COPY (.+)$", text, re.M) for p in line.split()[:-1]]
    assert copied
    for path in copied:
        assert (ROOT / path).exists(), f"Dockerfile copies missing {path}"
    assert "-c requirements.lock" in text


# -- docker-compose.scale.yml: several processors on PostgreSQL, over docker-compose.yml --------


class _Override(list):
    """A sequence tagged ``!override``: replaces the base file's instead of adding to it."""


class _ComposeLoader(yaml.SafeLoader):
    pass


_ComposeLoader.add_constructor(
    "!override", lambda loader, node: _Override(loader.construct_sequence(node))
)


def _merged(base, extra):
    """Compose's merge of an override file, as far as these files use it: mappings merged key by
    key, sequences added to unless tagged ``!override``, anything else replaced."""
    if isinstance(base, dict) and isinstance(extra, dict):
        return {k: _merged(base[k], v) if k in base else v for k, v in extra.items()} | {
            k: v for k, v in base.items() if k not in extra
        }
    if isinstance(base, list) and isinstance(extra, list) and not isinstance(extra, _Override):
        return base + [x for x in extra if x not in base]
    return list(extra) if isinstance(extra, _Override) else extra


SCALE = yaml.load((ROOT / "docker-compose.scale.yml").read_text(), Loader=_ComposeLoader)
SCALED = _merged(COMPOSE, SCALE)["services"]


def test_scaled_out_two_processors_share_the_official_postgres_image():
    pg = SCALED["postgres"]
    assert pg["image"].startswith("postgres:") and pg["healthcheck"]["test"]
    assert SCALED["stream-processor"]["deploy"]["replicas"] == 2
    url = "postgresql://fraudstream:${POSTGRES_PASSWORD}@postgres:5432/fraudstream"
    for name in ("stream-processor", "batch"):
        svc = SCALED[name]
        assert svc["environment"]["DATABASE_URL"] == url, name
        assert svc["depends_on"]["postgres"] == {"condition": "service_healthy"}, name
        assert svc["volumes"] == [], name  # no SQLite file
    assert pg["environment"]["POSTGRES_PASSWORD"].startswith("${POSTGRES_PASSWORD:?")
    assert SCALED["dashboard"]["profiles"]  # it reads SQLite: not started
    assert "postgres-data" in SCALE["volumes"]


def test_scaled_out_each_replica_has_a_health_port_and_nothing_leaves_loopback():
    assert SCALED["stream-processor"]["ports"] == ["127.0.0.1:6066-6067:6066"]
    for name, svc in SCALED.items():
        for mapping in svc.get("ports", []):
            if name != "dashboard":
                assert mapping.startswith("127.0.0.1:"), f"{name}: {mapping}"


@pytest.mark.parametrize("name", ["stream-processor", "batch"])
def test_scaled_out_services_read_only_known_settings_and_run_on_postgres(name, monkeypatch):
    env = SCALED[name]["environment"]
    assert not set(env) - ENV_READ_BY_CODE
    monkeypatch.setenv("POSTGRES_PASSWORD", "secret")
    resolved = {k: str(v).replace("${POSTGRES_PASSWORD}", "secret") for k, v in env.items()}
    settings = Settings.from_env(resolved)
    assert settings.database_url.startswith("postgresql://") and not settings.sqlite_path
