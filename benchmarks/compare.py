"""Two commits side by side on this machine, in one run: the confluent runtime's throughput, and
the p99 latency at a steady feed beside a bare consumer with the same client settings.

    python -m benchmarks.compare --base f0d4698 [--events 200000] [--repeat 3] [--rate 1000]
        [--database sqlite|postgresql]

The base commit is checked out in a temporary git worktree and its compiled modules are built
there with this environment's Cython; both trees then run the same measurement (the functions of
their own ``benchmarks.bench`` and ``benchmarks.latency``), alternately, so that the machine's
drift falls on both alike. Medians and ratios are printed; the worktree is removed at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Run in each tree: only functions both commits have.
DRIVER = r"""
import json, os, sys, tempfile, uuid
from pathlib import Path
from benchmarks.bench import pipeline
from benchmarks.latency import kafka_latency, latency
from fraudstream.broker import EmbeddedBroker, ensure_topics
from fraudstream.settings import Settings
from producer.generate import GeneratorConfig, write_csv
from producer.replay import ReplayOptions, replay

events, rate, seconds = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
database = sys.argv[4]
work = Path(tempfile.mkdtemp(prefix="fraudstream-compare-"))
csv = work / "events.csv"
write_csv(csv, GeneratorConfig(rows=events, days=max(30, events // 700), seed=3))
env = {k: v for k, v in os.environ.items() if k != "KAFKA_BOOTSTRAP_SERVERS"}
with EmbeddedBroker(log_path=work / "broker.log") as broker:
    s = Settings.from_env(env, bootstrap_servers=broker.bootstrap,
                          transactions_topic=f"bench-{uuid.uuid4().hex[:6]}",
                          alerts_topic="bench-alerts", dlq_topic="bench-dlq")
    ensure_topics(broker.bootstrap, s)
    stats = replay(csv, broker.bootstrap, s.transactions_topic, ReplayOptions(progress=False))
    eps = pipeline(s, events, "confluent", stats.last_offsets, work, database)[0]  # events/s
    runtime = latency(s, work, rate, seconds, "confluent")
    bare = kafka_latency(s, work, rate, seconds)
print(json.dumps({"events_per_s": eps, "p50_ms": runtime["p50_ms"], "p99_ms": runtime["p99_ms"],
                  "bare_p50_ms": bare["p50_ms"], "bare_p99_ms": bare["p99_ms"]}))
"""

FIGURES = (
    ("events_per_s", "confluent runtime, events/s (steady state)", "{:,.0f}"),
    ("p50_ms", "p50 ms, produce -> row visible", "{:.1f}"),
    ("p99_ms", "p99 ms, produce -> row visible", "{:.1f}"),
    ("bare_p50_ms", "p50 ms, bare consumer (same client settings)", "{:.1f}"),
    ("bare_p99_ms", "p99 ms, bare consumer (same client settings)", "{:.1f}"),
)


def checkout(rev: str, into: Path) -> Path:
    tree = into / f"tree-{rev}"
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(tree), rev],
                   check=True, capture_output=True)  # fmt: skip
    subprocess.run([sys.executable, "setup.py", "-q", "build_ext", "--inplace"], cwd=tree,
                   check=True, capture_output=True)  # fmt: skip
    return tree


def measure(tree: Path, events: int, rate: int, seconds: float, database: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    args = [str(events), str(rate), str(seconds), database]
    done = subprocess.run([sys.executable, "-c", DRIVER, *args],
                          cwd=tree, env=env, capture_output=True, text=True, timeout=7200)  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"{tree.name}: {done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--base", required=True, help="the commit to compare with")
    ap.add_argument("--head", default="HEAD")
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--rate", type=int, default=1000, help="the steady feed's events/s")
    ap.add_argument("--seconds", type=float, default=15.0)
    ap.add_argument("--database", choices=("sqlite", "postgresql"), default="sqlite",
                    help="where the throughput run stores (the latency runs: SQLite)")  # fmt: skip
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="fraudstream-compare-"))
    revs = {"base": args.base, "head": args.head}
    runs: dict[str, list[dict]] = {name: [] for name in revs}
    try:
        trees = {name: checkout(rev, work) for name, rev in revs.items()}
        for r in range(args.repeat):
            for name, tree in trees.items():  # alternated
                print(f"repeat {r + 1}/{args.repeat}: {name} ({revs[name]})", file=sys.stderr)
                runs[name].append(measure(tree, args.events, args.rate, args.seconds, args.database))
    finally:
        for tree in work.glob("tree-*"):
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)],
                           capture_output=True)  # fmt: skip
        shutil.rmtree(work, ignore_errors=True)
    print(f"\n{args.events:,} events stored in {args.database}; steady feed {args.rate:,} events/s for {args.seconds:.0f} s; "
          f"{args.repeat} runs each, alternated; {os.cpu_count()} cores\n")  # fmt: skip
    print(f"| figure | base {args.base} (runs) | median | head {args.head} (runs) | median "
          "| head / base |")  # fmt: skip
    print("| --- | --- | --- | --- | --- | --- |")
    for key, label, fmt in FIGURES:
        cells = []
        for name in revs:
            values = [run[key] for run in runs[name]]
            cells += [", ".join(fmt.format(v) for v in values), fmt.format(statistics.median(values))]
        base = statistics.median(run[key] for run in runs["base"])
        head = statistics.median(run[key] for run in runs["head"])
        print(f"| {label} | {' | '.join(cells)} | {head / base:.2f} |")


if __name__ == "__main__":
    main()
