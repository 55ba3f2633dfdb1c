"""The text rules for attacker-controlled feed text: hidden characters, spreadsheet formulas."""

from __future__ import annotations

import doctest

import pytest

from fraudstream import text_safety
from fraudstream.text_safety import hidden_character, spreadsheet_safe


@pytest.mark.parametrize(
    ("text", "found"),
    [
        ("Acme\u202eevil", "U+202E RIGHT-TO-LEFT OVERRIDE at character 5"),
        ("Ac\u200bme", "U+200B ZERO WIDTH SPACE at character 3"),
        ("\u2066Acme\u2069", "U+2066 LEFT-TO-RIGHT ISOLATE at character 1"),
        ("Acme\ufeff", "U+FEFF ZERO WIDTH NO-BREAK SPACE at character 5"),
        ("Shop\x1b[2J", "U+001B control character at character 5"),
        ("Shop\x9b2J", "U+009B control character at character 5"),  # C1: a terminal's CSI
        ("a\u2028b", "U+2028 LINE SEPARATOR at character 2"),
        ("soft\u00adhyphen", "U+00AD SOFT HYPHEN at character 5"),
        ("private\ue000", "U+E000 private-use character at character 8"),
    ],
)
def test_hidden_characters_are_found_and_named(text, found):
    assert hidden_character(text) == found


@pytest.mark.parametrize("text", ["Café Zürich 東京 🙂", "Kraków", "نقطة", "Shop\u00a0Plus", ""])
def test_text_that_shows_as_itself_passes(text):
    assert hidden_character(text) is None


@pytest.mark.parametrize(
    ("cell", "safe"),
    [
        ("=1+1", "'=1+1"),
        ("+cmd|' /C calc'!A0", "'+cmd|' /C calc'!A0"),
        ("-2+3", "'-2+3"),
        ("@SUM(A1)", "'@SUM(A1)"),
        ("\t=1", "'\t=1"),
        ("\r=1", "'\r=1"),
        ("-12.5", "-12.5"),
        ("+3e5", "+3e5"),
        ("Acme = best", "Acme = best"),
        ("Shop;=1+1;x", "Shop;'=1+1;x"),
        ('a; "@SUM(1)', "a; \"'@SUM(1)"),
        ("=1;-2+3;-4", "'=1;'-2+3;-4"),
        ("Rue A; Paris", "Rue A; Paris"),
        (42, 42),
        (None, None),
    ],
)
def test_spreadsheet_safe_neutralises_formulas_and_keeps_numbers(cell, safe):
    assert spreadsheet_safe(cell) == safe


def test_docstring_examples_run():
    assert doctest.testmod(text_safety).failed == 0
