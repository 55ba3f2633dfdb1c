"""Replaying a transactions CSV onto Kafka with confluent-kafka.

Events are keyed by ``account_id`` (so one account's events stay in order on one partition) and
carry a ``produced_at`` header (epoch seconds) for latency. Pace with ``rate`` (events/s) or
``speedup`` (event time runs this many times faster than the timestamps); ``loops`` > 1 replays
the file again with ids suffixed ``~N`` and times shifted past the previous pass, so a live feed
never repeats a ``transaction_id``. Delivery reports are checked; the producer is flushed on exit.

With ``labels_topic``, each row's ``is_fraud`` also goes out as a confirmed outcome (a chargeback)
on that topic, ``label_delay_s`` later in *event time*: it is sent just before the first event at
or past ``timestamp + delay``, and the labels still due when the replay ends are sent at the end.
"""

from __future__ import annotations

import heapq
import json
import logging
import sys
import time
from dataclasses import dataclass, field, replace
from datetime import timedelta
from functools import partial
from pathlib import Path

from confluent_kafka import KafkaException, Producer

from fraudstream.schema import Transaction
from fraudstream.topics import produce
from producer.checkpoint import Checkpoint
from producer.csv_source import RejectedRow, RejectsWriter, read_transactions
from producer.pseudonymize import pseudonymize

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReplayOptions:
    rate: float | None = None  # events per second; None = as fast as possible
    speedup: float | None = None  # event-time speed-up; None = ignore timestamps
    limit: int | None = None  # stop after this many events produced
    loops: int = 1  # passes over the file; 0 = forever
    progress: bool = True
    rejects_path: Path | None = None  # default: <csv>.rejects.csv beside the input
    max_reported: int = 20  # bad rows printed in full; the rest are only counted and kept
    pseudonym_key: bytes | None = None  # replace account ids by keyed HMACs (pseudonymize.py)
    checkpoint_path: Path | None = None  # record the last line below which all were delivered
    resume: bool = False  # start after the line recorded in checkpoint_path
    labels_topic: str | None = None  # also send each row's is_fraud there, label_delay_s later
    label_delay_s: float = 7 * 86400.0


@dataclass
class ReplayStats:
    produced: int = 0
    delivered: int = 0
    failed: int = 0
    rejected: int = 0
    loops: int = 0
    seconds: float = 0.0
    rejects_path: Path | None = None
    errors: list[str] = field(default_factory=list)
    labels_sent: int = 0
    label_offsets: dict[int, int] = field(default_factory=dict)  # like last_offsets, for labels
    # partition -> highest offset delivered: a consumer is caught up once it commits past these.
    last_offsets: dict[int, int] = field(default_factory=dict)

    @property
    def events_per_s(self) -> float:
        return self.produced / self.seconds if self.seconds else 0.0


def producer_config(bootstrap: str, client_config: dict | None = None, paced: bool = False) -> dict:
    return {
        **(client_config or {}),
        "bootstrap.servers": bootstrap,
        "enable.idempotence": True,  # no duplicates from the producer's own retries
        # A paced feed is a live one: an event leaves within a millisecond of its turn. Unpaced,
        # 20 ms of lingering makes the large requests a replay's throughput comes from.
        "linger.ms": 5 if paced else 20,
        "queue.buffering.max.messages": 500_000,
        "message.timeout.ms": 120_000,
    }


