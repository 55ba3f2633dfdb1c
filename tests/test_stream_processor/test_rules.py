"""Rules as data (stream_processor.rules): a YAML file of CEL expressions, checked when loaded,
evaluated a batch at a time exactly as CEL evaluates each event."""

import celpy
import numpy as np
import pytest
from celpy import celtypes
from hypothesis import given, settings
from hypothesis import strategies as st

from stream_processor.rules import (
    DEFAULT_RULES,
    VARIABLES,
    RuleError,
    batch_columns,
    changes,
    load_rules,
    load_rules_file,
)


def rule_file(*rules: str) -> str:
    return "rules:\n" + "".join(rules)


def rule(id="r", expression="amount > 1.0", action="alert", extra="") -> str:
    return (
        f"  - id: {id}\n    description: a rule\n    expression: '{expression}'\n"
        f"    action: {action}\n{extra}"
    )


def columns(amount, previous_amount, seconds, merchant, location=None):
    n = len(amount)
    fields = {
        "amount": amount, "previous_amount": previous_amount,
        "log_gap_s": np.log1p(np.asarray(seconds, dtype=float)), "account_id": ["A"] * n,
        "merchant": list(merchant), "location": list(location or [None] * n),
        "timestamp": ["2026-01-01 00:00:00"] * n, "score": np.full(n, 0.5),
        "supervised_score": np.full(n, np.nan),
    }  # fmt: skip
    return batch_columns(frozenset(VARIABLES), lambda name: fields.get(name, np.zeros(n)))


def test_the_shipped_rules_load():
    ids = [r.id for r in load_rules_file(DEFAULT_RULES).rules]
    assert ids == [
        "high_value", "rapid_transactions", "card_testing", "impossible_travel", "small_then_large",
    ]  # fmt: skip


def test_the_classic_small_then_large_pair():
    """Under 1.00, then over 500 within a minute: the second event matches, not the first, nor a
    pair a minute and a half apart, nor an account's first transaction (no previous one)."""
    ruleset = load_rules(rule_file(rule(
        "small_then_large", "amount > 500.0 && previous_amount < 1.0 && seconds_since_previous <= 60.0",
    )))  # fmt: skip
    batch = columns(
        amount=[0.5, 650.0, 650.0, 650.0, 650.0],
        previous_amount=[20.0, 0.5, 0.5, 2.0, 0.0],
        seconds=[3600, 40, 90, 40, 7 * 86400],  # no previous transaction: 7 days
        merchant=["M"] * 5,
    )
    assert ruleset.hits(batch, 5)["small_then_large"].tolist() == [False, True, False, False, False]
    boundary = columns([650.0], [0.5], [60], ["M"])
    assert ruleset.hits(boundary, 1)["small_then_large"].tolist() == [True]  # 60 s, exactly


def test_a_disabled_rule_is_kept_and_not_evaluated():
    ruleset = load_rules(rule_file(rule("kept"), rule("paused", extra="    enabled: false\n")))
    assert [r.id for r in ruleset.rules] == ["kept", "paused"]
    assert list(ruleset.hits(columns([2.0], [0], [1], ["M"]), 1)) == ["kept"]


