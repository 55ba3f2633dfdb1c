"""The throughput runtime: a confluent-kafka batch consumer feeding the scoring core.

A thin adapter: ``consume(BATCH_SIZE)`` hands whole batches to the commit protocol
(:mod:`stream_processor.commit`); the positions it releases become offset commits.
"""

from __future__ import annotations

import logging
import signal
import threading
import time

from confluent_kafka import (
    OFFSET_BEGINNING,
    OFFSET_END,
    Consumer,
    KafkaError,
    KafkaException,
    Producer,
    TopicPartition,
)

from fraudstream.settings import Settings
from stream_processor.commit import CommitProtocol, Position, last_positions
from stream_processor.core import RawMessage
from stream_processor.group import GroupState
from stream_processor.health import HealthServer
from stream_processor.outbox import DeliveryError, KafkaOutbox
from stream_processor.pipeline import FETCH_MAX_WAIT_MS, BatchPipeline, produced_at, tune_gc
from stream_processor.rules_feed import RulesTopicError
from stream_processor.sink import SinkError

log = logging.getLogger(__name__)


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


def core_messages(msgs: list) -> tuple[list[RawMessage], list[Position]]:
    """A ``consume()`` result as the core's messages, and the position of its last message in
    each partition (what :func:`commit` takes); errors other than a partition's end logged."""
    raws: list[RawMessage] = []
    for m in msgs:
        err = m.error()
        if err is None:
            raws.append(RawMessage(m.value(), m.key(), m.topic(), m.partition(), m.offset(),
                                   produced_at(m.headers())))  # fmt: skip
        elif err.code() != KafkaError._PARTITION_EOF:
            log.warning("consumer: %s", err)
    return raws, last_positions(raws)


def commit(consumer: Consumer, positions: list[Position], *, asynchronous: bool = True) -> None:
    """Commit one past the last of ``positions`` (of each batch) in each partition. A failed
    commit only means the batch is consumed again (after a broker outage the group may have
    moved on: UNKNOWN_MEMBER_ID, a rebalance), its stored rows recognised by transaction_id.
    The loop does not wait for the broker's answer (:func:`committed` logs a failure when it
    arrives); the last commit, at shutdown, waits."""
    last: dict[tuple[str, int], int] = {}
    for topic, partition, offset in positions:
        last[topic, partition] = max(last.get((topic, partition), -1), offset)
    if not last:
        return
    offsets = [TopicPartition(t, p, o + 1) for (t, p), o in last.items()]
    try:
        consumer.commit(offsets=offsets, asynchronous=asynchronous)
    except KafkaException as exc:
        _commit_failed(exc)


def committed(err, partitions) -> None:
    """The consumer's ``on_commit``: log a failed asynchronous commit."""
    failed = [p for p in partitions or () if p.error is not None]
    if err is not None or failed:
        _commit_failed(err or failed[0].error)


def _commit_failed(exc) -> None:
    log.warning("offset commit failed (%s); the batch will be redelivered and deduplicated", exc)


# failures with a message of their own
EXPECTED = (SinkError, DeliveryError, KafkaException, RulesTopicError)


def _describe(exc: BaseException) -> str:
    return str(exc) if isinstance(exc, EXPECTED) else f"{type(exc).__name__}: {exc}"


class ConsumerOffsets:
    """The protocol's released positions, committed by the consumer (waiting only at shutdown)."""

    def __init__(self, consumer: Consumer):
        self.consumer = consumer

    def commit(self, positions: list[Position], *, final: bool) -> None:
        commit(self.consumer, positions, asynchronous=not final)


class GroupTopics:
    """What the processors of a group share (:mod:`stream_processor.group`), on two topics no
    group consumes (each processor needs every record): the merchant shares, read whole from
    the start, and what each learned (labels, drift), read from now on (the labels learned
    before are in the database, where the label memory started from). What this processor
    learned is published once stored: after every batch, and before its partitions move."""

    def __init__(self, settings: Settings, group: GroupState):
        self.group = group
        self.shares, self.learned = settings.merchants_topic, settings.learned_topic
        # Sent and fetched at once: what is read later is staler.
        self._producer = Producer({**settings.kafka_config(), "linger.ms": 5})
        self._reader = Consumer({**settings.kafka_config(), "enable.auto.commit": False,
                                 "group.id": f"{settings.consumer_group}-shared",
                                 "fetch.wait.max.ms": FETCH_MAX_WAIT_MS})  # fmt: skip
        start = {self.shares: OFFSET_BEGINNING, self.learned: OFFSET_END}
        self._reader.assign([TopicPartition(topic, p, offset) for topic, offset in start.items()
                             for p in self._partitions(topic)])  # fmt: skip

    def _partitions(self, topic: str) -> list[int]:
        meta = self._reader.list_topics(topic, timeout=10).topics[topic]
        if meta.error is not None:  # not there: what the others share would never arrive
            raise KafkaException(meta.error)
        return list(meta.partitions)

    def catch_up(self, timeout_s: float = 60.0) -> int:
        """Read the merchant shares published so far, up to the end offsets the broker gives
        now (the embedded broker's is the start of its last record batch, whose few records
        follow with the next batches): at start, and before taking partitions, whose last
        holder published its shares as it let them go. Returns the records read."""
        parts = [TopicPartition(self.shares, p) for p in self._partitions(self.shares)]
        ends = [self._reader.get_watermark_offsets(tp, timeout=10)[1] for tp in parts]
        read, deadline = 0, time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            positions = self._reader.position(parts)
            if all(tp.offset >= end for tp, end in zip(positions, ends, strict=True) if end > 0):
                break
            msgs = self._reader.consume(10_000, timeout=0.2)
            self._apply(msgs)
            read += len(msgs)
        return read

    def sync(self) -> None:
        """Between batches: read what the others published, and publish ours."""
        self._apply(self._reader.consume(10_000, timeout=0))
        self.publish()

    def publish(self, wait_s: float = 0.0) -> None:
        for outgoing in self.group.publishable():
            for key, value in outgoing.shares:
                self._producer.produce(self.shares, key=key, value=value)
            for value in outgoing.learned:
                self._producer.produce(self.learned, value=value)
        if wait_s:
            self._producer.flush(wait_s)
        else:
            self._producer.poll(0)  # deliveries: nothing waits for them

    def close(self) -> None:
        self.publish(wait_s=10.0)
        self._reader.close()

    def _apply(self, msgs: list) -> None:
        """Records read: into the group state; a malformed one is logged and skipped."""
        for msg in msgs:
            if msg.error() is not None:
                continue
            try:
                if msg.topic() == self.shares:
                    self.group.apply_share(msg.key(), msg.value())
                else:
                    self.group.apply_learned(msg.value())
            except Exception as exc:  # noqa: BLE001 - never stop on one bad record
                log.warning("skipped a malformed record at %s[%d]@%d: %s",
                            msg.topic(), msg.partition(), msg.offset(), exc)  # fmt: skip


