"""Where the confluent runtime's loop spends its time, phase by phase, on the embedded broker.

    python -m benchmarks.loop [--events 100000] [--repeat 3]

Generated events (as in ``benchmarks.bench``) are produced once; then, per repeat, the confluent
runtime (``kafka_runtime.run_consumer``) runs in this process on a new SQLite database and
consumer group, with wall-time counters around each phase of its loop: ``consume()`` (waiting
for and receiving events), the scoring core, submitting the write (compiling it and sending it
to the writer process), waiting for the write to commit, publishing the alerts, and the offset
commit. Counting starts at the first stored row (group join and the
warm-up batch excluded) and ends when every event is stored. Medians of ``--repeat`` runs, in
microseconds per event. What the phases leave over is the loop's own Python (building the
messages for the core, the batch bookkeeping).
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import statistics
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

from benchmarks.latency import fresh
from benchmarks.timing import timed
from fraudstream.broker import EmbeddedBroker
from fraudstream.settings import Settings
from producer.generate import GeneratorConfig, write_csv
from producer.replay import ReplayOptions, replay

PHASES = (
    ("consume", "consume(): waiting for and receiving events"),
    ("core", "the scoring core (ScoringCore.process)"),
    ("submit", "the SQLite write submitted (SqliteSink.submit)"),
    ("wait", "waiting for the write to commit (Sink.wait)"),
    ("publish", "alerts and dead letters produced, and waited for"),
    ("commit", "offset commit"),
)


def instrument(totals: Counter) -> None:
    from stream_processor import core, kafka_runtime, outbox, sqlite_sink

    class Consumer(kafka_runtime.Consumer):  # a C type: its methods are timed on a subclass
        pass

    timed(Consumer, "consume", "consume", totals)
    timed(Consumer, "commit", "commit", totals)
    kafka_runtime.Consumer = Consumer
    timed(core.ScoringCore, "process", "core", totals)
    timed(sqlite_sink.SqliteSink, "submit", "submit", totals)
    timed(sqlite_sink.SqliteSink, "wait", "wait", totals)
    timed(outbox.KafkaOutbox, "produce", "publish", totals)
    timed(outbox.KafkaDelivery, "wait", "publish", totals)


def count(db: Path) -> int:
    try:
        with sqlite3.connect(db) as conn:
            return conn.execute("select count(*) from transactions").fetchone()[0]
    except sqlite3.Error:  # not created yet
        return 0


def measure(s: Settings, work: Path, events: int, totals: Counter) -> tuple[int, float]:
    """(events counted, seconds) of one run of the runtime on a new database and group."""
    from stream_processor.kafka_runtime import run_consumer

    ps = fresh(s, work, "loop", "confluent").replace(transactions_topic=s.transactions_topic)
    db = Path(ps.sqlite_path)
    stop = threading.Event()
    runner = threading.Thread(target=run_consumer, args=(ps, stop))
    runner.start()
    try:
        first = None
        while (stored := count(db)) < events:
            if stored and first is None:
                totals.clear()
                first, started = stored, time.perf_counter()
            time.sleep(0.05)
        elapsed = time.perf_counter() - started
    finally:
        stop.set()
        runner.join()
    return events - first, elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--events", type=int, default=100_000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()

    totals: Counter = Counter()
    instrument(totals)
    work = Path(tempfile.mkdtemp(prefix="fraudstream-loop-"))
    csv = work / "events.csv"
    write_csv(csv, GeneratorConfig(rows=args.events, days=max(30, args.events // 700), seed=3))
    keys = [key for key, _ in (*PHASES, ("rest", ""), ("total", ""))]
    r = {key: [] for key in keys}
    with EmbeddedBroker(log_path=work / "broker.log") as broker:
        s = Settings.from_env(
            {k: v for k, v in os.environ.items() if k != "KAFKA_BOOTSTRAP_SERVERS"},
            bootstrap_servers=broker.bootstrap,
        )
        s = fresh(s, work, "loop", "confluent")
        replay(csv, broker.bootstrap, s.transactions_topic, ReplayOptions(progress=False))
        for _ in range(args.repeat):
            n, elapsed = measure(s, work, args.events, totals)
            for key, _ in PHASES:
                r[key].append(1e6 * totals[key] / n)
            r["total"].append(1e6 * elapsed / n)
            r["rest"].append(r["total"][-1] - sum(r[k][-1] for k, _ in PHASES))

    print(f"{args.events:,} generated events, confluent runtime on SQLite, {args.repeat} runs")
    print()
    print("| phase of the loop (us per event) | runs | median |")
    print("| --- | --- | --- |")
    rows = (*PHASES, ("rest", "the rest: the loop's own Python"), ("total", "wall time"))
    for key, label in rows:
        print(f"| {label} | {', '.join(f'{v:.1f}' for v in r[key])} | "
              f"{statistics.median(r[key]):.1f} |")  # fmt: skip
    print()
    print(f"events/s (median): {1e6 / statistics.median(r['total']):,.0f}")


if __name__ == "__main__":
    main()
