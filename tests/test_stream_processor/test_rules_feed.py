"""Rules changed at runtime: the rules topic, `fraudstream rules apply` and `rules list`, and
the processors that follow it (both runtimes) without a restart."""

from __future__ import annotations

import csv
import json
import time

import pytest
from click.testing import CliRunner
from confluent_kafka import Producer
from test_rules import rule, rule_file
from test_runtimes import drain, processor, produce, query

from fraudstream.broker import free_port
from fraudstream.cli import main
from fraudstream.topics import read_topic
from stream_processor.health import read_health
from stream_processor.rules import RuleError, RuleSet, load_rules, rules_from
from stream_processor.rules_feed import RulesFeed, RulesTopicError, publish, read_rules

pytestmark = pytest.mark.integration

PAIR = "amount > 500.0 && previous_amount < 1.0 && seconds_since_previous <= 60.0"


def pair_rules(enabled: bool) -> str:
    state = "" if enabled else "\n    enabled: false"
    return f"""rules:
  - id: small_then_large
    description: Over 500 within a minute of an amount under 1.00
    expression: {PAIR}
    action: alert
    severity: high{state}
  - id: high_value
    description: Amount over 5,000
    expression: amount > 5000.0
    action: alert
"""


def cli(settings, *args):
    return CliRunner().invoke(main, ["rules", *args], env=settings.to_env())


def until(condition, what: str, timeout_s: float = 30.0):
    """Wait for ``condition()`` to be true (not a timing assertion: a bound on a hang)."""
    deadline = time.monotonic() + timeout_s
    while not (value := condition()):
        assert time.monotonic() < deadline, f"{what}: not within {timeout_s:.0f} s"
        time.sleep(0.05)
    return value


def test_apply_publishes_a_whole_file_and_list_shows_what_is_live(kafka_settings, tmp_path):
    s = kafka_settings
    listed = cli(s, "list")
    assert listed.exit_code == 0 and "no rule set on" in listed.output
    good = tmp_path / "good.yml"
    good.write_text(pair_rules(enabled=True))
    applied = cli(s, "apply", str(good))
    assert applied.exit_code == 0, applied.output
    assert "published rules version 0" in applied.output
    assert "added small_then_large" in applied.output and "added high_value" in applied.output
    assert "unchanged: version 0" in cli(s, "apply", str(good)).output  # nothing published

    off = tmp_path / "off.yml"
    off.write_text(pair_rules(enabled=False))
    applied = cli(s, "apply", str(off))
    assert "published rules version 1" in applied.output
    assert "disabled small_then_large" in applied.output and "high_value" not in applied.output
    listed = cli(s, "list")
    assert "rules version 1 (live), from off.yml, published 20" in listed.output
    assert "(disabled)" in listed.output.splitlines()[1]  # small_then_large, first
    earlier = cli(s, "list", "--version", "0").output
    assert "rules version 0 (not live), from good.yml" in earlier and "disabled" not in earlier
    missing = cli(s, "list", "--version", "7")
    assert missing.exit_code == 1 and "versions: 0, 1" in missing.output


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("amount >", "does not parse at column"),
        ("amont > 5.0", "unknown name 'amont' (did you mean 'amount'?)"),
        ("merchant > 5.0", "cannot compare a string with a number by >"),
        ('__import__("os").system("true") == 0', "unknown function '__import__'"),
        ("merchant.__class__ == merchant", "field selection (a.b) is not supported"),
    ],
)
def test_a_refused_file_publishes_nothing(kafka_settings, tmp_path, expression, message):
    s = kafka_settings
    good = tmp_path / "good.yml"
    good.write_text(pair_rules(enabled=True))
    assert cli(s, "apply", str(good)).exit_code == 0
    bad = tmp_path / "bad.yml"
    bad.write_text(rule_file(rule("fine", "amount > 1.0"), rule("broken", expression)))
    refused = cli(s, "apply", str(bad))
    assert refused.exit_code == 1
    assert "refused, nothing applied" in refused.output
    assert "rule 'broken': " in refused.output and message in refused.output
    assert "fine" not in refused.output.replace("nothing applied", "")
    live = read_rules(s).live
    assert live.version == 0 and [r.id for r in live.rules] == ["small_then_large", "high_value"]


