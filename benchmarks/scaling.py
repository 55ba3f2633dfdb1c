"""What a rebalance costs: a steady feed on PostgreSQL while a second processor joins the group,
and later while one of the two is killed (part ``scaling`` of ``python -m benchmarks.bench``).

The latency of each event is its row's ``scored_at`` minus the producer's ``produced_at``; the
pause of a rebalance is the longest latency of the events produced around it, beside the longest
of the events produced before it (one processor, steady).
"""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

from sqlalchemy import text

from benchmarks.latency import fresh
from fraudstream.run import start_processor, stop_processor, wait_until_processed
from fraudstream.settings import Settings
from fraudstream.tables import drop_database, ensure_database, make_engine
from producer.generate import GeneratorConfig, write_csv
from producer.replay import ReplayOptions, replay

WARM_EVENTS = 3000
SETTLE_S = 2.0  # what a processor can hold uncommitted, at the steady latency (tens of ms)


def group_settings(s: Settings, postgres_server: str, name: str) -> Settings:
    """``s`` on topics, a consumer group and a PostgreSQL database of their own."""
    gs = fresh(s, Path(), name, "confluent")
    gs = gs.replace(
        database_url=f"{postgres_server}/fraudstream_{gs.consumer_group.replace('-', '_')}"
    )
    ensure_database(gs.database_url)
    return gs


def rebalance_pause(
    s: Settings, work: Path, postgres_server: str, rate: int = 2000, seconds: float = 45.0
) -> dict:
    """A feed of ``rate`` events/s for ``seconds``: one processor for the first third, a second
    one joining then, and killed (SIGKILL) at two thirds. Latencies in ms."""
    gs = group_settings(s, postgres_server, "rebalance")
    warm, feed = warm_and_feed(work, int(rate * seconds))
    engine = make_engine(gs.database_url)
    logs = [work / "rebalance-0.log", work / "rebalance-1.log"]
    procs = [start_processor(gs, logs[0])]
    marks: dict[str, float] = {}
    try:
        stats = replay(
            warm, gs.bootstrap_servers, gs.transactions_topic, ReplayOptions(progress=False)
        )
        wait_until_processed(gs, engine, procs, logs[:1], stats.last_offsets, timeout_s=600)
        fed: dict = {}
        feeder = threading.Thread(target=lambda: fed.update(stats=replay(
            feed, gs.bootstrap_servers, gs.transactions_topic,
            ReplayOptions(progress=False, rate=rate),
        )))  # fmt: skip
        marks["feed"] = time.time()
        feeder.start()
        time.sleep(seconds / 3)
        marks["join"] = time.time()
        procs.append(start_processor(gs, logs[1]))
        time.sleep(seconds / 3)
        marks["kill"] = time.time()
        procs[1].send_signal(signal.SIGKILL)
        procs[1].wait()
        feeder.join()
        marks["end"] = time.time()
        offsets = fed["stats"].last_offsets
        wait_until_processed(gs, engine, procs[:1], logs[:1], offsets, timeout_s=600)
    finally:
        for proc in procs:
            stop_processor(proc)
    with engine.connect() as conn:
        rows = conn.execute(
            text("select produced_at, scored_at from transactions where produced_at >= :t"),
            {"t": marks["feed"]},
        ).all()
    engine.dispose()
    drop_database(gs.database_url)
    return {"rate": rate, **pauses(rows, marks)}


def warm_and_feed(work: Path, n: int) -> tuple[Path, Path]:
    """Two CSVs of generated events: WARM_EVENTS to fit the first model on, then ``n``."""
    csv = work / "rebalance.csv"
    write_csv(csv, GeneratorConfig(rows=WARM_EVENTS + n, days=max(10, n // 2000), seed=9))
    header, *lines = csv.read_text().splitlines(keepends=True)
    warm, feed = work / "rebalance-warm.csv", work / "rebalance-feed.csv"
    warm.write_text(header + "".join(lines[:WARM_EVENTS]))
    feed.write_text(header + "".join(lines[WARM_EVENTS:]))
    return warm, feed


def pauses(rows: list, marks: dict[str, float]) -> dict:
    """Latencies in ms of the (produced_at, scored_at) ``rows``: steady with one processor,
    and the longest around the join and the kill (``marks``: when each began, epoch s)."""

    def longest(start: float, end: float) -> float:
        return 1000 * max((sc - p for p, sc in rows if start <= p < end), default=float("nan"))

    steady = sorted(sc - p for p, sc in rows if marks["feed"] + 2 <= p < marks["join"])
    return {
        "events": len(rows),
        "steady_p50_ms": 1000 * steady[len(steady) // 2],
        "steady_max_ms": 1000 * steady[-1],
        # The events a processor held uncommitted when it was killed were produced just before
        # the kill: they count towards the kill's pause, not the join's.
        "join_max_ms": longest(marks["join"], marks["kill"] - SETTLE_S),
        "kill_max_ms": longest(marks["kill"] - SETTLE_S, marks["end"]),
    }
