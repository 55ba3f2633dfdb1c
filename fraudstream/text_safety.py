"""Text from the feed is attacker-controlled: the two rules that keep it inert where we show it.

- :func:`hidden_character`: invisible, control and bidirectional-override characters (which make
  one merchant look like another, or drive a terminal) are refused by the event schema.
- :func:`spreadsheet_safe`: no CSV cell may run as a spreadsheet formula.

HTML escaping is not here: the dashboard escapes where it renders (``dashboard/safe_charts.js``).
"""

from __future__ import annotations

import re
import unicodedata
from types import MappingProxyType
from typing import Any

# Control (C0, C1), format (bidi overrides and isolates, zero-width characters, the BOM, soft
# hyphen), surrogate, private-use and unassigned characters, and line or paragraph separators.
HIDDEN_CATEGORIES = frozenset(("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"))

_UNNAMED = MappingProxyType(
    {"Cc": "control character", "Cs": "surrogate", "Co": "private-use character"}
)

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
_PLAIN_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?", re.ASCII)
_AFTER_SEMICOLON = re.compile(r"(;[\s\"]*)([^;]*)")


def hidden_character(text: str) -> str | None:
    """A description of the first hidden character in ``text`` (``'U+202E RIGHT-TO-LEFT
    OVERRIDE at character 4'``), or None when every character shows as itself."""
    if text.isprintable():  # the common case: isprintable() is False for every hidden category
        return None
    for i, char in enumerate(text):
        category = unicodedata.category(char)
        if category in HIDDEN_CATEGORIES:
            name = unicodedata.name(char, "") or _UNNAMED.get(category, "unassigned character")
            return f"U+{ord(char):04X} {name} at character {i + 1}"
    return None


def hidden_in(value: Any) -> str | None:
    """:func:`hidden_character` of the first text inside ``value``: a string, or the keys and
    values of nested JSON lists and objects; None for anything else."""
    if isinstance(value, str):
        return hidden_character(value)
    if isinstance(value, dict):
        value = [*value.keys(), *value.values()]
    if isinstance(value, list):
        return next(filter(None, map(hidden_in, value)), None)
    return None


def spreadsheet_safe(cell: Any) -> Any:
    """``cell`` as it may be written to a CSV that someone opens in a spreadsheet.

    Text beginning with ``= + - @``, a tab or a carriage return gets a leading ``'`` so that it
    cannot run as a formula; a plain number (``-12.5``) stays a number. So does such a start
    after a ``;`` inside the text, where a spreadsheet that splits on semicolons (many locales
    do) would begin a cell.

    >>> spreadsheet_safe('=HYPERLINK("http://x","y")')
    '\\'=HYPERLINK("http://x","y")'
    >>> spreadsheet_safe("Shop;=1+1")
    "Shop;'=1+1"
    >>> spreadsheet_safe("-12.5"), spreadsheet_safe(-3), spreadsheet_safe("Acme")
    ('-12.5', -3, 'Acme')
    """
    if not isinstance(cell, str):
        return cell
    if ";" in cell:  # each piece after a semicolon is checked as a cell of its own
        cell = _AFTER_SEMICOLON.sub(lambda m: m[1] + spreadsheet_safe(m[2]), cell)
    if cell.startswith(FORMULA_STARTS) and not _PLAIN_NUMBER.fullmatch(cell):
        return "'" + cell
    return cell