def test_a_duplicate_id_is_refused_and_the_live_rules_stay(kafka_settings, tmp_path):
    s = kafka_settings
    publish(s, rules_from(""))
    twice = tmp_path / "twice.yml"
    twice.write_text(rule_file(rule("same", "amount > 1.0"), rule("same", "amount > 2.0")))
    refused = cli(s, "apply", str(twice))
    assert refused.exit_code == 1 and "rule 'same': the id is used twice" in refused.output
    live = read_rules(s).live
    assert live.version == 0 and live.source == "default_rules.yml"


def test_the_feed_publishes_its_rules_on_an_empty_topic_then_follows_it(kafka_settings):
    s = kafka_settings
    feed = RulesFeed(s, rules_from(""))
    try:
        assert feed.current.version == 0 and feed.current.source == "default_rules.yml"
        ids = {r.id for r in feed.current.rules}
        assert "small_then_large" in ids and "high_value" in ids
        mine = publish(s, load_rules(pair_rules(enabled=False)))
        until(lambda: feed.current.version == mine.version, "the new rule set applied")
        assert [r.id for r in feed.current.enabled] == ["high_value"]
        # garbage on the topic: dead-lettered, with the reason; the live rules stay
        bad = Producer({"bootstrap.servers": s.bootstrap_servers})
        bad.produce(s.rules_topic, key=b"rules", value=b"{not json")
        bad.produce(s.rules_topic, key=b"rules", value=json.dumps({"rules": [{"id": "x"}]}))
        bad.produce(s.rules_topic, key=b"rules", value=None)  # a tombstone
        bad.flush(10)
        refused = []
        until(lambda: refused.extend(feed.take_refused()) or len(refused) >= 3, "refused")
        assert [d["source_offset"] for d in refused] == [mine.version + k for k in (1, 2, 3)]
        assert "not JSON" in refused[0]["error"] and refused[0]["message_value"] == b"{not json"
        assert "missing field 'expression'" in refused[1]["error"]
        assert "no value" in refused[2]["error"] and refused[2]["message_value"] is None
        assert all(d["error_field"] == "rules" for d in refused)
        assert feed.current.version == mine.version
        # a later good set still applies
        again = publish(s, load_rules(pair_rules(enabled=True)))
        until(lambda: feed.current.version == again.version, "the set after the refused ones")
    finally:
        feed.close()


def test_every_processor_follows_the_same_rule_sets(kafka_settings):
    s = kafka_settings
    feeds = [RulesFeed(s, rules_from("")) for _ in range(3)]  # three processors starting
    try:
        assert len({f.current.version for f in feeds}) == 1  # the first one's rules, for all
        for enabled in (False, True, False):
            applied = publish(s, load_rules(pair_rules(enabled)))
            for feed in feeds:
                until(lambda f=feed, v=applied.version: f.current.version == v, "every feed")
            assert all(f.current == applied for f in feeds)
    finally:
        for feed in feeds:
            feed.close()


def test_a_processors_start_up_rules_never_replace_a_set_applied_before_them(kafka_settings):
    s = kafka_settings
    applied = publish(s, load_rules(pair_rules(enabled=False)))
    publish(s, rules_from(""), initial=True)  # a processor that read an empty topic just before
    topic = read_rules(s)
    assert topic.live == applied and topic.applied == [applied] and not topic.refused
    feed = RulesFeed(s, rules_from(""))  # finds a set: publishes nothing
    try:
        assert feed.current.version == applied.version
    finally:
        feed.close()
    assert len(read_topic(s, s.rules_topic, idle_s=1.0)) == 2


def _pair_csv(path, account: str, start: str, ids: tuple[str, str]) -> None:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["transaction_id", "account_id", "amount", "merchant", "timestamp", "location"])
        w.writerow([ids[0], account, "0.50", "Corner Shop", f"{start}:00", "Lyon"])
        w.writerow([ids[1], account, "650.00", "Corner Shop", f"{start}:40", "Lyon"])


