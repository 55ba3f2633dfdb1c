"""``fraudstream run``: the whole pipeline once, on the embedded broker or
``KAFKA_BOOTSTRAP_SERVERS``, summarised from the database and the alerts topic."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from confluent_kafka import Consumer, TopicPartition
from sqlalchemy import Engine, func, select
from sqlalchemy import table as sa_table
from sqlalchemy.exc import OperationalError, SQLAlchemyError

from fraudstream.broker import ensure_topics, free_port, kafka_cluster
from fraudstream.processes import die_with_parent
from fraudstream.processes import stop as stop_processor
from fraudstream.settings import Settings
from fraudstream.tables import (
    OutdatedDatabase,
    UnreachableDatabase,
    UnsupportedDatabase,
    dead_letters,
    drop_tables,
    ensure_database,
    labels_table,
    make_engine,
    model_versions,
    pending_events,
    shown_url,
    transactions,
)
from fraudstream.topics import read_topic
from stream_processor.rules import RuleSet
from stream_processor.rules_feed import RulesTopicError
from stream_processor.rules_feed import apply as apply_rules

MARTS = ("fraud_flags", "spending_aggregations", "daily_kpis", "model_quality", "rule_hits")


class RunError(RuntimeError):
    pass


@dataclass
class RunSummary:
    csv: Path
    database: Path | None  # the SQLite file
    database_url: str = ""  # as shown: without a password
    replay: object | None = None  # producer.replay.ReplayStats
    wall_s: float = 0.0
    stored_rows: int = 0
    new_rows: int = 0
    flagged: int = 0
    dead_letters: int = 0
    alerts_on_topic: int = 0
    models: list[dict] = field(default_factory=list)
    top_alerts: list[dict] = field(default_factory=list)
    quality: dict | None = None
    processor_logs: list[Path] = field(default_factory=list)  # one a processor
    runtime: str = "confluent"
    workers: int = 1
    dbt: object | None = None  # batch.build.BuildOutcome
    marts: dict = field(default_factory=dict)  # table -> rows
    labels_stored: int = 0
    rules_version: int | None = None  # of the rules applied before the replay


def run_pipeline(
    csv_path: Path,
    settings: Settings,
    *,
    fresh: bool = False,
    timeout_s: float = 900.0,
    dbt: bool = True,
    labels: bool = False,
    workers: int = 1,
    rules: RuleSet | None = None,
    **replay,  # rate, speedup, limit, progress: as in producer.replay.ReplayOptions
) -> RunSummary:
    """Replay ``csv_path`` through the stream processor (and dbt), ``rules`` applied first;
    summarise what was stored."""
    from producer.replay import ReplayOptions

    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise RunError(f"{csv_path}: no such file (generate one with `fraudstream generate`)")
    _check_workers(settings, workers)
    db = Path(settings.sqlite_path).resolve() if settings.sqlite_path else None
    if db is not None:
        settings = settings.replace(database_url=f"sqlite:///{db}")
    log_dir = (db.parent if db else Path.cwd()) / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)  # and the SQLite file's folder
    engine = _open_database(settings, fresh)
    with engine.connect() as conn:
        rows_before = _count(conn, transactions)
    summary = RunSummary(
        csv=csv_path,
        database=db,
        database_url=shown_url(settings.database_url),
        processor_logs=[log_dir / f"processor-{i}.log" for i in range(workers)]
        if workers > 1 else [log_dir / "processor.log"],
        runtime=settings.runtime,
        workers=workers,
    )
    options = ReplayOptions(
        **replay,
        labels_topic=settings.labels_topic if labels else None,
        label_delay_s=settings.label_delay_days * 86400,
    )
    with kafka_cluster(settings, log_path=log_dir / "broker.log") as bootstrap:
        settings = settings.replace(bootstrap_servers=bootstrap)
        ensure_topics(bootstrap, settings)
        if rules is not None:  # as `fraudstream rules apply` does
            try:
                summary.rules_version = apply_rules(settings, rules).live.version
            except RulesTopicError as exc:
                raise RunError(str(exc)) from exc
        _replay_and_process(csv_path, settings, engine, summary, options, timeout_s)
        read_back(summary, engine, settings, rows_before)
    if dbt:
        _build_marts(summary, engine, settings, fresh)
    engine.dispose()
    return summary


def _check_workers(settings: Settings, workers: int) -> None:
    """:class:`RunError` unless ``workers`` processors can run on these settings."""
    if workers > 1 and (settings.sqlite_path or settings.database_url.startswith("sqlite")):
        raise RunError(
            f"--workers {workers}: several processors need a database they can share; SQLite "
            "is for one. Set DATABASE_URL to PostgreSQL (docs/running.md)."
        )
    if workers > 1 and settings.runtime != "confluent":
        raise RunError(f"--workers {workers}: several processors run on the confluent runtime")


def _open_database(settings: Settings, fresh: bool) -> Engine:
    try:
        if ensure_database(settings.database_url):
            print(f"created the database {shown_url(settings.database_url)}", file=sys.stderr)
        if fresh:
            drop_tables(settings.database_url)
        return make_engine(settings.database_url)  # creates the tables before anyone reads it
    except (OutdatedDatabase, UnsupportedDatabase, UnreachableDatabase, SQLAlchemyError) as exc:
        raise RunError(f"{shown_url(settings.database_url)}: {exc}") from exc


def _count(conn, table, *where) -> int:
    return conn.execute(select(func.count()).select_from(table).where(*where)).scalar()


def _replay_and_process(
    csv_path: Path, settings: Settings, engine, summary: RunSummary, options, timeout_s: float
) -> None:
    from producer.replay import replay

    procs = [
        # each processor's health page on a free port of its own
        start_processor(settings.replace(web_port=free_port()) if settings.web_port else settings,
                        log)  # fmt: skip
        for log in summary.processor_logs
    ]
    try:
        started = time.monotonic()
        stats = replay(
            csv_path, settings.bootstrap_servers, settings.transactions_topic, options,
            settings.kafka_config(),
        )  # fmt: skip
        if stats.failed:
            raise RunError(f"{stats.failed} events were not delivered: {stats.errors[:3]}")
        summary.replay = stats
        wait_until_processed(
            settings, engine, procs, summary.processor_logs, stats.last_offsets, timeout_s,
            stats.label_offsets,
        )  # fmt: skip
        summary.wall_s = time.monotonic() - started
    finally:
        for proc in procs:
            stop_processor(proc)


def _build_marts(summary: RunSummary, engine: Engine, settings: Settings, fresh: bool) -> None:
    from batch.build import dbt_build

    # After --fresh the incremental marts start over too (PostgreSQL keeps dbt's tables).
    summary.dbt = dbt_build(settings.database_url, full_refresh=fresh)
    with engine.connect() as conn:
        for mart in MARTS:
            try:
                summary.marts[mart] = _count(conn, sa_table(mart))
            except Exception:  # noqa: BLE001 - a failed build leaves it missing
                summary.marts[mart] = None


def start_processor(settings: Settings, log_path: Path) -> subprocess.Popen:
    with open(log_path, "ab") as log_file:  # the child writes through its own copy
        return subprocess.Popen(
            [sys.executable, "-m", "fraudstream", "process"],
            env={**os.environ, **settings.to_env()},
            stdout=log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            preexec_fn=die_with_parent,
        )


def consumer_lag(settings: Settings, last_offsets: dict[str, dict[int, int]]) -> int:
    """Events up to ``last_offsets`` (topic -> partition -> last produced offset) not committed.

    Measured against the producer's delivery reports, not the topic's high watermark: the embedded
    broker's ListOffsets answers with the start of the last record batch, not the end.
    """
    consumer = Consumer(
        {
            **settings.kafka_config(),
            "group.id": settings.consumer_group,
            "enable.auto.commit": False,
        }
    )
    try:
        wanted = {(t, p): last for t, parts in last_offsets.items() for p, last in parts.items()}
        answered = consumer.committed([TopicPartition(t, p) for t, p in wanted], timeout=10)
        committed = {(tp.topic, tp.partition): tp.offset for tp in answered}
        return sum(max(0, last + 1 - max(committed.get(key, 0), 0)) for key, last in wanted.items())
    finally:
        consumer.close()


def wait_until_processed(
    settings,
    engine,
    procs: list[subprocess.Popen],
    log_paths: list[Path],
    last_offsets: dict[int, int],
    timeout_s: float,
    label_offsets: dict[int, int] | None = None,
) -> None:
    """Until the group has committed every event up to ``last_offsets`` (and the labels up to
    ``label_offsets``) and holds none for the first fit; :class:`RunError` if one of ``procs``
    (the processors, writing to ``log_paths``) exits, or after ``timeout_s``."""
    topics = {settings.transactions_topic: last_offsets, settings.labels_topic: label_offsets or {}}
    deadline = time.monotonic() + timeout_s
    last_report = time.monotonic()
    while True:
        for proc, log_path in zip(procs, log_paths, strict=True):
            if proc.poll() is not None:
                raise RunError(
                    f"the stream processor exited with code {proc.returncode}; see {log_path}:\n"
                    + _tail(log_path)
                )
        lag = consumer_lag(settings, topics)
        try:
            with engine.connect() as conn:
                held = _count(conn, pending_events)
        except OperationalError:  # the server restarts, say: the processors wait for it too
            held = None
        if lag == 0 and held == 0:
            return
        if time.monotonic() > deadline:
            raise RunError(
                f"the stream processor did not catch up within {timeout_s:.0f} s "
                f"(lag {lag} events, {held} held); see {', '.join(map(str, log_paths))}"
            )
        if time.monotonic() - last_report > 10:
            held_text = "?" if held is None else f"{held:,}"  # ? while the database is away
            print(f"stream processor: {lag:,} events to go, {held_text} held for the first fit",
                  file=sys.stderr)  # fmt: skip
            last_report = time.monotonic()
        time.sleep(0.25)


def read_back(summary: RunSummary, engine, settings: Settings, rows_before: int) -> None:
    t, m = transactions, model_versions
    flagged = t.c.is_flagged == 1
    with engine.connect() as conn:
        summary.stored_rows = _count(conn, t)
        summary.new_rows = summary.stored_rows - rows_before
        summary.flagged = _count(conn, t, flagged)
        summary.dead_letters = _count(conn, dead_letters)
        summary.labels_stored = _count(conn, labels_table)
        models = m.c["version", "kind", "reason", "training_rows", "threshold", "fit_seconds"]
        q = select(*models).order_by(m.c.version)
        summary.models = [dict(row) for row in conn.execute(q).mappings()]
        alerts = t.c["transaction_id", "account_id", "amount", "merchant", "location", "timestamp",
                     "score", "model_version", "reasons"]  # fmt: skip
        q = select(*alerts).where(flagged).order_by(t.c.score.desc()).limit(10)
        summary.top_alerts = [dict(row) for row in conn.execute(q).mappings()]
        labelled = conn.execute(
            select(t.c.is_fraud, t.c.is_flagged, t.c.score).where(t.c.is_fraud.is_not(None))
        ).all()
        flagged_ids = set(conn.execute(select(t.c.transaction_id).where(flagged)).scalars())
    summary.alerts_on_topic = len(alert_ids_on_topic(settings) & flagged_ids)
    if labelled:
        summary.quality = detection_quality(labelled)


def detection_quality(rows) -> dict:
    """Precision and recall of the flag, ROC-AUC of the score, against ``is_fraud``."""
    from sklearn.metrics import roc_auc_score

    y, flag, score = zip(*rows, strict=True)
    tp = sum(1 for a, b in zip(y, flag, strict=True) if a and b)
    positives, flagged = sum(y), sum(flag)
    return {
        "labelled": len(y),
        "fraud": positives,
        "precision": tp / flagged if flagged else float("nan"),
        "recall": tp / positives if positives else float("nan"),
        "roc_auc": float(roc_auc_score(y, score)) if 0 < positives < len(y) else float("nan"),
    }


def alert_ids_on_topic(settings: Settings) -> set[str]:
    return {
        json.loads(m.value())["transaction_id"] for m in read_topic(settings, settings.alerts_topic)
    }


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def format_summary(s: RunSummary) -> str:
    out = ["", "=== fraudstream run ===", f"input                {s.csv}"]
    feed = s.replay
    out.append(f"events produced      {feed.produced:,}   (bad CSV rows skipped: {feed.rejected:,}"
               + (f", kept in {feed.rejects_path})" if feed.rejects_path else ")"))  # fmt: skip
    out.append(f"rows stored          {s.new_rows:,} new, {s.stored_rows:,} in total "
               f"(a replayed transaction_id adds no row)")  # fmt: skip
    out.append(f"flagged              {s.flagged:,}   alerts on topic: {s.alerts_on_topic:,}")
    out.append(f"dead-lettered        {s.dead_letters:,}")
    if feed.labels_sent or s.labels_stored:
        out.append(f"labels               {feed.labels_sent:,} sent, {s.labels_stored:,} stored "
                   "(delayed outcomes; `fraudstream evaluate` measures with them)")  # fmt: skip
    workers = f", {s.workers} processors in one group" if s.workers > 1 else ""
    out.append(f"runtime              {s.runtime}{workers}")
    if s.rules_version is not None:
        out.append(f"rules                version {s.rules_version}, applied before the replay")
    events_per_s = feed.produced / s.wall_s if s.wall_s else 0.0
    out.append(f"wall time            {s.wall_s:.1f} s   ({events_per_s:,.0f} events/s, "
               "produce to last offset committed)")  # fmt: skip
    if q := s.quality:
        out.append(f"against is_fraud     precision {q['precision']:.3f}  "
                   f"recall {q['recall']:.3f}  ROC-AUC {q['roc_auc']:.3f}  "
                   f"({q['fraud']:,} fraud in {q['labelled']:,})")  # fmt: skip
    out.append(f"model versions       {len(s.models)}")
    for m in s.models:
        kind = "supervised" if m["kind"] == "supervised" else "forest"
        out.append(f"  v{m['version']:<3} {kind:<10} {m['reason']:<9} trained on "
                   f"{m['training_rows']:>7,} events, threshold {m['threshold']:.4f}, "
                   f"fit {m['fit_seconds']:.2f} s")  # fmt: skip
    if s.top_alerts:
        out.append("top alerts (highest score first)")
        for a in s.top_alerts:
            out.append(f"  {a['score']:.3f} {a['transaction_id']} {a['account_id']} "
                       f"{a['amount']:>10,.2f} {a['merchant']} ({a['location']}) "
                       f"{a['timestamp']}")  # fmt: skip
            out.append("        " + "; ".join(json.loads(a["reasons"] or "[]")))
    if s.dbt is not None:
        out.append(s.dbt.describe())
        marts = ", ".join(
            f"{k} {v:,}" if v is not None else f"{k} missing" for k, v in s.marts.items()
        )
        out.append(f"marts (rows)         {marts}")
    out.append(f"database             {s.database or s.database_url}")
    if s.database:
        out.append(f"  query it:          sqlite3 {s.database} 'select * from transactions "
                   "where is_flagged = 1 order by score desc limit 20'")  # fmt: skip
    out.append(f"processor log        {', '.join(map(str, s.processor_logs))}")
    if s.database:
        out.append(f"dashboard            make dashboard DB={s.database}   "
                   "(then open http://127.0.0.1:8001)")  # fmt: skip
    return "\n".join(out)
