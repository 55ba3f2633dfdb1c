"""A non-editable install works: the wheel carries the dbt project, the dashboard definition and
the shipped rules, and dbt builds the marts from the installed copy, away from any checkout."""

import shutil
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def tracked(folder: str) -> list[str]:
    out = subprocess.run(["git", "ls-files", folder], cwd=ROOT, capture_output=True, text=True)
    return out.stdout.split()


def test_the_installed_package_carries_the_dbt_project_and_dashboard_and_builds(tmp_path):
    source = tmp_path / "source"
    for name in subprocess.run(
        ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split():
        path = ROOT / name
        if path.exists() or path.is_symlink():  # a tracked file deleted in the work tree: skip
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, source / name, follow_symlinks=False)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path), str(source)],
        check=True, capture_output=True,
    )  # fmt: skip
    (wheel,) = tmp_path.glob("fraudstream-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for name in tracked("dbt_project"):
        assert f"batch/{name}" in names, name
    for name in tracked("dashboard"):
        assert f"fraudstream/dashboard_definition/{name.removeprefix('dashboard/')}" in names, name
    assert "stream_processor/default_rules.yml" in names

    site = tmp_path / "site"
    subprocess.run([*pip, "install", "--no-deps", "--target", str(site), str(wheel)], check=True)
    script = textwrap.dedent(f"""
        import batch.build, fraudstream.dashboard, fraudstream.datasette_plugin as plugin
        from fraudstream.tables import make_engine
        site = {str(site)!r}
        for module in (batch.build, fraudstream.dashboard, plugin):
            assert module.__file__.startswith(site), module.__file__
        assert fraudstream.dashboard.METADATA.is_file() and plugin.SAFE_CHARTS.is_file()
        from stream_processor.rules import DEFAULT_RULES, load_rules_file
        assert DEFAULT_RULES.is_file() and load_rules_file(DEFAULT_RULES).rules
        make_engine("sqlite:///finance.db").dispose()
        outcome = batch.build.dbt_build("finance.db")
        assert outcome.ok, outcome.describe()
        print(outcome.describe())
    """)
    work = tmp_path / "elsewhere"
    work.mkdir()
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=work, env={"PYTHONPATH": str(site), "HOME": str(work)},
        capture_output=True, text=True,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    assert "dbt build passed" in out.stdout
