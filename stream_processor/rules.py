"""Fraud rules as data: a YAML file of rules whose expressions are in CEL (the Common Expression
Language) over an event's fields, its features and its scores; checked when loaded, evaluated a
whole batch at a time.

A file::

    rules:
      - id: high_value
        description: Amount over 5,000
        expression: amount > 5000.0
        action: alert        # alert: flag the event and alert; tag: record the hit only
        severity: medium     # low, medium, high or critical (default medium)
        enabled: true        # default true

cel-python parses each expression; this module checks its names and types against
:data:`VARIABLES` and turns it into NumPy operations on a batch's columns, so a rule costs a few
array operations a batch, not an interpreter call an event. Only this subset of CEL is accepted,
each part refused with the rule's id and why otherwise: number, string and boolean literals,
lists of literals, the variables, ``+ - * / %``, comparisons, ``in`` a list, ``! && || ? :``,
``size(s)`` and ``s.startsWith(t)``, ``s.endsWith(t)``, ``s.contains(t)``. Nothing in an
expression can call or reach Python: an unknown name or function is an error, not a lookup.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from celpy.celparser import CELParseError, CELParser
from celpy.evaluation import celstr
from lark import Token, Tree

from fraudstream.text_safety import hidden_character
from stream_processor.features import SUPERVISED_FEATURE_NAMES

NUMBER, STRING, BOOL, NUMBERS, STRINGS = (
    "number",
    "string",
    "bool",
    "list of numbers",
    "list of strings",
)

STRING_VARIABLES = ("account_id", "merchant", "location", "timestamp")
"""The event's text fields: ``location`` is '' when not known, ``timestamp`` is UTC as
'YYYY-MM-DD HH:MM:SS' (so ``timestamp >= "2026-03-01"`` compares as dates do)."""
NUMBER_VARIABLES = (
    ("amount",) + SUPERVISED_FEATURE_NAMES + ("score", "supervised_score", "seconds_since_previous")
)
"""The amount, every model input by its name in docs/scoring.md's table (``previous_amount``
among them), the forest's anomaly ``score`` and ``supervised_score`` (NaN before a supervised
model exists: every comparison with it but ``!=`` is then false), and ``seconds_since_previous`` (from the
account's previous transaction in event time, from ``log_gap_s``, to the millisecond; 7 days
without one)."""
VARIABLES: Mapping[str, str] = {
    **{name: STRING for name in STRING_VARIABLES},
    **{name: NUMBER for name in NUMBER_VARIABLES},
}
DEFAULT_RULES = Path(__file__).with_name("default_rules.yml")
"""The rules fraudstream ships with."""
ACTIONS = ("alert", "tag")
SEVERITIES = ("low", "medium", "high", "critical")
FIELDS = ("id", "description", "expression", "action", "severity", "enabled")
_ID = re.compile(r"[a-z][a-z0-9_]{0,63}")
_MAX_DESCRIPTION = 200

Columns = Mapping[str, np.ndarray]
"""A batch by variable: a float64 array per number, an object array of str per string."""


class RuleError(ValueError):
    """A rule file that is refused, whole: every problem found, each naming its rule."""

    def __init__(self, source: str, problems: list[str]):
        self.problems = problems
        super().__init__(f"{source}: refused, nothing applied:\n  " + "\n  ".join(problems))


@dataclass(frozen=True)
class Rule:
    id: str
    description: str
    expression: str
    action: str
    severity: str = "medium"
    enabled: bool = True
    check: Callable[[Columns, int], np.ndarray] = field(  # type: ignore[assignment]
        default=None, repr=False, compare=False
    )
    names: frozenset[str] = field(default=frozenset(), repr=False, compare=False)
    """The variables its expression reads."""

    def matches(self, columns: Columns, n: int) -> np.ndarray:
        """Whether each of the ``n`` events matches (a bool array)."""
        return self.check(columns, n)

    def as_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in FIELDS}


@dataclass(frozen=True)
class RuleSet:
    rules: tuple[Rule, ...] = ()
    version: int | None = None
    """Its offset on the rules topic (:mod:`stream_processor.rules_feed`); None: not published."""
    source: str = ""
    """Where it came from: a file's name, as published."""
    published_at: str | None = None
    """When it was published (UTC, ISO 8601)."""

    @cached_property  # read every batch: once per rule set
    def enabled(self) -> tuple[Rule, ...]:
        return tuple(r for r in self.rules if r.enabled)

    @cached_property
    def names(self) -> frozenset[str]:
        """The variables the enabled rules read: the only columns a batch needs."""
        return frozenset().union(*(r.names for r in self.enabled))

    def action(self, rule_id: str) -> str:
        return self._by_id[rule_id].action

    @cached_property
    def _by_id(self) -> dict[str, Rule]:
        return {r.id: r for r in self.rules}

    def describe(self, rule_id: str) -> str:
        """The reason a hit of ``rule_id`` gives: its id, severity and description."""
        rule = self._by_id[rule_id]
        return f"rule {rule.id} ({rule.severity}): {rule.description}"

    def hits(self, columns: Columns, n: int) -> dict[str, np.ndarray]:
        """Each enabled rule's matches over a batch of ``n`` events, by rule id."""
        return {rule.id: rule.matches(columns, n) for rule in self.enabled}

    def to_yaml(self) -> str:
        return yaml.safe_dump({"rules": [r.as_dict() for r in self.rules]}, sort_keys=False)


