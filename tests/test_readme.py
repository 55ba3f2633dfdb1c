"""The README is what a new user reads first: its reference tables must match the code."""

from pathlib import Path

from fraudstream.settings import describe
from stream_processor.features import ANOMALY_FEATURE_NAMES, FEATURES, LABEL_FEATURES

README = (Path(__file__).parent.parent / "README.md").read_text()


def test_every_setting_is_in_the_readme_with_its_meaning():
    for env, _default, doc in describe():
        assert f"| `{env}` |" in README, env
        assert doc in README, env


def test_every_feature_is_documented_with_its_definition():
    for name, doc in FEATURES + LABEL_FEATURES:
        forest = "yes" if name in ANOMALY_FEATURE_NAMES else ""
        assert f"| `{name}` | {forest} | {doc} |" in README, name


def test_the_two_commands_are_make_targets():
    makefile = (Path(__file__).parent.parent / "Makefile").read_text()
    assert "make run" in README and "make test" in README
    assert "\nrun:" in makefile and "\ntest:" in makefile
    assert "make test" in (Path(__file__).parent.parent / ".ci" / "run").read_text()
