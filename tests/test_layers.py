"""The layers of pyproject.toml's import-linter contract hold (`make lint` checks them too)."""

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("fraudstream", "producer", "stream_processor", "batch")


def lint_imports(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(Path(sys.executable).parent / "lint-imports"), "--no-cache"],
        cwd=root, env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"},
        capture_output=True, text=True,
    )  # fmt: skip


def test_no_module_imports_from_a_layer_above_it():
    out = lint_imports(ROOT)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "1 kept, 0 broken" in out.stdout


def test_an_import_from_a_layer_above_is_found_even_inside_a_function(tmp_path):
    for package in PACKAGES:
        shutil.copytree(ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("*.so"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    geo = tmp_path / "fraudstream" / "geo.py"
    geo.write_text(geo.read_text() + "\n\ndef hidden():\n    from stream_processor import core\n")
    out = lint_imports(tmp_path)
    assert out.returncode == 1
    assert "fraudstream.geo -> stream_processor.core" in out.stdout
