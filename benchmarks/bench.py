"""Throughput of the pipeline beside its baselines, on the embedded broker, in one run.

    python -m benchmarks.bench --events 200000 --repeat 3

The same events (generated, keyed by account) are produced once; then, per repeat:

- baseline "confluent consume + JSON decode": a consumer reading every event and json.loads-ing it;
- baseline "bare faust": a faust-streaming agent (take_events) that does nothing;
- "pipeline, <runtime>": the stream processor from the first to the last scored row committed
  in SQLite (alerts published, offsets committed), on a fresh database and consumer group;
- "pipeline, confluent runtime, PostgreSQL": the same on a new PostgreSQL database.

Baseline rates are events/s from the first to the last event; pipeline rates are events/s between
the 10th and the 90th percentile of commit times (steady state: group join, start-up and the warm-up
batch excluded; wall time including them is reported separately). The machine is noisy: read medians
and ratios, not single runs.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import NamedTuple

from confluent_kafka import Consumer
from sqlalchemy import text

from benchmarks.latency import (
    LEAD_IN_S,
    eviction_cost,
    kafka_latency,
    latency,
    million,
    processor_peak_rss_mb,
    processor_pss_mb,
    refit_pause,
    workers_peak_rss_mb,
)
from benchmarks.scaling import rebalance_pause
from fraudstream.broker import EmbeddedBroker, ensure_topics
from fraudstream.run import start_processor, stop_processor, wait_until_processed
from fraudstream.settings import Settings
from fraudstream.tables import drop_database, ensure_database, make_engine
from producer.generate import GeneratorConfig, write_csv
from producer.replay import ReplayOptions, replay

POSTGRES_SERVER = os.environ.get("BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432")


def confluent_baseline(s: Settings, n: int) -> float:
    c = Consumer({**s.kafka_config(), "group.id": f"bench-raw-{uuid.uuid4().hex[:6]}",
                  "auto.offset.reset": "earliest", "enable.auto.commit": False,
                  "session.timeout.ms": s.session_timeout_ms})  # fmt: skip
    c.subscribe([s.transactions_topic])
    seen, first = 0, None
    while seen < n:
        for m in c.consume(1000, timeout=1.0):
            if m.error():
                continue
            if first is None:
                first = time.perf_counter()
            json.loads(m.value())
            seen += 1
    elapsed = time.perf_counter() - first
    c.close()
    return n / elapsed


def faust_baseline(s: Settings, n: int) -> float:
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.faust_baseline", s.bootstrap_servers, s.transactions_topic,
         f"bench-faust-{uuid.uuid4().hex[:6]}", str(n)],
        capture_output=True, text=True, timeout=1800,
    )  # fmt: skip
    line = re.findall(r"\{.*\}", out.stdout)  # faust may print terminal escapes before it
    if not line:
        raise RuntimeError(f"faust baseline failed: {out.stderr[-2000:]}")
    return n / json.loads(line[-1])["seconds"]


class PipelineRun(NamedTuple):
    """One run of the processor over the replayed events (a tuple, events/s first, as the
    older commits that benchmarks.compare runs return it)."""

    events_per_s: float  # steady state
    wall_s: float  # including start-up
    peak_rss_mb: float | None  # the runtime and its data-path processes (scoring, writer)
    workers_peak_rss_mb: float | None  # its other processes (refit worker, forkservers)
    pss_mb: float | None  # every process of the processor at the end, each page counted once


def pipeline(
    s: Settings,
    n: int,
    runtime: str,
    offsets: dict,
    work: Path,
    database: str = "sqlite",
    workers: int = 1,
) -> PipelineRun:
    """The processor over the ``n`` replayed events; ``database``: ``sqlite`` (a new file) or
    ``postgresql`` (a new database on POSTGRES_SERVER, dropped after); ``workers`` processors
    in the group (memory: the first one's)."""
    tag = uuid.uuid4().hex[:6]
    if database == "sqlite":
        url = f"sqlite:///{work / f'bench-{runtime}-{tag}.db'}"
    else:
        url = f"{POSTGRES_SERVER}/fraudstream_bench_{tag}"
        ensure_database(url)
    # A group's shared topics of its own: another run's merchant shares would count here.
    ps = s.replace(runtime=runtime, database_url=url, consumer_group=f"bench-{runtime}-{tag}",
                   merchants_topic=f"bench-merchants-{tag}", learned_topic=f"bench-learned-{tag}",
                   web_port=0)  # fmt: skip
    ensure_topics(ps.bootstrap_servers, ps)
    engine = make_engine(ps.database_url)
    logs = [work / f"bench-{runtime}-{database}-{tag}-{i}.log" for i in range(workers)]
    started = time.monotonic()
    procs = [start_processor(ps, log) for log in logs]
    try:
        wait_until_processed(ps, engine, procs, logs, offsets, timeout_s=3600)
        rss = processor_peak_rss_mb(procs[0].pid)
        worker_rss = workers_peak_rss_mb(procs[0].pid)
        pss = processor_pss_mb(procs[0].pid)
    finally:
        for proc in procs:
            stop_processor(proc)
    wall = time.monotonic() - started
    with engine.connect() as conn:
        times = list(conn.execute(text("select scored_at from transactions order by scored_at")))
    engine.dispose()
    if database != "sqlite":
        drop_database(url)
    times = [t for (t,) in times]
    assert len(times) == n, f"{runtime}: {len(times)} rows for {n} events"
    # Steady state: the 10th to the 90th percentile of commit times, so the warm-up batch
    # (held events all scored at once when the first model is fit) does not inflate the rate.
    lo, hi = n // 10, (9 * n) // 10
    return PipelineRun((hi - lo) / (times[hi] - times[lo]), wall, rss, worker_rss, pss)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--runtimes", default="confluent,faust")
    ap.add_argument(
        "--postgres", action=argparse.BooleanOptionalAction, default=True,
        help=f"the confluent runtime on PostgreSQL too ({POSTGRES_SERVER}, BENCH_POSTGRES_URL)",
    )  # fmt: skip
    ap.add_argument(
        "--latency-rates", default="1000,10000", help="steady feeds to time (events/s); '' = none"
    )
    ap.add_argument("--latency-seconds", type=float, default=20.0)
    ap.add_argument(
        "--million", type=int, default=1_000_000,
        help="rows of the end-to-end run with dbt, each a new account (0 = skip)",
    )  # fmt: skip
    ap.add_argument(
        "--parts", default="throughput,refit,eviction,scaling,million",
        help="what to run: throughput (with the latency feeds and memory), refit, eviction, "
        "scaling (1 and 2 processors on PostgreSQL, a rebalance's pause), million",
    )  # fmt: skip
    ap.add_argument(
        "--keep-work", action="store_true",
        help="keep the work folder (databases, logs: a few GB); removed at the end otherwise",
    )  # fmt: skip
    args = ap.parse_args()
    parts = set(args.parts.split(","))
    if not args.million:
        parts.discard("million")
    work = Path(tempfile.mkdtemp(prefix="fraudstream-bench-"))
    try:
        run(args, parts, work)
    finally:
        if args.keep_work:
            print(f"work folder kept: {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)


def throughput(
    args: argparse.Namespace, s: Settings, offsets: dict, work: Path, repeat: int
) -> tuple[dict, dict, dict, dict]:
    """The throughput part, ``repeat`` times: events/s, wall times, memory and latency runs,
    each a dict of figure name -> runs."""
    results: dict[str, list[float]] = {}
    walls: dict[str, list[float]] = {}
    rss: dict[str, list[float]] = {}
    lat: dict[str, list[dict]] = {}
    for r in range(repeat):
        print(f"repeat {r + 1}/{args.repeat}", file=sys.stderr)
        results.setdefault("baseline: confluent consume + JSON decode", []).append(
            confluent_baseline(s, args.events)
        )
        results.setdefault("baseline: bare faust-streaming (take_events)", []).append(
            faust_baseline(s, args.events)
        )
        for runtime in args.runtimes.split(","):
            done = pipeline(s, args.events, runtime, offsets, work)
            name = f"pipeline, {runtime} runtime"
            results.setdefault(name, []).append(done.events_per_s)
            walls.setdefault(name, []).append(done.wall_s)
            memory = {
                f"{name}: peak RSS, runtime and data path": done.peak_rss_mb,
                f"{name}: peak RSS, its refit worker and forkservers": done.workers_peak_rss_mb,
                f"{name}: PSS at the end, all its processes": done.pss_mb,
            }
            for figure, mb in memory.items():
                rss.setdefault(figure, []).append(mb or float("nan"))
            for feed in [int(x) for x in args.latency_rates.split(",") if x]:
                lat.setdefault(f"{runtime} runtime, {feed:,} events/s", []).append(
                    latency(s, work, feed, args.latency_seconds, runtime)
                )
        if args.postgres:
            name = "pipeline, confluent runtime, PostgreSQL"
            done = pipeline(s, args.events, "confluent", offsets, work, database="postgresql")
            results.setdefault(name, []).append(done.events_per_s)
            walls.setdefault(name, []).append(done.wall_s)
        for feed in [int(x) for x in args.latency_rates.split(",") if x]:
            lat.setdefault(f"baseline: bare confluent consumer, {feed:,} events/s", []).append(
                kafka_latency(s, work, feed, args.latency_seconds)
            )
    return results, walls, rss, lat


def run(args: argparse.Namespace, parts: set[str], work: Path) -> None:
    csv = work / "events.csv"
    write_csv(csv, GeneratorConfig(rows=args.events, days=max(30, args.events // 700), seed=3))
    big = None
    with EmbeddedBroker(log_path=work / "broker.log") as broker:
        s = Settings.from_env({k: v for k, v in os.environ.items() if k != "KAFKA_BOOTSTRAP_SERVERS"},
                              bootstrap_servers=broker.bootstrap,
                              transactions_topic=f"bench-{uuid.uuid4().hex[:6]}",
                              alerts_topic="bench-alerts", dlq_topic="bench-dlq")  # fmt: skip
        ensure_topics(broker.bootstrap, s)
        t = time.perf_counter()
        stats = replay(csv, broker.bootstrap, s.transactions_topic, ReplayOptions(progress=False))
        produce_rate = stats.produced / (time.perf_counter() - t)
        results, walls, rss, lat = throughput(
            args, s, stats.last_offsets, work, args.repeat if "throughput" in parts else 0
        )
        pauses = {}
        if "refit" in parts:
            print("refit pause (in process)", file=sys.stderr)
            pauses = {
                worker: [refit_pause(work, worker=worker) for _ in range(args.repeat)]
                for worker in ("thread", "process")
            }
        scaled: dict[str, list[float]] = {}
        if "scaling" in parts:
            print("scaling out on PostgreSQL", file=sys.stderr)
            scaled = scaling(s, args.events, stats.last_offsets, work, args.repeat)
        evictions = []
        if "eviction" in parts:
            print("eviction cost (in process)", file=sys.stderr)
            evictions = [eviction_cost(work) for _ in range(args.repeat)]
        if "million" in parts:
            print(f"{args.million:,}-row run", file=sys.stderr)
            big = million(s, work, args.million)

    print(
        f"\n{args.events:,} events, {args.repeat} repeats, embedded broker, {os.cpu_count()} cores"
    )
    print(f"producer (confluent-kafka, JSON, idempotent): {produce_rate:,.0f} events/s\n")
    if results:
        print_throughput(results, walls, rss, args.events)
    if big:
        print_million_memory(big, header=not results)
    if lat:
        print_latency(lat)
    if pauses:
        print_pauses(pauses)
    if scaled:
        print_scaling(scaled)
    if evictions:
        print_evictions(evictions)
    if big:
        print_million(big)


def print_million_memory(big: dict, *, header: bool) -> None:
    """The million-row run's memory, as rows of the memory table (``header``: its own)."""
    if header:
        print("| processor peak RSS (MB) | runs | median | target |\n| --- | --- | --- | --- |")
    print(f"| confluent runtime, {big['rows']:,} distinct accounts | {big['peak_rss_mb']:.0f} | "
          f"{big['peak_rss_mb']:.0f} | <= 300 |")  # fmt: skip
    worker = big["worker_peak_rss_mb"] or float("nan")
    print(f"| its refit worker processes, {big['rows']:,} distinct accounts | {worker:.0f} | "
          f"{worker:.0f} | |")  # fmt: skip
    pss = big["pss_mb"] or float("nan")
    print(f"| all its processes, PSS at the end (each page once), {big['rows']:,} distinct "
          f"accounts | {pss:.0f} | {pss:.0f} | |")  # fmt: skip


def scaling(s: Settings, n: int, offsets: dict, work: Path, repeat: int) -> dict:
    """1 and 2 processors on PostgreSQL over the same ``n`` events, alternately, and the
    pause of a rebalance (:func:`benchmarks.scaling.rebalance_pause`): figure -> runs."""
    out: dict[str, list[float]] = {}
    for r in range(repeat):
        print(f"scaling, repeat {r + 1}/{repeat}", file=sys.stderr)
        for workers in (1, 2):
            done = pipeline(s, n, "confluent", offsets, work, "postgresql", workers=workers)
            out.setdefault(f"{workers} processor(s), events/s", []).append(done.events_per_s)
            out.setdefault(f"{workers} processor(s), wall s incl. start-up", []).append(done.wall_s)
        pause = rebalance_pause(s, work, POSTGRES_SERVER)
        rate = f"{pause['rate']:,} events/s"
        for key, label in (
            ("steady_p50_ms", f"latency ms at {rate}, one processor: median"),
            ("steady_max_ms", f"latency ms at {rate}, one processor: longest"),
            ("join_max_ms", "longest while a second processor joins (a rebalance)"),
            ("kill_max_ms", "longest after one of two is killed (session timeout, rebalance)"),
        ):
            out.setdefault(label, []).append(pause[key])
    return out


def print_scaling(scaled: dict) -> None:
    one = statistics.median(scaled["1 processor(s), events/s"])
    print("\n| scaling out, confluent runtime on PostgreSQL | runs | median | vs 1 processor |")
    print("| --- | --- | --- | --- |")
    for name, runs in scaled.items():
        med = statistics.median(runs)
        ratio = f"{med / one:.2f}" if name.endswith("events/s") else ""
        print(f"| {name} | {', '.join(f'{x:,.0f}' for x in runs)} | {med:,.0f} | {ratio} |")


def print_throughput(results: dict, walls: dict, rss: dict, events: int) -> None:
    raw = statistics.median(results["baseline: confluent consume + JSON decode"])
    bare = statistics.median(results["baseline: bare faust-streaming (take_events)"])
    print("| figure | runs (events/s) | median | vs raw consume | vs bare faust |")
    print("| --- | --- | --- | --- | --- |")
    for name, runs in results.items():
        med = statistics.median(runs)
        print(f"| {name} | {', '.join(f'{x:,.0f}' for x in runs)} | {med:,.0f} | "
              f"{med / raw:.3f} | {med / bare:.2f} |")  # fmt: skip
    for name, runs in walls.items():
        print(f"| {name}: wall s incl. start-up | {', '.join(f'{x:.1f}' for x in runs)} | "
              f"{statistics.median(runs):.1f} | | |")  # fmt: skip
    print("\n| processor memory (MB) | runs | median | target |")
    print("| --- | --- | --- | --- |")
    for name, runs in rss.items():
        print(f"| {name}, {events:,} events | {', '.join(f'{x:.0f}' for x in runs)} | "
              f"{statistics.median(runs):.0f} | |")  # fmt: skip


def print_latency(lat: dict) -> None:
    print(f"\n| latency, produce -> row visible in SQLite (baseline: -> consumed), after the "
          f"feed's first {LEAD_IN_S:.0f} s | p50 ms (runs) | p99 ms (runs) | max ms (runs) | "
          "median p99 | first second: max ms | target |")  # fmt: skip
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name, runs in lat.items():

        def col(key, runs=runs):
            return ", ".join(f"{r[key]:,.0f}" for r in runs)

        p99 = statistics.median(r["p99_ms"] for r in runs)
        target = "<= 100 at 1,000/s" if name.endswith(" 1,000 events/s") else ""
        target = "" if name.startswith("baseline") else target
        print(f"| {name} | {col('p50_ms')} | {col('p99_ms')} | {col('max_ms')} | "
              f"{p99:,.0f} | {col('max_lead_in_ms')} | {target} |")  # fmt: skip


def print_pauses(pauses: dict) -> None:
    print("\n| refit pause (core + sink in process, batches of 1,000; ms) | refits in | runs "
          "| median | target |")  # fmt: skip
    print("| --- | --- | --- | --- | --- |")
    for key, label, target in (
        ("median_quiet_ms", "batch time, no refit running: median", ""),
        ("max_quiet_ms", "batch time, no refit running: longest", ""),
        ("median_during_refit_ms", "batch time while a refit runs: median", ""),
        ("max_during_refit_ms", "batch time while a refit runs: longest", ""),
        ("max_swap_ms", "longest batch that swaps a model in and records it", ""),
        ("pause_ms", "longest of the two above - quiet median", ""),
        ("max_refit_start_ms", "refit work on the batch path: start (copy, send the window)", ""),
        ("max_refit_swap_ms", "refit work on the batch path: swap (receive, install, record)", ""),
        ("refit_work_ms", "longest pause: refit work on the batch path, start or swap", "<= 50"),
    ):
        for worker, runs_of in pauses.items():
            if worker == "thread" and key.startswith(("max_refit_", "refit_work")):
                continue  # a thread's pause is the GIL held by the fit, in the batch times above
            runs = [p[key] for p in runs_of if p[key] is not None]
            print(f"| {label} | {worker}{' (baseline)' if worker == 'thread' else ''} | "
                  f"{', '.join(f'{x:.1f}' for x in runs)} | "
                  f"{statistics.median(runs):.1f} | {target if worker == 'process' else ''} |")  # fmt: skip


def print_evictions(runs: list[dict]) -> None:
    first = runs[0]
    print(f"\n| bounded account memory, {first['events']:,} events of {first['accounts']:,} "
          "accounts (core + sink in process) | MAX_ACCOUNTS | events/s (runs) | median | vs all "
          "in memory | accounts rebuilt (median) |")  # fmt: skip
    print("| --- | --- | --- | --- | --- | --- |")
    base = statistics.median(r["all"]["events_per_s"] for r in runs)
    for label, name in (("all", "every account in memory (baseline)"),
                        ("quarter", "room for a quarter"), ("tenth", "room for a tenth")):  # fmt: skip
        rates = [r[label]["events_per_s"] for r in runs]
        med = statistics.median(rates)
        rebuilt = statistics.median(r[label]["rebuilt"] for r in runs)
        print(f"| {name} | {first[label]['max_accounts']:,} | "
              f"{', '.join(f'{x:,.0f}' for x in rates)} | {med:,.0f} | {med / base:.2f} | "
              f"{rebuilt:,.0f} |")  # fmt: skip


def print_million(big: dict) -> None:
    print(f"\n| {big['rows']:,}-row replay, each row a new account, confluent runtime | seconds "
          "| target |")  # fmt: skip
    print("| --- | --- | --- |")
    print(f"| produce -> last row committed | {big['stream_s']:.1f} | |")
    print(f"| dbt build ({'passed' if big['dbt_ok'] else 'FAILED'}) | {big['dbt_s']:.1f} | |")
    print(f"| end to end, dbt included | {big['total_s']:.1f} | <= 60 |")
    print(f"| rows stored | {big['stored']:,} | |")


if __name__ == "__main__":
    main()