def changes(before: RuleSet | None, after: RuleSet) -> list[str]:
    """What applying ``after`` over ``before`` changes, one line a rule: added, removed,
    enabled, disabled, or the fields changed."""
    old = {r.id: r for r in before.rules} if before is not None else {}
    new = {r.id: r for r in after.rules}
    out = [f"removed {rule_id}" for rule_id in old if rule_id not in new]
    for rule_id, rule in new.items():
        was = old.get(rule_id)
        if was is None:
            out.append(f"added {rule_id}")
            continue
        if was.enabled != rule.enabled:
            out.append(f"{'enabled' if rule.enabled else 'disabled'} {rule_id}")
        fields = [f for f in FIELDS if f != "enabled" and getattr(was, f) != getattr(rule, f)]
        if fields:
            out.append(f"changed {rule_id}: {', '.join(fields)}")
    return out


def rules_from(setting: str) -> RuleSet:
    """The rules of the ``RULES_FILE`` setting: a file; '' the shipped rules; 'none' none."""
    if setting.strip().lower() == "none":
        return RuleSet(source="RULES_FILE=none")
    return load_rules_file(Path(setting) if setting else DEFAULT_RULES)


def load_rules_file(path: Path) -> RuleSet:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise RuleError(str(path), [f"cannot read: {exc}"]) from None
    return replace(load_rules(text, str(path)), source=path.name)


def batch_columns(names: frozenset[str], value_of: Callable[[str], Any]) -> dict[str, np.ndarray]:
    """The columns ``names`` of a batch, from ``value_of(name)``: its values of an event field
    (text: None reads ''), a model input or a score (NaN: no supervised model), in event order.
    ``seconds_since_previous`` comes from ``log_gap_s``."""
    columns: dict[str, np.ndarray] = {}
    for name in names:
        if name == "seconds_since_previous":
            # log_gap_s is log(1 + seconds); rounded to the millisecond, a gap of 60 s reads
            # 60.0, also from the stored features' 6 decimals (off by 0.15 s at 7 days)
            gap = np.asarray(value_of("log_gap_s"), dtype=np.float64)
            columns[name] = np.round(np.expm1(gap), 3)
        elif VARIABLES[name] == STRING:
            columns[name] = np.array([v or "" for v in value_of(name)], dtype=object)
        else:
            columns[name] = np.asarray(value_of(name), dtype=np.float64)
    return columns


def load_rules(text: str, source: str = "rules") -> RuleSet:
    """The rules of a YAML rule file, each expression compiled; :class:`RuleError` naming every
    problem (YAML, a missing or unknown field, a duplicate id, an expression that does not
    parse, names an unknown variable, mixes types or is not true or false)."""
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise RuleError(source, [f"not YAML: {exc}"]) from None
    return rules_of(document, source)


def rules_of(document: Any, source: str) -> RuleSet:
    """The rules of a parsed rule file (a mapping with a ``rules:`` list), as :func:`load_rules`."""
    if not isinstance(document, dict) or not isinstance(document.get("rules"), list):
        raise RuleError(source, ["the file must hold a top-level `rules:` list"])
    problems: list[str] = []
    rules: list[Rule] = []
    seen: set[str] = set()
    for number, entry in enumerate(document["rules"], start=1):
        rule, found = _rule(entry, number)
        problems += found
        if rule is None:
            continue
        if rule.id in seen:
            problems.append(f"rule {rule.id!r}: the id is used twice")
        seen.add(rule.id)
        rules.append(rule)
    if problems:
        raise RuleError(source, problems)
    return RuleSet(tuple(rules))


