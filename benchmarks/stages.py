"""Where a batch's time goes: the scoring core and the sink in process, stage by stage.

    python -m benchmarks.stages [--csv data/transactions.csv] [--repeat 3]

The events of the CSV (JSON values, as a runtime hands them over) go through a
``BatchPipeline`` in batches of ``BATCH_SIZE`` (1,000), with no Kafka; once the first model is
fit, each stage's wall time is summed and printed per event: decoding and validation, the
account and merchant features, the forest's scores, building the rows (the scores included),
the whole core, and the SQLite write. Per-stage wall times, not profiler shares (a profiler
inflates Python-heavy stages several times over). Medians of ``--repeat`` runs, each on a new
database.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path

import pandas as pd

from benchmarks.latency import raw_messages
from benchmarks.timing import timed
from fraudstream.settings import Settings

STAGES = (
    ("decode", "decode + validate (json.loads, checks, times)"),
    ("features", "account and merchant features (AccountStates)"),
    ("score", "Isolation Forest scores (flat trees, one call per batch)"),
    ("emit", "rows, reasons, features JSON (includes the scores)"),
    ("process", "the whole scoring core (ScoringCore.process)"),
    ("write", "the SQLite write (Sink.submit and Sink.wait: one transaction per batch, here)"),
)


def measure(values: list, work: Path, batch: int, totals: Counter) -> tuple[int, float]:
    """(events timed, seconds) for one run on a new database."""
    from stream_processor.pipeline import BatchPipeline, tune_gc

    settings = Settings().replace(
        database_url=f"sqlite:///{work / f'stages-{uuid.uuid4().hex[:6]}.db'}", batch_size=batch
    )
    pipeline = BatchPipeline(settings)
    pipeline.core.refits.wait_started()
    tune_gc()
    try:
        i = 0
        while pipeline.core.model is None and i < len(values):  # warm-up: the first fit
            pipeline.handle(values[i : i + batch])
            i += batch
        totals.clear()
        started = time.perf_counter()
        for j in range(i, len(values), batch):
            pipeline.handle(values[j : j + batch])
        elapsed = time.perf_counter() - started
        pipeline.finish()
    finally:
        pipeline.close()
    return len(values) - i, elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--csv", default="data/transactions.csv")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--batch", type=int, default=1000)
    args = ap.parse_args()

    from stream_processor import core, model, sink

    totals: Counter = Counter()
    timed(core, "decode", "decode", totals)
    timed(core.ScoringCore, "_features", "features", totals)
    timed(model.FittedModel, "score", "score", totals)
    timed(core.ScoringCore, "_emit", "emit", totals)
    timed(core.ScoringCore, "process", "process", totals)
    # BatchPipeline.handle submits, then waits (the sink writes in process here: submit is
    # the whole write); Sink.write alone is no longer on this path
    timed(sink.Sink, "submit", "write", totals)
    timed(sink.Sink, "wait", "write", totals)

    values = raw_messages(pd.read_csv(args.csv))
    work = Path(tempfile.mkdtemp(prefix="fraudstream-stages-"))
    runs: dict[str, list[float]] = {key: [] for key, _ in STAGES}
    runs["total"] = []
    for _ in range(args.repeat):
        n, elapsed = measure(values, work, args.batch, totals)
        for key, _ in STAGES:
            runs[key].append(1e6 * totals[key] / n)
        runs["total"].append(1e6 * elapsed / n)

    print(f"{len(values):,} events of {args.csv}, batches of {args.batch:,}, {args.repeat} runs")
    print()
    print("| stage | us per event (runs) | median | share of the total |")
    print("| --- | --- | --- | --- |")
    total = statistics.median(runs["total"])
    for key, label in (*STAGES, ("total", "BatchPipeline.handle, all of it")):
        med = statistics.median(runs[key])
        cells = ", ".join(f"{v:.1f}" for v in runs[key])
        print(f"| {label} | {cells} | {med:.1f} | {med / total:.0%} |")
    print()
    print(f"events/s in process (median): {1e6 / total:,.0f}")


if __name__ == "__main__":
    main()
