"""The README is what a new user reads first: short, true, and every link in it and in docs/
leads somewhere. The reference tables in docs/ must match the code."""

import re
from pathlib import Path

import pytest

from fraudstream.settings import describe
from stream_processor.features import FEATURES, LABEL_FEATURES

ROOT = Path(__file__).parent.parent
README = (ROOT / "README.md").read_text()
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def test_every_setting_is_in_the_settings_page_with_its_meaning():
    page = (ROOT / "docs" / "settings.md").read_text()
    for env, _default, doc in describe():
        assert f"| `{env}` |" in page, env
        assert doc in page, env


def test_every_feature_is_documented_with_its_definition():
    page = (ROOT / "docs" / "scoring.md").read_text()
    for f in FEATURES + LABEL_FEATURES:
        forest = "yes" if f.forest else ""
        row = f"| `{f.name}` | {forest} | {f.definition} |"
        assert row in page, f"docs/scoring.md's feature table needs the row {row}"


def test_the_two_commands_are_make_targets():
    makefile = (ROOT / "Makefile").read_text()
    assert "make run" in README and "make test" in README
    assert "\nrun:" in makefile and "\ntest:" in makefile
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def test_the_readme_stays_short():
    assert len(README) < 20_000, "detail belongs in docs/"


def anchors(page: Path) -> set[str]:
    """GitHub's anchor for each heading: lower case, punctuation dropped, spaces to hyphens."""
    headings = re.findall(r"^#+ (.+)$", page.read_text(), re.MULTILINE)
    return {re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-") for h in headings}


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_relative_link_leads_to_a_file_and_heading_that_exist(page):
    for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
        if re.match(r"[a-z]+:", target):
            continue
        path, _, anchor = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        assert linked.exists(), f"{page.name}: {target}"
        if anchor:
            assert anchor in anchors(linked), f"{page.name}: {target}"