def _rule(entry: Any, number: int) -> tuple[Rule | None, list[str]]:
    if not isinstance(entry, dict):
        return None, [f"rule #{number}: not a mapping of {', '.join(FIELDS)}"]
    name = f"rule {entry['id']!r}" if isinstance(entry.get("id"), str) else f"rule #{number}"
    problems = [f"{name}: unknown field {key!r}" for key in entry if key not in FIELDS]
    values = {"severity": "medium", "enabled": True, **entry}
    for key in ("id", "description", "expression", "action"):
        if key not in entry:
            problems.append(f"{name}: missing field {key!r}")
    for key in ("id", "description", "expression", "action", "severity"):
        if key in values and not isinstance(values[key], str):
            problems.append(f"{name}: {key} must be text")
    if not isinstance(values["enabled"], bool):
        problems.append(f"{name}: enabled must be true or false")
    if problems:
        return None, problems
    if not _ID.fullmatch(values["id"]):
        problems.append(
            f"{name}: the id must be 1 to 64 lower-case letters, digits or _, from a letter"
        )
    description = values["description"]
    if len(description) > _MAX_DESCRIPTION:
        problems.append(f"{name}: the description must be at most {_MAX_DESCRIPTION} characters")
    # shown in terminals, logs and the dashboard: no character that hides or drives anything
    if hidden := hidden_character(description):
        problems.append(f"{name}: the description holds {hidden}")
    if values["action"] not in ACTIONS:
        problems.append(f"{name}: action must be one of {', '.join(ACTIONS)}")
    if values["severity"] not in SEVERITIES:
        problems.append(f"{name}: severity must be one of {', '.join(SEVERITIES)}")
    if hidden := hidden_character(values["expression"].replace("\t", " ").replace("\n", " ")):
        problems.append(f"{name}: the expression holds {hidden}")
    try:
        check = compile_expression(values["expression"])
    except ExpressionError as exc:
        problems.append(f"{name}: {exc}")
    if problems:
        return None, problems
    return Rule(**{key: values[key] for key in FIELDS}, check=check, names=check.names), []


class ExpressionError(ValueError):
    pass


_parser: CELParser | None = None


def compile_expression(expression: str) -> Callable[[Columns, int], np.ndarray]:
    """A CEL expression as a function of a batch's columns and its length: one bool per event."""
    global _parser
    if _parser is None:
        _parser = CELParser()
    try:
        tree = _parser.parse(expression)
        compiler = _Compiler()
        kind, value = compiler.node(tree)
    except CELParseError as exc:
        where = f" at column {exc.column}" if getattr(exc, "column", None) else ""
        raise ExpressionError(f"does not parse{where}: {expression!r}") from None
    except RecursionError:
        raise ExpressionError("is nested too deeply") from None
    if kind != BOOL:
        raise ExpressionError(f"gives a {kind}, not true or false: {expression!r}")

    def check(columns: Columns, n: int) -> np.ndarray:
        with np.errstate(all="ignore"):  # x / 0 is inf, 0 / 0 NaN: compared as such
            return np.broadcast_to(np.asarray(value(columns), dtype=bool), (n,))

    check.names = frozenset(compiler.names)  # type: ignore[attr-defined]
    return check


Compiled = tuple[str, Callable[[Columns], Any]]

_COMPARE = {
    "relation_lt": np.less, "relation_le": np.less_equal, "relation_gt": np.greater,
    "relation_ge": np.greater_equal, "relation_eq": np.equal, "relation_ne": np.not_equal,
}  # fmt: skip
_ARITHMETIC = {
    "addition_add": np.add, "addition_sub": np.subtract, "multiplication_mul": np.multiply,
    "multiplication_div": np.true_divide, "multiplication_mod": np.fmod,
}  # fmt: skip
_STRING_METHODS = {
    "startsWith": str.startswith,
    "endsWith": str.endswith,
    "contains": str.__contains__,
}