@pytest.mark.parametrize("runtime", ["confluent", "faust"])
def test_a_rule_disabled_at_runtime_stops_flagging_without_a_restart(
    kafka_settings, small_csv, tmp_path, runtime
):
    s = kafka_settings.replace(runtime=runtime, web_port=free_port())
    on, off = tmp_path / "on.yml", tmp_path / "off.yml"
    on.write_text(pair_rules(enabled=True))
    off.write_text(pair_rules(enabled=False))
    assert cli(s, "apply", str(on)).exit_code == 0  # version 0, before the processor starts
    first, later = tmp_path / "first.csv", tmp_path / "later.csv"
    _pair_csv(first, "PAIR1", "2026-03-01T10:00", ("P1-SMALL", "P1-LARGE"))
    _pair_csv(later, "PAIR2", "2026-03-02T10:00", ("P2-SMALL", "P2-LARGE"))
    with processor(s, tmp_path) as (proc, log):
        stats = produce(s, small_csv)
        drain(s, proc, log, stats.last_offsets)
        stats = produce(s, first)
        drain(s, proc, log, stats.last_offsets)
        ((flagged, hit, version, reasons),) = query(
            s, "select is_flagged, rules_hit, rules_version, reasons from transactions "
            "where transaction_id = 'P1-LARGE'"
        )  # fmt: skip
        assert (flagged, hit, version) == (1, '["small_then_large"]', 0)
        assert "rule small_then_large (high): Over 500 within a minute" in reasons
        alert = until(
            lambda: next((json.loads(m.value()) for m in read_topic(s, s.alerts_topic, 1.0)
                          if json.loads(m.value())["transaction_id"] == "P1-LARGE"), None),
            "the pair's alert",
        )  # fmt: skip
        assert alert["rules"] == ["small_then_large"] and alert["rules_version"] == 0
        assert any("rule small_then_large" in r for r in alert["reasons"])

        # disabled at runtime, and a malformed message on the rules topic: the processor goes on
        assert "disabled small_then_large" in cli(s, "apply", str(off)).output
        junk = Producer({"bootstrap.servers": s.bootstrap_servers})
        junk.produce(s.rules_topic, key=b"rules", value=b"\xff not a rule set")
        junk.flush(10)
        until(
            lambda: (read_health(s.web_port) or {}).get("rules_version") == 1, "version 1 applied"
        )
        stats = produce(s, later)
        drain(s, proc, log, stats.last_offsets)
        assert proc.poll() is None
        ((hit, version, model_flagged, flagged),) = query(
            s, "select rules_hit, rules_version, model_flagged, is_flagged from transactions "
            "where transaction_id = 'P2-LARGE'"
        )  # fmt: skip
        assert hit is None and version == 1 and flagged == model_flagged
        dead = until(
            lambda: query(s, "select source_offset, error_field, error from dead_letters "
                             f"where source_topic = '{s.rules_topic}'"),
            "the malformed rule set dead-lettered",
        )  # fmt: skip
        assert dead[0][:2] == (2, "rules") and "not JSON" in dead[0][2]
        assert read_health(s.web_port)["rules_version"] == 1
    # restarted, the processor reads the whole topic again: the bad message is not sent twice
    again = tmp_path / "again.csv"
    _pair_csv(again, "PAIR3", "2026-03-03T10:00", ("P3-SMALL", "P3-LARGE"))
    with processor(s, tmp_path, "restarted") as (proc, log):
        stats = produce(s, again)
        drain(s, proc, log, stats.last_offsets)
        assert until(lambda: read_health(s.web_port), "the health page")["rules_version"] == 1
    assert query(
        s, f"select count(*) from dead_letters where source_topic = '{s.rules_topic}'"
    ) == [(1,)]
    dlq = [m.value() for m in read_topic(s, s.dlq_topic, idle_s=1.0)]
    assert dlq.count(b"\xff not a rule set") == 1


