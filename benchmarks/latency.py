"""Latency, refit pause, memory and the million-row run: the figures beside throughput.

- latency: produce -> row visible in SQLite to a reader, at a steady feed (``--rate``), measured by
  a reader thread polling the database every 5 ms, after a warm-up that fits the first model;
- refit pause: the scoring core and the sink in this process (the same ``handle`` call a runtime
  makes per batch), batch by batch, while refits run in the background thread;
- memory: the processor's peak RSS (VmHWM) in a run, and with 1,000,000 distinct accounts;
- the million-row run: produce -> last row committed -> dbt build, one process per step.
"""

from __future__ import annotations

import sqlite3
import statistics
import threading
import time
import uuid
from pathlib import Path

import pandas as pd

from fraudstream.broker import ensure_topics
from fraudstream.processes import descendants, process_name
from fraudstream.run import start_processor, stop_processor, wait_until_processed
from fraudstream.settings import Settings
from fraudstream.tables import make_engine
from producer.generate import GeneratorConfig, write_csv
from producer.replay import ReplayOptions, replay

LEAD_IN_S = 1.0
"""Latency percentiles leave out the feed's first second: a new idempotent producer holds its first
events until it has a producer id (up to ~0.6 s on the embedded broker, also with no processor at
all); that start-up is reported apart (``max_lead_in_ms``)."""


def _proc_mb(pid: int, file: str, key: str) -> float | None:
    """A ``key: N kB`` line of ``/proc/PID/<file>`` of a live process, in MB."""
    try:
        for line in Path(f"/proc/{pid}/{file}").read_text().splitlines():
            if line.startswith(key):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def peak_rss_mb(pid: int) -> float | None:
    """VmHWM (peak resident set) of a live process, in MB."""
    return _proc_mb(pid, "status", "VmHWM:")


def pss_mb(pid: int) -> float | None:
    """Proportional set size of a live process, in MB: each page shared with other processes
    counts for its share, so a sum over processes counts every page once (a sum of resident
    sets counts a page forked from the forkserver once in each process that shares it)."""
    return _proc_mb(pid, "smaps_rollup", "Pss:")


def processor_pss_mb(pid: int) -> float | None:
    """The proportional set sizes of the processor and every process below it, summed, in MB:
    the memory the whole processor holds, each page once."""
    sizes = [pss_mb(p) for p in [pid, *descendants(pid)]]
    return None if sizes[0] is None else sum(x for x in sizes if x is not None)


def _data_path_names() -> tuple[str, ...]:
    from stream_processor.remote import CORE_PROCESS_NAME
    from stream_processor.writer import WRITER_PROCESS_NAME

    return (CORE_PROCESS_NAME, WRITER_PROCESS_NAME)


def processor_peak_rss_mb(pid: int) -> float | None:
    """Peak RSS of the processor: the runtime's process, plus its scoring process when the core
    runs in one (the faust runtime) and its SQLite writer process (the confluent runtime), in
    MB."""
    names = _data_path_names()
    peaks = [peak_rss_mb(pid)] + [
        peak_rss_mb(child) for child in descendants(pid) if process_name(child) in names
    ]
    return None if peaks[0] is None else sum(p for p in peaks if p is not None)


def workers_peak_rss_mb(pid: int) -> float | None:
    """Sum of the peak RSS of the processor's other processes (the refit worker and the
    forkservers that start processes), in MB."""
    names = _data_path_names()
    peaks = [peak_rss_mb(c) for c in descendants(pid) if process_name(c) not in names]
    return sum(p for p in peaks if p is not None) if peaks else None


def fresh(s: Settings, work: Path, name: str, runtime: str) -> Settings:
    tag = uuid.uuid4().hex[:6]
    ns = s.replace(
        runtime=runtime,
        database_url=f"sqlite:///{work / f'{name}-{runtime}-{tag}.db'}",
        consumer_group=f"bench-{name}-{tag}",
        transactions_topic=f"bench-{name}-{tag}",
        alerts_topic=f"bench-{name}-alerts-{tag}",
        dlq_topic=f"bench-{name}-dlq-{tag}",
        labels_topic=f"bench-{name}-labels-{tag}",
        merchants_topic=f"bench-{name}-merchants-{tag}",
        learned_topic=f"bench-{name}-learned-{tag}",
        web_port=0,
    )
    ensure_topics(ns.bootstrap_servers, ns)
    return ns