@pytest.mark.parametrize(
    "text, message",
    [
        (rule_file(rule(expression="amount >")), r"rule 'r': does not parse at column \d+"),
        (rule_file(rule(expression="amont > 5.0")),
         r"rule 'r': unknown name 'amont' \(did you mean 'amount'\?\)"),
        (rule_file(rule(expression="merchant > 5.0")),
         "rule 'r': cannot compare a string with a number by >"),
        (rule_file(rule(expression="amount + 1.0")), "rule 'r': gives a number, not true or false"),
        (rule_file(rule("twice"), rule("twice")), "rule 'twice': the id is used twice"),
        (rule_file(rule(expression='__import__("os").system("ls") == 0')),
         "rule 'r': unknown function '__import__'"),
        (rule_file(rule(expression="merchant.__class__ == merchant")),
         r"rule 'r': field selection \(a.b\) is not supported"),
        (rule_file(rule(expression='merchant.format(["x"]) == "x"')),
         "rule 'r': unknown method 'format'"),
        (rule_file(rule(expression="amount in (amount > 5.0 ? [1.0] : [2.0])")),
         "rule 'r': \\? : cannot choose between lists"),
        (rule_file(rule(expression='merchant == "\\U00110000"')), "rule 'r': the literal .* is not valid"),
        (rule_file(rule(expression="(" * 60 + "true" + ")" * 60)), "rule 'r': is nested too deeply"),
        (rule_file(rule(action="block")), "rule 'r': action must be one of alert, tag"),
        (rule_file(rule(extra="    owner: me\n")), "rule 'r': unknown field 'owner'"),
        (rule_file(rule("Bad-Id")), "rule 'Bad-Id': the id must be"),
        (rule_file(rule(extra="    enabled: false\n")).replace("a rule", "Shop\u202egpj.exe"),
         "rule 'r': the description holds U\\+202E RIGHT-TO-LEFT OVERRIDE at character 5"),
        ('rules:\n  - {id: r, description: d, action: alert, expression: "merchant == \'\\x9b31m\'"}\n',
         "rule 'r': the expression holds U\\+009B control character"),
        ("rules: {}", "the file must hold a top-level `rules:` list"),
        ("rules: [", "not YAML"),
    ],
)  # fmt: skip
def test_a_file_with_a_bad_rule_is_refused_whole_with_the_rule_and_the_reason(text, message):
    good = rule("fine")
    with pytest.raises(RuleError, match=message) as refused:
        load_rules(text.replace("rules:\n", "rules:\n" + good, 1), "mine.yml")
    assert str(refused.value).startswith("mine.yml: refused, nothing applied")


def test_literals_only_still_give_one_answer_per_event():
    """A ``? :`` of two literals is one value, not a column: string methods and size take it
    alike; and hexadecimal integers read as CEL has them."""
    ruleset = load_rules(rule_file(
        rule("a", 'size(true ? "ab" : "c") > 1.0'), rule("b", '(true ? "a" : "b").startsWith("a")'),
        rule("c", "amount > 0x10"),
    ))  # fmt: skip
    hits = ruleset.hits(columns([10.0, 20.0], [0, 0], [1, 1], ["M", "N"]), 2)
    assert hits["a"].tolist() == hits["b"].tolist() == [True, True]
    assert hits["c"].tolist() == [False, True]


def test_every_problem_of_a_file_is_named():
    with pytest.raises(RuleError) as refused:
        load_rules(rule_file(rule("a", "amont > 1.0"), rule("b", action="block")))
    assert len(refused.value.problems) == 2


EXPRESSIONS = [
    "amount > 500.0 && previous_amount < 1.0 && seconds_since_previous <= 60.0",
    "amount >= previous_amount * 3.0 || !(merchant == 'M1')",
    "merchant in ['M1', 'M3'] && amount - previous_amount > 10.0",
    "merchant.startsWith('M1') || merchant.endsWith('2') || merchant.contains('3')",
    "size(merchant) > 2 ? amount / (previous_amount + 1.0) > 2.0 : amount < 5.0",
    "-amount < -100.0 && location != '' && location + '!' == 'Paris!'",
]


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.floats(0, 10_000, allow_nan=False), st.floats(0, 10_000, allow_nan=False),
            st.integers(0, 7 * 86400), st.sampled_from(["M1", "M2", "M3", "M10", "X"]),
            st.sampled_from([None, "Paris", "Rome"]),
        ),
        min_size=1, max_size=30,
    )
)  # fmt: skip
def test_a_batch_matches_as_cel_evaluates_each_event(events):
    """Each expression over a batch equals cel-python's own evaluation of it, event by event."""
    amount, previous, seconds, merchant, location = (list(c) for c in zip(*events, strict=True))
    batch = columns(amount, previous, seconds, merchant, location)
    ruleset = load_rules(rule_file(*(rule(f"r{i}", e.replace("'", "''"))
                                     for i, e in enumerate(EXPRESSIONS))))  # fmt: skip
    hits = ruleset.hits(batch, len(events))
    env = celpy.Environment()
    for i, expression in enumerate(EXPRESSIONS):
        program = env.program(env.compile(expression))
        expected = [
            bool(program.evaluate({
                "amount": celtypes.DoubleType(batch["amount"][k]),
                "previous_amount": celtypes.DoubleType(batch["previous_amount"][k]),
                "seconds_since_previous": celtypes.DoubleType(batch["seconds_since_previous"][k]),
                "merchant": celtypes.StringType(batch["merchant"][k]),
                "location": celtypes.StringType(batch["location"][k]),
            }))
            for k in range(len(events))
        ]  # fmt: skip
        assert hits[f"r{i}"].tolist() == expected, expression