def replay(
    csv_path: Path | str,
    bootstrap: str,
    topic: str,
    options: ReplayOptions,
    client_config: dict | None = None,
) -> ReplayStats:
    """Produce every valid row of ``csv_path`` to ``topic``; see the module docstring."""
    csv_path = Path(csv_path)
    stats = ReplayStats()
    rejects = RejectsWriter(options.rejects_path or csv_path.with_suffix(".rejects.csv"))
    paced = bool(options.rate or options.speedup)
    producer = Producer(producer_config(bootstrap, client_config, paced))
    if paced:
        # Connect before the clock starts: a new producer's first ~0.5 s of events would wait
        # in its queue for the connection (and their produced_at headers would say so).
        producer.list_topics(timeout=30)
    checkpoint = None
    if options.checkpoint_path:
        checkpoint = (Checkpoint.load if options.resume else Checkpoint)(options.checkpoint_path)
    resume_after = checkpoint.position if checkpoint and options.resume else (0, 0)
    last_save = time.monotonic()

    def on_delivery(err, msg, pos=None):
        if err is None:
            if checkpoint is not None and pos is not None:
                checkpoint.delivered(pos)
            stats.delivered += 1
            p = msg.partition()
            if msg.offset() > stats.last_offsets.get(p, -1):
                stats.last_offsets[p] = msg.offset()
        else:
            stats.failed += 1
            if len(stats.errors) < 10:
                stats.errors.append(f"{msg.key()!r}: {err}")

    due_labels: list[tuple[float, int, Transaction]] = []  # heap on event time the label is due

    def on_label(err, msg):
        if err is None:
            p = msg.partition()
            stats.label_offsets[p] = max(stats.label_offsets.get(p, -1), msg.offset())
        else:
            stats.failed += 1
            if len(stats.errors) < 10:
                stats.errors.append(f"label {msg.key()!r}: {err}")

    def send_labels(until: float) -> None:
        while due_labels and due_labels[0][0] <= until:
            due, _, labelled = heapq.heappop(due_labels)
            _produce_label(producer, options.labels_topic, labelled, due, on_label)
            stats.labels_sent += 1

    bar = _progress(options, csv_path)
    started = time.monotonic()
    first_event: float | None = None
    span = timedelta(0)
    loop = 0
    try:
        while options.loops == 0 or loop < options.loops:
            first_ts = last_ts = None
            for line, item in read_transactions(csv_path):
                if isinstance(item, RejectedRow):
                    if loop == 0 and (loop, line) > resume_after:
                        _reject(item, rejects, stats, options)
                    continue
                txn = _for_loop(item, loop, span)
                if options.pseudonym_key:
                    txn = replace(
                        txn, account_id=pseudonymize(txn.account_id, options.pseudonym_key)
                    )
                first_ts = min(first_ts or item.timestamp, item.timestamp)
                last_ts = max(last_ts or item.timestamp, item.timestamp)
                if (loop, line) <= resume_after:
                    continue  # delivered before the restart
                if first_event is None:
                    first_event = txn.event_time
                _pace(options, stats.produced, started, txn.event_time - first_event)
                if options.labels_topic:
                    send_labels(txn.event_time)
                    if txn.is_fraud is not None:
                        due = txn.event_time + options.label_delay_s
                        heapq.heappush(due_labels, (due, stats.produced, txn))
                if checkpoint is not None:
                    checkpoint.sent((loop, line))
                    _produce(producer, topic, txn, partial(on_delivery, pos=(loop, line)))
                    if time.monotonic() - last_save > 0.5:
                        checkpoint.save()
                        last_save = time.monotonic()
                else:
                    _produce(producer, topic, txn, on_delivery)
                stats.produced += 1
                if bar is not None:
                    bar.update(1)
                if options.limit is not None and stats.produced >= options.limit:
                    return stats
            loop += 1
            stats.loops = loop
            if last_ts is None:
                break  # nothing valid in the file: looping would spin
            if loop == 1:
                span = (last_ts - first_ts) + timedelta(hours=1)
        send_labels(float("inf"))  # time runs on past the last event: the rest come due
    except KeyboardInterrupt:
        log.warning("interrupted: flushing what was produced")
    finally:
        remaining = producer.flush(60)
        if remaining:
            stats.failed += remaining
            stats.errors.append(f"{remaining} events still undelivered after 60 s")
        stats.seconds = time.monotonic() - started
        if checkpoint is not None:
            checkpoint.save()
        rejects.close()
        if rejects.count:
            stats.rejects_path = rejects.path
        if bar is not None:
            bar.close()
    return stats


def _for_loop(txn: Transaction, loop: int, span: timedelta) -> Transaction:
    if loop == 0:
        return txn
    return replace(
        txn, transaction_id=f"{txn.transaction_id}~{loop}", timestamp=txn.timestamp + span * loop
    )


def _produce(producer: Producer, topic: str, txn: Transaction, on_delivery) -> None:
    headers = [("produced_at", repr(time.time()).encode())]
    try:
        produce(producer, topic, txn.account_id.encode(), txn.encode(), headers, on_delivery)
    except KafkaException as exc:
        raise RuntimeError(f"cannot produce {txn.transaction_id} to {topic}: {exc}") from exc
    producer.poll(0)


def _produce_label(producer: Producer, topic: str, txn: Transaction, due: float, cb) -> None:
    from datetime import UTC, datetime

    from fraudstream.schema import format_timestamp

    value = {
        "transaction_id": txn.transaction_id,
        "is_fraud": txn.is_fraud,
        "labelled_at": format_timestamp(datetime.fromtimestamp(due, UTC)),
    }
    headers = [("produced_at", repr(time.time()).encode())]
    value_bytes = json.dumps(value, separators=(",", ":")).encode()
    produce(producer, topic, txn.transaction_id.encode(), value_bytes, headers, cb)
    producer.poll(0)


def _pace(options: ReplayOptions, produced: int, started: float, event_offset_s: float) -> None:
    due = None
    if options.rate:
        due = started + produced / options.rate
    if options.speedup:
        by_time = started + event_offset_s / options.speedup
        due = by_time if due is None else max(due, by_time)
    if due is not None:
        delay = due - time.monotonic()
        if delay > 0:
            time.sleep(delay)


def _reject(item: RejectedRow, rejects: RejectsWriter, stats: ReplayStats, options) -> None:
    stats.rejected += 1
    rejects.add(item)
    if stats.rejected <= options.max_reported:
        print(f"skipped bad row {item}", file=sys.stderr)
    elif stats.rejected == options.max_reported + 1:
        print(f"more bad rows: counted and kept in {rejects.path}", file=sys.stderr)


def _progress(options: ReplayOptions, csv_path: Path):
    if not options.progress:
        return None
    from tqdm import tqdm

    return tqdm(desc=f"producing {csv_path.name}", unit=" events", file=sys.stderr, mininterval=0.5)
