"""The throughput runtime: a confluent-kafka batch consumer feeding the same scoring core.

Same outputs and guarantees as the faust runtime (at-least-once; offsets committed only after
the SQLite commit, the delivery of the batch's alerts and dead letters, and the record of that
delivery: :class:`~stream_processor.pipeline.DeliveryRecords`), without faust's per-event
overhead: ``consume(BATCH_SIZE)`` hands whole batches to the core. Each batch is scored while
the one before is written (by the sink's writer: a child process for SQLite, a thread for
PostgreSQL); once that write has committed, its alerts and dead letters are
produced, and their delivery is waited for after the next batch is scored (the broker's answer
comes meanwhile: a round trip a batch, 1 us an event, off the loop). Offsets are committed only
past batches whose rows are stored, whose alerts and dead letters are delivered, and whose
alerts' delivery is recorded::

    score N (write N-1 runs; N-2's alerts travel) -> N-1 committed -> N-2's alerts delivered
    -> N-1's produced -> offsets -> submit N (with N-2's delivery record)
"""

from __future__ import annotations

import logging
import signal
import threading
import time

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition

from fraudstream.settings import Settings
from stream_processor.core import RawMessage
from stream_processor.pipeline import (
    FETCH_MAX_WAIT_MS,
    BatchPipeline,
    DeliveryRecords,
    Outbound,
    alert_message,
    dead_letter_message,
    produced_at,
    tune_gc,
)
from stream_processor.sink import SinkError

log = logging.getLogger(__name__)

class DeliveryError(RuntimeError):
    pass