def test_every_variable_is_a_number_or_a_string_of_the_batch():
    batch = columns([1.0], [0.0], [5], ["M"])
    assert set(batch) == set(VARIABLES)
    assert batch["location"].tolist() == [""]  # not known: empty


def test_the_stream_flags_an_event_a_rule_matches_and_names_the_rule(settings, tmp_path):
    """An account spends under 1.00, then over 500 forty seconds later: with the classic rule
    applied, that event is flagged, its row records the rule, its alert names it and its
    reasons describe it; the event before, and another account's, match nothing."""
    from datetime import UTC, datetime, timedelta

    from fraudstream.schema import Transaction
    from stream_processor.contracts import RawMessage
    from stream_processor.core import ScoringCore

    rules = tmp_path / "rules.yml"
    rules.write_text(rule_file(rule(
        "small_then_large", "amount > 500.0 && previous_amount < 1.0 && seconds_since_previous <= 60.0",
    )))  # fmt: skip
    t0 = datetime(2026, 2, 2, tzinfo=UTC)
    rng = np.random.default_rng(3)
    txns = [
        Transaction(f"W{i}", f"A{i % 50}", float(rng.lognormal(3, 0.5)), f"M{i % 20}",
                    t0 + timedelta(minutes=i), "Paris")
        for i in range(300)
    ]  # fmt: skip
    late = t0 + timedelta(minutes=400)
    txns += [
        Transaction("SMALL", "ZZ", 0.5, "Shop", late, "Paris"),
        Transaction("LARGE", "ZZ", 650.0, "Shop", late + timedelta(seconds=40), "Paris"),
        Transaction("OTHER", "A1", 650.0, "Shop", late + timedelta(seconds=50), "Paris"),
    ]  # fmt: skip
    core = ScoringCore(settings.replace(rules_file=str(rules)))
    rows, alerts = [], []
    messages = [RawMessage(t.encode(), offset=i) for i, t in enumerate(txns)]
    for i in range(0, len(messages), 100):
        result = core.process(messages[i : i + 100])
        rows += result.named_rows
        alerts += result.alerts
    by_id = {r.transaction_id: r for r in rows}
    large = by_id["LARGE"]
    assert large.is_flagged == 1 and large.rules_hit == '["small_then_large"]'
    assert "rule small_then_large (medium): a rule" in large.reasons
    (alert,) = [a for a in alerts if a["transaction_id"] == "LARGE"]
    assert alert["rules"] == ["small_then_large"]
    assert "rule small_then_large (medium): a rule" in alert["reasons"]
    assert by_id["SMALL"].rules_hit is None and by_id["OTHER"].rules_hit is None
    assert sum(r.rules_hit is not None for r in rows) == 1
    # the models' own verdict is kept apart: the rule only adds to it
    assert all(r.is_flagged == (r.model_flagged or r.rules_hit is not None) for r in rows)
    assert (
        sum(r.is_flagged for r in rows) > sum(r.model_flagged for r in rows) or large.model_flagged
    )


def test_changes_name_each_rule_added_removed_switched_or_edited():
    before = load_rules(rule_file(rule("a"), rule("b"), rule("c"), rule("d")))
    after = load_rules(
        rule_file(rule("a"), rule("b", extra="    enabled: false\n"),
                  rule("c", expression="amount > 2.0", action="tag"), rule("e"))
    )  # fmt: skip
    assert changes(before, after) == [
        "removed d", "disabled b", "changed c: expression, action", "added e",
    ]  # fmt: skip
    assert changes(after, after) == []
    assert changes(None, before) == ["added a", "added b", "added c", "added d"]
