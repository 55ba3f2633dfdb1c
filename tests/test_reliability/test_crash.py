"""Kill the stream processor with SIGKILL, again and again, mid-replay: nothing lost, nothing twice.

100,000 generated events plus undecodable ones are replayed while the processor is killed at
random moments five times and restarted each time, for each runtime on each database (a sixth of the events produced as each
incarnation starts). At the end every valid event is
exactly one row, every flagged row reached the alerts topic (at least once), and every bad event
is in the dead-letter topic and table.
"""

from __future__ import annotations

import random
import signal
import threading
import time

import pytest
from feeding import Feed
from sqlalchemy import text

from fraudstream.run import (
    alert_ids_on_topic,
    start_processor,
    stop_processor,
    wait_until_processed,
)
from fraudstream.tables import make_engine
from producer.generate import GeneratorConfig, write_csv

pytestmark = [pytest.mark.integration, pytest.mark.slow]
KILLS = 5
BAD_EVENTS = 25


def rows(engine, sql) -> list[tuple]:
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(text(sql))]


@pytest.mark.parametrize("runtime", ["confluent", "faust"])
def test_sigkill_mid_replay_loses_and_duplicates_nothing(
    kafka_settings, database_url, tmp_path, runtime
):
    rng = random.Random(20261126)
    s = kafka_settings.replace(runtime=runtime, warmup_events=2000, refit_every_events=20000,
                               training_window=20000, n_estimators=50, batch_size=1000,
                               database_url=database_url)  # fmt: skip
    db = make_engine(s.database_url)  # the tables exist before the first count

    def count(_db, sql):
        return rows(db, sql)[0][0]

    csv = tmp_path / "big.csv"
    frame = write_csv(csv, GeneratorConfig(rows=100_000, days=60, seed=5))

    feed = Feed(s, csv, KILLS + 1, rate=20_000)
    feed.bad(range(BAD_EVENTS // 2))
    logs = []
    kills = 0
    proc = start_processor(s, tmp_path / "processor-0.log")
    try:
        while kills < KILLS:
            # Kill only once this incarnation has stored something: a kill mid-work.
            before = count(db, "select count(*) from transactions") if kills else 0
            feeder = threading.Thread(target=feed.part, args=(kills,))
            feeder.start()
            deadline = time.monotonic() + 120
            while (
                count(
                    db, "select count(*) + (select count(*) from pending_events) from transactions"
                )
                <= before
            ):
                assert proc.poll() is None, (tmp_path / f"processor-{kills}.log").read_text()[
                    -2000:
                ]
                assert time.monotonic() < deadline, "the processor made no progress"
                time.sleep(0.2)
            time.sleep(rng.uniform(0.2, 2.5))
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            feeder.join(300)
            kills += 1
            logs.append(tmp_path / f"processor-{kills}.log")
            proc = start_processor(s, logs[-1])
        feed.part(KILLS)
        feed.bad(range(BAD_EVENTS // 2, BAD_EVENTS))
        wait_until_processed(s, db, [proc], [logs[-1]], feed.offsets, timeout_s=600)
    finally:
        stop_processor(proc)

    assert kills == KILLS
    assert count(db, "select count(*) from transactions") == len(frame)  # 0 lost
    assert count(db, "select count(distinct transaction_id) from transactions") == len(
        frame
    )  # 0 twice
    assert count(db, "select count(*) from transactions where score is null") == 0
    assert count(db, "select count(*) from pending_events") == 0
    assert count(db, "select count(*) from dead_letters") == BAD_EVENTS
    flagged = count(db, "select count(*) from transactions where is_flagged = 1")
    assert (
        count(
            db,
            "select count(*) from transactions where is_flagged = 1 and alert_published_at is null",
        )
        == 0
    )
    flagged_ids = {r[0] for r in rows(db, "select transaction_id from transactions where is_flagged = 1")}
    dl = set(rows(db, "select source_partition, source_offset from dead_letters"))
    db.dispose()
    assert len(flagged_ids) == flagged > 0
    assert flagged_ids <= alert_ids_on_topic(s)  # every alert delivered at least once
    assert dl == feed.bad_offsets