def consumer_config(settings: Settings) -> dict:
    return {
        **settings.kafka_config(),
        "group.id": settings.consumer_group,
        "enable.auto.commit": False,  # committed by hand, after the database
        "auto.offset.reset": "earliest",
        "session.timeout.ms": settings.session_timeout_ms,
        "heartbeat.interval.ms": max(500, settings.session_timeout_ms // 3),
        "max.poll.interval.ms": 300_000,
        "fetch.min.bytes": 1,
        "fetch.wait.max.ms": FETCH_MAX_WAIT_MS,  # a broker holds an empty fetch this long
        # Read-ahead: librdkafka's defaults prefetch up to 100,000 events per partition (a
        # backlog of a million events held ~150 MB in this process); a few batches suffice.
        "queued.min.messages": max(10 * settings.batch_size, 10_000),
        "queued.max.messages.kbytes": 16384,
        # ... and when a partition's read-ahead is full, fetch again 10 ms later, not after
        # librdkafka's default 1 s: with it, consume() waited for events about a third of the
        # time (docs/benchmarks.md).
        "fetch.queue.backoff.ms": 10,
        "on_commit": committed,
    }


def produce_outbound(producer: Producer, settings: Settings, out: Outbound) -> list[str]:
    """Hand the batch's alerts and dead letters to the producer, without waiting: the list
    their failed deliveries are added to (see :func:`await_delivery`)."""
    failures: list[str] = []

    def on_delivery(err, msg):
        if err is not None:
            failures.append(f"{msg.topic()}: {err}")

    for alert in out.alerts:
        key, value, headers = alert_message(alert)
        _produce(producer, settings.alerts_topic, key, value, headers, on_delivery)
    for dl in out.dead_letters:
        key, value, headers = dead_letter_message(dl)
        _produce(producer, settings.dlq_topic, key, value, headers, on_delivery)
    return failures


def await_delivery(producer: Producer, failures: list[str], timeout_s: float = 60) -> None:
    """Wait until everything produced is delivered; :class:`DeliveryError` if a delivery
    failed (``failures``, from :func:`produce_outbound`) or did not end within ``timeout_s``."""
    remaining = producer.flush(timeout_s)
    if remaining or failures:
        raise DeliveryError(
            f"{remaining} undelivered, {len(failures)} failed: {failures[:3]}; the batch will be "
            "consumed again"
        )


def _produce(producer, topic, key, value, headers, on_delivery) -> None:
    while True:
        try:
            producer.produce(topic, key=key, value=value, headers=headers, on_delivery=on_delivery)
            return
        except BufferError:
            producer.poll(0.05)


def next_offsets(positions: list[tuple[str, int, int]]) -> list[TopicPartition]:
    """The offsets to commit after ``positions`` ((topic, partition, offset) of the last
    message of each partition in each batch): one past the last of each partition."""
    last: dict[tuple[str, int], int] = {}
    for topic, partition, offset in positions:
        key = (topic, partition)
        last[key] = max(last.get(key, -1), offset)
    return [TopicPartition(t, p, o + 1) for (t, p), o in last.items()]


def core_messages(msgs: list) -> tuple[list[RawMessage], list[tuple[str, int, int]]]:
    """A ``consume()`` result as the core's messages, and the position of its last message in
    each partition (what :func:`commit` takes); errors other than a partition's end logged."""
    raws: list[RawMessage] = []
    last: dict[tuple[str, int], int] = {}
    for m in msgs:
        err = m.error()
        if err is None:
            topic, partition, offset = m.topic(), m.partition(), m.offset()
            raws.append(
                RawMessage(m.value(), m.key(), topic, partition, offset, produced_at(m.headers()))
            )
            key = (topic, partition)
            if offset > last.get(key, -1):
                last[key] = offset
        elif err.code() != KafkaError._PARTITION_EOF:
            log.warning("consumer: %s", err)
    return raws, [(t, p, o) for (t, p), o in last.items()]


def commit(consumer: Consumer, positions: list, *, asynchronous: bool = True) -> None:
    """Commit past ``positions`` (see :func:`next_offsets`); a failed commit only means the
    batch is consumed again later.

    After a broker outage the group may have moved on (UNKNOWN_MEMBER_ID, a rebalance): the
    stored rows are then recognised by transaction_id when the batch comes back. The loop does
    not wait for the broker's answer (0.8 us an event of round trips, docs/benchmarks.md): a
    failure is logged by :func:`committed` when it arrives; the last commit, at shutdown,
    waits.
    """
    if not positions:
        return
    try:
        consumer.commit(offsets=next_offsets(positions), asynchronous=asynchronous)
    except KafkaException as exc:
        _commit_failed(exc)


def committed(err, partitions) -> None:
    """The consumer's ``on_commit``: log a failed asynchronous commit."""
    failed = [p for p in partitions or () if p.error is not None]
    if err is not None or failed:
        _commit_failed(err or failed[0].error)


def _commit_failed(exc) -> None:
    log.warning("offset commit failed (%s); the batch will be redelivered and deduplicated", exc)


def run_consumer(settings: Settings, stop: threading.Event | None = None) -> int:
    """Consume until SIGTERM/SIGINT (or ``stop``); non-zero exit code after a fatal error."""
    stop = stop or threading.Event()
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
    pipeline = BatchPipeline(settings)
    tune_gc()
    consumer = Consumer(consumer_config(settings))
    producer = Producer(
        {
            **settings.kafka_config(),
            "linger.ms": 5,
            "enable.idempotence": True,
        }
    )
    consumer.subscribe([settings.transactions_topic, settings.labels_topic])
    log.info(
        "consuming %s and %s as group %s",
        settings.transactions_topic, settings.labels_topic, settings.consumer_group,
    )  # fmt: skip
    code = 0
    last_tick = time.monotonic()
    records = DeliveryRecords()  # alerts delivered, and the offsets waiting for their record
    in_flight: list | None = None  # positions of the batch whose write is not collected yet
    # The last written batch's outcome, its alerts and dead letters produced and their delivery
    # not waited for yet: (Outbound, positions, failed deliveries)
    producing: tuple[Outbound, list, list[str]] | None = None

    def delivered() -> list:
        """Wait for the delivery of what ``producing`` holds (under load the broker answered
        while the next batch was scored): the positions that may be acknowledged now."""
        nonlocal producing
        if producing is None:
            return []
        out, positions, failures = producing
        producing = None
        if out.alerts or out.dead_letters:
            await_delivery(producer, failures)
        return records.published(out, positions)

    def written(positions: list, *, wait: bool = False) -> None:
        """The write of the batch at ``positions`` is committed (waited for here): produce its
        alerts; the batch before's are delivered by now (``wait``: this one's too, when no
        next batch is scored meanwhile). Acknowledge what may be."""
        nonlocal producing
        out = pipeline.collect()
        ready = records.written() + delivered()
        producing = (out, positions, produce_outbound(producer, settings, out))
        if wait:
            ready += delivered()
        commit(consumer, ready)

    try:
        while not stop.is_set():
            raws, positions = core_messages(
                consumer.consume(settings.batch_size, timeout=settings.batch_timeout_s)
            )
            if raws:  # scored while the previous batch is written
                result = pipeline.score(raws)
            elif in_flight is not None:  # nothing new: finish the last batch now
                written(in_flight, wait=True)
                in_flight = None
                continue
            elif records.delivered or time.monotonic() - last_tick >= 1.0:
                # No events: record deliveries, fit the first model when idle, swap in refits
                # (under load every batch does the latter).
                result = pipeline.idle_work()
                last_tick = time.monotonic()
            else:
                continue
            if in_flight is not None:
                written(in_flight)
            pipeline.submit(result, published=records.delivered)  # recorded with these rows
            in_flight = positions
    except (SinkError, DeliveryError, KafkaException) as exc:
        log.critical("FATAL: %s. Stopping; no offset past the last stored batch.", exc)
        code = 1
    finally:
        if code == 0:
            try:
                if in_flight is not None:
                    written(in_flight)
                ready = delivered()
                pipeline.published(records.delivered)
                commit(consumer, ready + records.written(), asynchronous=False)
            finally:
                pipeline.finish()
        consumer.close()
        pipeline.close()
    return code