class GroupMember:
    """The consumer's rebalance callbacks: partitions move between the group's processors
    (librdkafka's eager rebalance: all revoked, then the new share assigned), in calls from inside
    ``consume()``; ``close()`` revokes them once more, after the protocol closed or failed."""

    def __init__(
        self,
        protocol: CommitProtocol,
        pipeline: BatchPipeline,
        transactions_topic: str,
        shared: GroupTopics | None = None,
    ):
        self.protocol, self.pipeline, self.topic = protocol, pipeline, transactions_topic
        self.shared = shared
        self.consuming = True  # False once the loop has ended

    def revoked(self, _consumer, partitions) -> None:
        if self.consuming:  # what was consumed is stored and committed before another takes it
            self.protocol.flush()
            if self.shared is not None:  # and what it learned from them published
                self.shared.publish(wait_s=10.0)
            log.info("partitions revoked, their batches committed: %s", _names(partitions))

    def lost(self, _consumer, _partitions) -> None:
        if self.consuming:  # its commits fail: the batches are consumed again, and recognised
            self.protocol.flush()
            self.pipeline.partitions_lost()

    def assigned(self, _consumer, partitions) -> None:
        if self.consuming:
            log.info("partitions assigned: %s", _names(partitions))
            self.protocol.flush()  # the idle work in flight, on the first assignment
            if self.shared is not None:  # with the shares their last holders published
                read = self.shared.catch_up()
                log.info("merchant shares: %d records read from %s", read, self.shared.shares)
            topic = self.topic
            self.pipeline.partitions_assigned([p.partition for p in partitions if p.topic == topic])


def _names(partitions) -> str:
    return ", ".join(f"{p.topic}[{p.partition}]" for p in partitions) or "none"


def run_consumer(settings: Settings, stop: threading.Event | None = None) -> int:
    """Consume until SIGTERM/SIGINT (or ``stop``); non-zero exit code after a fatal error."""
    stop = stop or threading.Event()
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
    pipeline = BatchPipeline(settings)
    tune_gc()
    try:
        health = HealthServer(settings.web_host, settings.web_port, pipeline.status)
    except OSError as exc:
        log.critical("FATAL: %s", exc)
        pipeline.close()
        return 1
    consumer = Consumer(consumer_config(settings))
    outbox = KafkaOutbox(settings)
    protocol = CommitProtocol(pipeline, outbox, ConsumerOffsets(consumer))
    shared = None
    member = GroupMember(protocol, pipeline, settings.transactions_topic)
    code = 0
    try:
        pipeline.follow_rules()
        if pipeline.sink.SHARED:  # several processors may share the database: and what they learn
            shared = member.shared = GroupTopics(settings, pipeline.join_group())
        consumer.subscribe(
            [settings.transactions_topic, settings.labels_topic],
            on_assign=member.assigned, on_revoke=member.revoked, on_lost=member.lost,
        )  # fmt: skip
        _consume(settings, consumer, protocol, shared, stop)
    except Exception as exc:  # noqa: BLE001 - whatever failed, stop before committing more
        log.critical("FATAL: %s. Stopping; no offset past the last stored batch.",
                     _describe(exc), exc_info=not isinstance(exc, EXPECTED))  # fmt: skip
        code = 1
    finally:
        member.consuming = False
        try:
            if shared is not None:  # what was stored is published, also after a failure
                shared.close()
        finally:
            health.close()
            consumer.close()
            outbox.close()
            pipeline.close()
    return code


def _consume(settings: Settings, consumer: Consumer, protocol: CommitProtocol,
             shared: GroupTopics | None, stop: threading.Event) -> None:  # fmt: skip
    """Batches to the commit protocol, and what the group shares between them, until ``stop``."""
    log.info(
        "consuming %s and %s as group %s",
        settings.transactions_topic, settings.labels_topic, settings.consumer_group,
    )  # fmt: skip
    while not stop.is_set():
        raws, positions = core_messages(
            consumer.consume(settings.batch_size, timeout=settings.batch_timeout_s)
        )
        if raws:
            protocol.on_batch(raws, positions)
        else:
            protocol.on_idle()
        if shared is not None:
            shared.sync()
    protocol.close()