class _Compiler:
    """cel-python's parse tree to (type, function of the columns), checking types as it goes;
    ``names``: the variables it read."""

    def __init__(self):
        self.names: set[str] = set()

    def node(self, tree: Tree) -> Compiled:
        method = getattr(self, f"_{tree.data}", None)
        if method is None:
            raise ExpressionError(f"{_describe(tree.data)} is not supported")
        return method(tree)

    def _only(self, tree: Tree) -> Compiled:
        (child,) = tree.children
        return self.node(child)

    def _expr(self, tree: Tree) -> Compiled:
        if len(tree.children) == 1:
            return self._only(tree)
        condition, yes, no = (self.node(c) for c in tree.children)
        self._expect(condition, BOOL, "the condition of ? :")
        if yes[0] != no[0]:
            raise ExpressionError(f"? : gives a {yes[0]} on one side and a {no[0]} on the other")
        if yes[0] in (NUMBERS, STRINGS):
            raise ExpressionError("? : cannot choose between lists; write the list itself")
        cond_fn, yes_fn, no_fn = condition[1], yes[1], no[1]
        return yes[0], lambda c: np.where(cond_fn(c), yes_fn(c), no_fn(c))

    def _conditionalor(self, tree: Tree) -> Compiled:
        return self._logical(tree, np.logical_or, "||")

    def _conditionaland(self, tree: Tree) -> Compiled:
        return self._logical(tree, np.logical_and, "&&")

    def _logical(self, tree: Tree, op, symbol: str) -> Compiled:
        if len(tree.children) == 1:
            return self._only(tree)
        left, right = (self.node(c) for c in tree.children)
        self._expect(left, BOOL, f"the left of {symbol}")
        self._expect(right, BOOL, f"the right of {symbol}")
        lf, rf = left[1], right[1]
        return BOOL, lambda c: op(lf(c), rf(c))

    _primary = _only
    _paren_expr = _only

    def _binary(self, tree: Tree) -> Compiled:
        """``relation``, ``addition`` and ``multiplication``: one operand, or an operator node
        holding the left operand beside the right one."""
        if len(tree.children) == 1:
            return self._only(tree)
        operator, right = tree.children
        (left,) = operator.children
        return self._operation(operator.data, self.node(left), self.node(right))

    _relation = _addition = _multiplication = _binary

    def _operation(self, op: str, left: Compiled, right: Compiled) -> Compiled:
        symbol = _describe(op)
        lf, rf = left[1], right[1]
        if op in _COMPARE:
            ordered = op not in ("relation_eq", "relation_ne")
            kinds = (NUMBER, STRING) if ordered else (NUMBER, STRING, BOOL)
            if left[0] != right[0] or left[0] not in kinds:
                raise ExpressionError(f"cannot compare a {left[0]} with a {right[0]} by {symbol}")
            compare = _COMPARE[op]
            return BOOL, lambda c: compare(lf(c), rf(c))
        if op == "relation_in":
            if (left[0], right[0]) not in ((NUMBER, NUMBERS), (STRING, STRINGS)):
                raise ExpressionError(
                    f"`in` needs a list of the item's type: a {left[0]} in a {right[0]}"
                )
            values = rf({})
            return BOOL, lambda c: np.isin(lf(c), values)
        if op in _ARITHMETIC:
            concatenation = op == "addition_add" and left[0] == right[0] == STRING
            if not concatenation and not left[0] == right[0] == NUMBER:
                raise ExpressionError(f"cannot compute a {left[0]} {symbol} a {right[0]}")
            compute = _ARITHMETIC[op]
            return left[0], lambda c: compute(lf(c), rf(c))
        raise ExpressionError(f"{symbol} is not supported")

    def _unary(self, tree: Tree) -> Compiled:
        if len(tree.children) == 1:
            return self._only(tree)
        sign, operand = tree.children[0].data, self.node(tree.children[-1])
        if sign == "unary_not":
            self._expect(operand, BOOL, "!")
            fn = operand[1]
            return BOOL, lambda c: np.logical_not(fn(c))
        self._expect(operand, NUMBER, "-")
        fn = operand[1]
        return NUMBER, lambda c: np.negative(fn(c))

    def _member(self, tree: Tree) -> Compiled:
        return self._only(tree)

    def _member_dot_arg(self, tree: Tree) -> Compiled:
        target, method = self.node(tree.children[0]), str(tree.children[1])
        arguments = self._arguments(tree.children[2:])
        test = _STRING_METHODS.get(method)
        if test is None:
            raise ExpressionError(f"unknown method {method!r}; known: {', '.join(_STRING_METHODS)}")
        if target[0] != STRING or [a[0] for a in arguments] != [STRING]:
            raise ExpressionError(f"{method} needs a string and one string argument")
        target_fn, argument_fn = target[1], arguments[0][1]

        def apply(c):
            texts, other = _text(target_fn(c)), _text(argument_fn(c))
            if isinstance(texts, str) and isinstance(other, str):
                return test(texts, other)
            texts = np.broadcast_to(
                np.asarray(texts, dtype=object), np.shape(other) or np.shape(texts)
            )
            others = np.broadcast_to(np.asarray(other, dtype=object), texts.shape)
            return np.fromiter(map(test, texts, others), dtype=bool, count=len(texts))

        return BOOL, apply

    def _ident_arg(self, tree: Tree) -> Compiled:
        function = str(tree.children[0])
        arguments = self._arguments(tree.children[1:])
        if function != "size":
            raise ExpressionError(f"unknown function {function!r}; known: size")
        if [a[0] for a in arguments] != [STRING]:
            raise ExpressionError("size needs one string")
        fn = arguments[0][1]

        def size(c):
            texts = _text(fn(c))
            if isinstance(texts, str):
                return float(len(texts))
            return np.fromiter(map(len, texts), dtype=np.float64, count=len(texts))

        return NUMBER, size

    def _ident(self, tree: Tree) -> Compiled:
        name = str(tree.children[0])
        kind = VARIABLES.get(name)
        if kind is None:
            close = difflib.get_close_matches(name, VARIABLES, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ExpressionError(f"unknown name {name!r}{hint}")
        self.names.add(name)
        return kind, lambda c: c[name]

    def _literal(self, tree: Tree) -> Compiled:
        token: Token = tree.children[0]
        try:
            if token.type == "INT_LIT":
                number = float(int(token.value, 0))  # 0x10 too
            elif token.type == "FLOAT_LIT":
                number = float(token.value)
            elif token.type in ("STRING_LIT", "MLSTRING_LIT"):
                text = str(celstr(token))
                return STRING, lambda c: text
        except (ValueError, OverflowError) as exc:
            raise ExpressionError(f"the literal {token.value} is not valid: {exc}") from None
        if token.type in ("INT_LIT", "FLOAT_LIT"):
            if not math.isfinite(number):
                raise ExpressionError(f"the number {token.value} is out of range")
            return NUMBER, lambda c: number
        if token.type == "BOOL_LIT":
            truth = token.value == "true"
            return BOOL, lambda c: truth
        raise ExpressionError(
            f"{token.type.removesuffix('_LIT').lower()} literals are not supported"
        )

    def _list_lit(self, tree: Tree) -> Compiled:
        items = self._arguments(tree.children)
        kinds = {kind for kind, _ in items}
        if not items or len(kinds) != 1 or kinds - {NUMBER, STRING}:
            raise ExpressionError("a list must hold numbers only or strings only")
        try:
            values = [fn({}) for _, fn in items]
        except KeyError:
            raise ExpressionError("a list may hold literals only") from None
        array = np.array(values, dtype=np.float64 if kinds == {NUMBER} else object)
        return (NUMBERS if kinds == {NUMBER} else STRINGS), lambda c: array

    def _arguments(self, children: list) -> list[Compiled]:
        if not children:
            return []
        (exprlist,) = children
        return [self.node(c) for c in exprlist.children]

    @staticmethod
    def _expect(compiled: Compiled, kind: str, where: str) -> None:
        if compiled[0] != kind:
            raise ExpressionError(f"{where} needs a {kind}, not a {compiled[0]}")


def _text(value):
    """A string column, or one string: what ``? :`` of two literals gives (a 0-d array) too."""
    return str(np.asarray(value, dtype=object).item()) if np.ndim(value) == 0 else value


def _describe(rule: str) -> str:
    return {
        "relation_lt": "<", "relation_le": "<=", "relation_gt": ">", "relation_ge": ">=",
        "relation_eq": "==", "relation_ne": "!=", "addition_add": "+", "addition_sub": "-",
        "multiplication_mul": "*", "multiplication_div": "/", "multiplication_mod": "%",
        "member_dot": "field selection (a.b)", "member_index": "indexing (a[i])",
        "member_object": "message construction", "map_lit": "a map", "dot_ident": "a leading dot",
        "dot_ident_arg": "a leading dot",
    }.get(rule, rule)  # fmt: skip
