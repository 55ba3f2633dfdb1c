"""What twenty fraud rules cost the confluent runtime: throughput with no rules and with twenty,
side by side in one run.

    python -m benchmarks.rules_cost [--events 200000] [--repeat 3]

The same replayed events (the embedded broker) are read by a processor whose rules topic holds
an empty rule set and by one whose topic holds twenty (the shipped rules and fifteen more over
amounts, counts, travel, merchant text, lists and the scores), alternately, so that the
machine's drift falls on both.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import uuid
from pathlib import Path

from benchmarks.bench import pipeline
from fraudstream.broker import EmbeddedBroker, ensure_topics
from fraudstream.settings import Settings
from producer.generate import GeneratorConfig, write_csv
from producer.replay import ReplayOptions, replay
from stream_processor.rules import DEFAULT_RULES, RuleSet, load_rules, load_rules_file
from stream_processor.rules_feed import publish

MORE = [
    ("amount_over_2000_new_merchant", "amount > 2000.0 && new_merchant == 1.0"),
    ("burst_10m", "count_10m >= 4.0"),
    ("burst_1h", "count_1h >= 8.0 && amount > 50.0"),
    ("far_from_home", "log_home_km > 7.0 && amount > 300.0"),
    ("night_large", "hour_cos > 0.9 && amount > 1000.0"),
    ("amount_vs_median", "amount_vs_median > 3.0"),
    ("amount_vs_30d", "amount_vs_30d > 2.5 && log_history > 1.0"),
    ("merchant_spike", "merchant_volume_1h_vs_7d > 2.0 && amount > 200.0"),
    ("merchant_risky", "merchant_fraud_share_7d > 0.5"),
    ("account_known_fraud", "account_fraud_30d >= 1.0"),
    ("online_store", "merchant.contains('Online') && amount > 800.0"),
    ("listed_merchants", "merchant in ['Oakwood Online Store', 'Cedar Energy #483', 'Northwind']"),
    ("round_amount", "amount % 100.0 == 0.0 && amount >= 500.0"),
    ("high_scores", "score > 0.75 || supervised_score > 0.9"),
    ("quick_repeat", "seconds_since_previous < 10.0 && amount > 100.0"),
]


def twenty_rules() -> str:
    text = DEFAULT_RULES.read_text()
    for rule_id, expression in MORE:
        text += (
            f"  - id: {rule_id}\n    description: {rule_id}\n"
            f'    expression: "{expression}"\n    action: alert\n'
        )
    assert len(load_rules(text).rules) == 20
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="fraudstream-rules-cost-"))
    csv = work / "events.csv"
    write_csv(csv, GeneratorConfig(rows=args.events, days=max(30, args.events // 700), seed=3))
    twenty = work / "twenty.yml"
    twenty.write_text(twenty_rules())
    env = {k: v for k, v in os.environ.items() if k != "KAFKA_BOOTSTRAP_SERVERS"}
    runs: dict[str, list[float]] = {"no rules": [], "twenty rules": []}
    with EmbeddedBroker(log_path=work / "broker.log") as broker:
        s = Settings.from_env(
            env, bootstrap_servers=broker.bootstrap,
            transactions_topic=f"rules-cost-{uuid.uuid4().hex[:6]}",
            alerts_topic="rules-cost-alerts", dlq_topic="rules-cost-dlq",
        )  # fmt: skip
        ensure_topics(broker.bootstrap, s)
        stats = replay(csv, broker.bootstrap, s.transactions_topic, ReplayOptions(progress=False))
        for i in range(args.repeat):
            for name, rules in (("no rules", RuleSet()), ("twenty rules", load_rules_file(twenty))):
                print(f"repeat {i + 1}/{args.repeat}: {name}", flush=True)
                run = s.replace(rules_topic=f"rules-cost-{uuid.uuid4().hex[:6]}")
                ensure_topics(broker.bootstrap, run)
                publish(run, rules)  # as `fraudstream rules apply` does
                eps = pipeline(run, args.events, "confluent", stats.last_offsets, work)[0]
                runs[name].append(eps)
    base, rules = (statistics.median(runs[k]) for k in ("no rules", "twenty rules"))
    print(
        f"\n{args.events:,} events, confluent runtime, SQLite; {args.repeat} runs each, alternated"
    )
    print("| | runs, events/s | median |")
    print("| --- | --- | ---: |")
    for name, values in runs.items():
        print(
            f"| {name} | {', '.join(f'{v:,.0f}' for v in values)} | {statistics.median(values):,.0f} |"
        )
    print(f"twenty rules / no rules: {rules / base:.2f}")


if __name__ == "__main__":
    main()