RULE = {"id": "r", "description": "d", "expression": "amount > 1.0", "action": "alert"}


@pytest.mark.parametrize(
    ("key", "document", "message"),
    [
        (b"rules", {"rules": [{**RULE, "expression": "amount >"}]}, "does not parse at column"),
        (b"rules", {"rules": [{**RULE, "expression": "amont > 1.0"}]}, "unknown name 'amont'"),
        (b"rules", {"rules": [{**RULE, "expression": "merchant > 1.0"}]}, "cannot compare"),
        (b"rules", {"rules": [RULE, RULE]}, "rule 'r': the id is used twice"),
        (b"rules", {"rules": [{**RULE, "expression": '__import__("os").getpid() > 0'}]},
         "unknown function '__import__'"),
        (b"rules", {"rules": [RULE], "source": "x\x1b[2J"}, "source must be text without hidden"),
        (b"other", {"rules": [RULE]}, "the key must be 'rules', not b'other'"),
    ],
)  # fmt: skip
def test_every_processor_refuses_a_bad_rule_set_on_the_topic(
    kafka_settings, key, document, message
):
    s = kafka_settings
    good = publish(s, load_rules(pair_rules(enabled=True)))
    feed = RulesFeed(s, rules_from(""))
    try:
        bad = Producer({"bootstrap.servers": s.bootstrap_servers})
        bad.produce(s.rules_topic, key=key, value=json.dumps(document).encode())
        bad.flush(10)
        refused = until(feed.take_refused, "the bad rule set refused")
        assert refused[0]["source_offset"] == good.version + 1
        assert refused[0]["error"].startswith(f"rule set version {good.version + 1}: refused")
        assert message in refused[0]["error"]
        assert feed.current == good  # the live rules stay
    finally:
        feed.close()


def test_a_file_name_with_a_hidden_character_is_refused_before_anything_is_published(
    kafka_settings,
):
    ruleset = RuleSet(load_rules(pair_rules(enabled=True)).rules, source="mine\u202egpj.yml")
    with pytest.raises(RuleError, match="the file name holds U\\+202E RIGHT-TO-LEFT OVERRIDE"):
        publish(kafka_settings, ruleset)
    assert read_rules(kafka_settings).live is None


def test_applying_no_rules_on_an_empty_topic_publishes_them(kafka_settings, tmp_path):
    none = tmp_path / "none.yml"
    none.write_text("rules: []\n")
    applied = cli(kafka_settings, "apply", str(none))
    assert applied.exit_code == 0 and "published rules version 0" in applied.output
    assert "(0 rules, 0 enabled)" in applied.output


def test_a_rules_topic_made_elsewhere_must_be_one_partition_kept_whole(kafka_settings, caplog):
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": kafka_settings.bootstrap_servers})
    split, short = (kafka_settings.replace(rules_topic=f"{kafka_settings.rules_topic}-{name}")
                    for name in ("split", "short"))  # fmt: skip
    made = admin.create_topics([NewTopic(split.rules_topic, 2, 1),
                                NewTopic(short.rules_topic, 1, 1,
                                         config={"retention.ms": "604800000"})])  # fmt: skip
    for future in made.values():
        future.result(timeout=10)
    with pytest.raises(RulesTopicError, match="has 2 partitions; the rules topic must have one"):
        RulesFeed(split, rules_from(""))
    caplog.set_level("WARNING")
    feed = RulesFeed(short, rules_from(""))
    feed.close()
    assert any("retention.ms=604800000" in r.getMessage() and "will be deleted" in r.getMessage()
               for r in caplog.records)  # fmt: skip


def test_the_rules_commands_say_when_the_broker_is_away(kafka_settings, tmp_path):
    away = kafka_settings.replace(bootstrap_servers="127.0.0.1:1")
    good = tmp_path / "good.yml"
    good.write_text(pair_rules(enabled=True))
    for args in (["list"], ["apply", str(good)]):
        done = cli(away, *args)
        assert done.exit_code == 1 and done.output.startswith("Error: "), done.output
        assert "Traceback" not in done.output