class Poller(threading.Thread):
    """Reads new rows every ``interval`` s; latency = time first seen - produced_at."""

    def __init__(self, db: str, interval: float = 0.005):
        super().__init__(daemon=True)
        self.db, self.interval = db, interval
        self.latencies: list[float] = []
        self.produced: list[float] = []  # produced_at of each, aligned with ``latencies``
        self.after_rowid = 0
        self.stop = threading.Event()

    def run(self) -> None:
        conn = sqlite3.connect(self.db)
        while not self.stop.is_set():
            rows = conn.execute(
                "select rowid, produced_at from transactions where rowid > ? order by rowid",
                (self.after_rowid,),
            ).fetchall()
            now = time.time()
            for rowid, produced in rows:
                self.after_rowid = rowid
                if produced is not None and self.recording:
                    self.latencies.append(now - produced)
                    self.produced.append(produced)
            time.sleep(self.interval)
        conn.close()

    recording = False


def latency(s: Settings, work: Path, rate: int, seconds: float, runtime: str) -> dict:
    """p50 / p99 / max latency (ms) of a steady feed at ``rate`` events/s for ``seconds``."""
    ls = fresh(s, work, f"lat{rate}", runtime)
    n = int(rate * seconds)
    warm_n = 3000
    csv = work / f"latency-{rate}.csv"
    frame = pd.read_csv(csv) if csv.exists() else None
    if frame is None:
        write_csv(csv, GeneratorConfig(rows=warm_n + n, days=max(10, (warm_n + n) // 2000), seed=5))
        frame = pd.read_csv(csv)
    warm, feed = work / f"latency-{rate}-warm.csv", work / f"latency-{rate}-feed.csv"
    frame.iloc[:warm_n].to_csv(warm, index=False)
    frame.iloc[warm_n:].to_csv(feed, index=False)
    db = ls.sqlite_path
    engine = make_engine(ls.database_url)
    log = work / f"latency-{rate}-{runtime}.log"
    proc = start_processor(ls, log)
    poller = Poller(db)
    try:
        stats = replay(
            warm, ls.bootstrap_servers, ls.transactions_topic, ReplayOptions(progress=False)
        )
        wait_until_processed(ls, engine, [proc], [log], stats.last_offsets, timeout_s=600)
        poller.start()
        time.sleep(0.5)
        poller.recording = True
        stats = replay(
            feed, ls.bootstrap_servers, ls.transactions_topic,
            ReplayOptions(progress=False, rate=rate),
        )  # fmt: skip
        wait_until_processed(ls, engine, [proc], [log], stats.last_offsets, timeout_s=3600)
        time.sleep(0.2)
        rss = processor_peak_rss_mb(proc.pid)
    finally:
        poller.stop.set()
        stop_processor(proc)
        engine.dispose()
    out = percentiles(poller.produced, poller.latencies, n)
    out.update(produced_per_s=stats.events_per_s, peak_rss_mb=rss)
    return out


def percentiles(produced: list[float], latencies: list[float], n: int) -> dict:
    """p50 / p99 / max in ms of the steady feed: events produced after its first LEAD_IN_S."""
    if len(latencies) < n * 0.99:
        raise RuntimeError(f"latency: saw {len(latencies)} of {n} events")
    start = min(produced) + LEAD_IN_S
    lat = sorted(lat for p, lat in zip(produced, latencies, strict=True) if p >= start)
    return {
        "p50_ms": 1000 * lat[len(lat) // 2],
        "p99_ms": 1000 * lat[int(len(lat) * 0.99)],
        "max_ms": 1000 * lat[-1],
        "events": len(lat),
        "max_lead_in_ms": 1000
        * max((lat for p, lat in zip(produced, latencies, strict=True) if p < start), default=0.0),
    }


def kafka_latency(s: Settings, work: Path, rate: int, seconds: float) -> dict:
    """The baseline: produce -> consumed by a bare confluent-kafka consumer, same feed, same
    broker, same consumer settings as the confluent runtime (no processing, no database)."""
    from confluent_kafka import Consumer

    from stream_processor.kafka_runtime import consumer_config
    from stream_processor.pipeline import produced_at

    ks = fresh(s, work, f"kafka{rate}", "confluent")
    n = int(rate * seconds)
    feed = work / f"latency-{rate}-feed.csv"
    produced, latencies = [], []
    stop, ready = threading.Event(), threading.Event()

    def consume() -> None:
        consumer = Consumer(consumer_config(ks))
        consumer.subscribe([ks.transactions_topic])
        while not stop.is_set():
            for m in consumer.consume(ks.batch_size, timeout=ks.batch_timeout_s):
                if m.error() is None and (sent := produced_at(m.headers())) is not None:
                    latencies.append(time.time() - sent)
                    produced.append(sent)
            if consumer.assignment():
                ready.set()
        consumer.close()

    reader = threading.Thread(target=consume, daemon=True)
    reader.start()
    try:
        ready.wait(60)
        replay(
            feed, ks.bootstrap_servers, ks.transactions_topic,
            ReplayOptions(progress=False, rate=rate),
        )  # fmt: skip
        deadline = time.monotonic() + 60
        while len(latencies) < n and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        stop.set()
        reader.join(30)
    return percentiles(produced, latencies, n)


def raw_messages(frame: pd.DataFrame) -> list:
    """The rows of ``frame`` as the runtimes hand them to the pipeline (JSON values)."""
    from stream_processor.core import RawMessage

    return [RawMessage(r.to_json().encode(), offset=i) for i, (_, r) in enumerate(frame.iterrows())]


def refit_pause(
    work: Path, events: int = 60_000, batch: int = 1000, worker: str = "process"
) -> dict:
    """Per-batch time of the pipeline's ``handle`` with and without a refit running (ms).

    ``worker``: ``process`` (the product's refit worker) or ``thread`` (the baseline,
    ``benchmarks.baselines.ThreadRefits``: the fit shares the interpreter's GIL with the batch
    path)."""
    from benchmarks.baselines import ThreadRefits
    from stream_processor.pipeline import BatchPipeline, tune_gc

    csv = work / "refit.csv"
    write_csv(csv, GeneratorConfig(rows=events, days=max(10, events // 700), seed=9))
    frame = pd.read_csv(csv)
    values = raw_messages(frame)
    settings = Settings().replace(
        database_url=f"sqlite:///{work / f'refit-{uuid.uuid4().hex[:6]}.db'}",
        # a refit every 20,000 events, however fast they come: a fit takes about ten batches
        # here, so every 10,000 left no batch between one refit and the next to compare with
        refit_every_events=20_000,
        refit_min_interval_s=0.0,
        batch_size=batch,
    )
    pipeline = BatchPipeline(settings, refits=ThreadRefits() if worker == "thread" else None)
    core = pipeline.core
    core.refits.wait_started()  # the worker process starts once, with the processor
    tune_gc()  # as the runtimes do
    quiet, busy, swaps, starts, installs = [], [], [], [], []
    try:
        for i in range(0, len(values), batch):
            running = core.scorer.refit.running
            t = time.perf_counter()
            out = pipeline.handle(values[i : i + batch])
            dt = 1000 * (time.perf_counter() - t)
            versions = core.model.version if core.model else 0
            if i < settings.warmup_events:
                continue  # the warm-up batches hold events; the first fit is not a refit
            if not running and core.scorer.refit.running:
                starts.append(1000 * out.refit_s)  # copied and sent a training window
            elif running and not core.scorer.refit.running:
                installs.append(1000 * out.refit_s)  # received, installed, recorded a model
            if running and not core.scorer.refit.running:
                swaps.append(dt)  # this batch swapped the new model in and recorded it
            elif running or core.scorer.refit.running:
                busy.append(dt)
            else:
                quiet.append(dt)
        pipeline.finish()
    finally:
        pipeline.close()
    return _pause_summary(batch, worker, quiet, busy, swaps, starts, installs, versions)


def _pause_summary(batch, worker, quiet, busy, swaps, starts, installs, versions) -> dict:
    """refit_pause's figures from its batch times (ms): quiet, during a refit, swapping one in;
    and the refit work itself (starting one, installing one)."""
    if not quiet:
        raise RuntimeError("no batch ran without a refit: refits ran back to back")
    median = statistics.median(quiet)
    worst = max(busy + swaps)
    return {
        "batch": batch,
        "worker": worker,
        "median_quiet_ms": median,
        "max_quiet_ms": max(quiet),
        "median_during_refit_ms": statistics.median(busy) if busy else None,
        "max_during_refit_ms": max(busy) if busy else None,
        "max_swap_ms": max(swaps) if swaps else None,
        "pause_ms": worst - median,
        "max_refit_start_ms": max(starts) if starts else None,
        "max_refit_swap_ms": max(installs) if installs else None,
        "refit_work_ms": max(starts + installs) if starts or installs else None,
        "refits": versions - 1,
        "batches_during_refit": len(busy) + len(swaps),
    }


def eviction_cost(work: Path, events: int = 60_000, accounts: int = 6_000) -> dict:
    """What bounded account memory costs when evicted accounts come back (in process).

    The same generated events (``accounts`` accounts, about ``events / accounts`` each, spread
    over the whole period) through the pipeline three times: with every account in memory
    (the baseline), with room for a quarter of them, and for a tenth; each evicted account is
    rebuilt from its stored events when it comes back. Events/s between the first fit and the
    end, and how many accounts were rebuilt."""
    from stream_processor.pipeline import BatchPipeline, tune_gc

    csv = work / "eviction.csv"
    write_csv(csv, GeneratorConfig(rows=events, accounts=accounts, days=60, seed=21))
    frame = pd.read_csv(csv)
    values = raw_messages(frame)
    out = {"events": len(values), "accounts": int(frame["account_id"].nunique())}
    for label, cap in (("all", accounts), ("quarter", accounts // 4), ("tenth", accounts // 10)):
        settings = Settings().replace(
            database_url=f"sqlite:///{work / f'evict-{uuid.uuid4().hex[:6]}.db'}",
            max_accounts=cap,
            batch_size=1000,
        )
        pipeline = BatchPipeline(settings)
        pipeline.core.refits.wait_started()
        tune_gc()
        try:
            started = None
            for i in range(0, len(values), 1000):
                pipeline.handle(values[i : i + 1000])
                if started is None and pipeline.core.model is not None:
                    started, first = time.perf_counter(), i + 1000
            rate = (len(values) - first) / (time.perf_counter() - started)
            out[label] = {
                "max_accounts": cap,
                "events_per_s": rate,
                "rebuilt": pipeline.core.counts["accounts_rebuilt"],
                "evicted": pipeline.core.states.evicted,
            }
            pipeline.finish()
        finally:
            pipeline.close()
    return out


def million(s: Settings, work: Path, rows: int, runtime: str = "confluent") -> dict:
    """``rows`` events, every one from a different account: wall time, dbt, peak RSS."""
    from batch.build import dbt_build

    csv = work / f"million-{rows}.csv"
    write_csv(csv, GeneratorConfig(rows=rows, days=90, seed=13))
    frame = pd.read_csv(csv)
    frame["account_id"] = [f"U{i:07d}" for i in range(len(frame))]  # distinct accounts
    frame.to_csv(csv, index=False)
    ms = fresh(s, work, "million", runtime)  # MAX_ACCOUNTS as set: evicted accounts rebuilt
    engine = make_engine(ms.database_url)
    log = work / f"million-{runtime}.log"
    started = time.monotonic()
    proc = start_processor(ms, log)
    try:
        stats = replay(
            csv, ms.bootstrap_servers, ms.transactions_topic, ReplayOptions(progress=False)
        )
        wait_until_processed(ms, engine, [proc], [log], stats.last_offsets, timeout_s=7200)
        stream_s = time.monotonic() - started
        rss = processor_peak_rss_mb(proc.pid)
        worker_rss = workers_peak_rss_mb(proc.pid)
        pss = processor_pss_mb(proc.pid)
        with engine.connect() as conn:
            stored = conn.exec_driver_sql("select count(*) from transactions").scalar()
    finally:
        stop_processor(proc)
        engine.dispose()
    t = time.monotonic()
    outcome = dbt_build(Path(ms.sqlite_path))
    dbt_s = time.monotonic() - t
    return {
        "rows": rows,
        "stored": stored,
        "stream_s": stream_s,
        "dbt_s": dbt_s,
        "dbt_ok": outcome.ok,
        "total_s": stream_s + dbt_s,
        "peak_rss_mb": rss,
        "worker_peak_rss_mb": worker_rss,
        "pss_mb": pss,
        "produced_per_s": stats.events_per_s,
    }
