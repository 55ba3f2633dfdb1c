"""How soon a rule change reaches a processor: from publishing a rule set (what
``fraudstream rules apply`` does) to the processor's health page naming its version, which is
the rule set the next batch is scored with. Idle, and while the processor reads a replay at full
speed, side by side, in each runtime.

    python -m benchmarks.rules_latency [--changes 20] [--events 600000]

The health page is read every 5 ms; in the faust runtime it asks the scoring process, which
answers between batches, so the busy figures there include waiting for a batch to finish.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import threading
import time
import uuid
from dataclasses import replace
from pathlib import Path

from fraudstream.broker import EmbeddedBroker, ensure_topics, free_port
from fraudstream.run import start_processor, stop_processor, wait_until_processed
from fraudstream.settings import Settings
from fraudstream.tables import make_engine
from producer.generate import GeneratorConfig, write_csv
from producer.replay import ReplayOptions, replay
from stream_processor.health import read_health
from stream_processor.rules import DEFAULT_RULES, RuleSet, load_rules_file
from stream_processor.rules_feed import publish


def until_live(settings: Settings, version: int, timeout_s: float = 60.0) -> float:
    """Seconds until the health page names rule set ``version``."""
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        page = read_health(settings.web_port)
        if page is not None and page.get("rules_version") == version:
            return time.monotonic() - started
        time.sleep(0.005)
    raise TimeoutError(f"rule set {version} not live within {timeout_s:.0f} s")


def changes(settings: Settings, n: int, gap_s: float) -> list[float]:
    """Publish ``n`` rule sets (the shipped rules, one more disabled each time): the seconds
    from each publish call to the processor naming it."""
    shipped = load_rules_file(DEFAULT_RULES)
    out = []
    for i in range(n):
        rules = list(shipped.rules)
        k = i % len(rules)
        rules[k] = replace(rules[k], enabled=not rules[k].enabled)
        started = time.monotonic()
        version = publish(settings, RuleSet(tuple(rules), source=f"change {i}")).version
        out.append(time.monotonic() - started + until_live(settings, version, 60.0))
        time.sleep(gap_s)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--changes", type=int, default=20)
    parser.add_argument("--events", type=int, default=600_000)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="fraudstream-rules-latency-"))
    warm, busy = work / "warm.csv", work / "busy.csv"
    write_csv(warm, GeneratorConfig(rows=5000, days=10, seed=5))
    write_csv(busy, GeneratorConfig(rows=args.events, days=max(30, args.events // 700), seed=6))
    env = {k: v for k, v in os.environ.items() if k != "KAFKA_BOOTSTRAP_SERVERS"}
    results: dict[tuple[str, str], list[float]] = {}
    with EmbeddedBroker(log_path=work / "broker.log") as broker:
        for runtime in ("confluent", "faust"):
            tag = uuid.uuid4().hex[:6]
            s = Settings.from_env(
                env, bootstrap_servers=broker.bootstrap, runtime=runtime, web_port=free_port(),
                database_url=f"sqlite:///{work / f'{runtime}.db'}", consumer_group=f"lat-{tag}",
                transactions_topic=f"lat-tx-{tag}", rules_topic=f"lat-rules-{tag}",
            )  # fmt: skip
            ensure_topics(broker.bootstrap, s)
            log = work / f"{runtime}.log"
            proc = start_processor(s, log)
            engine = make_engine(s.database_url)
            try:
                stats = replay(warm, s.bootstrap_servers, s.transactions_topic,
                               ReplayOptions(progress=False))  # fmt: skip
                wait_until_processed(s, engine, [proc], [log], stats.last_offsets, 600)
                print(f"{runtime}: idle", flush=True)
                results[runtime, "idle"] = changes(s, args.changes, 0.2)
                feed = threading.Thread(target=replay, args=(busy, s.bootstrap_servers,
                                        s.transactions_topic, ReplayOptions(progress=False)))  # fmt: skip
                feed.start()
                time.sleep(3.0)  # the processor is reading the replay
                print(f"{runtime}: busy", flush=True)
                results[runtime, "busy"] = changes(s, args.changes, 0.2)
                scored = read_health(s.web_port)["scored"]
                feed.join()
                print(f"{runtime}: {scored:,} events scored when the last change was live "
                      f"(the busy feed: {args.events:,})")  # fmt: skip
            finally:
                engine.dispose()
                stop_processor(proc)
    print(f"\n{args.changes} rule changes each; seconds from publish to live")
    print("| runtime | processor | median | max |")
    print("| --- | --- | ---: | ---: |")
    for (runtime, state), values in results.items():
        print(f"| {runtime} | {state} | {statistics.median(values):.3f} | {max(values):.3f} |")


if __name__ == "__main__":
    main()
