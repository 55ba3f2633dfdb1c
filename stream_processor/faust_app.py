"""The faust runtime: a faust-streaming app feeding the commit protocol with ``stream.noack_take``.

Guarantee: at-least-once. The agent takes batches without acknowledging them; the commit protocol
(:mod:`stream_processor.commit`, in a child process: :mod:`stream_processor.remote`) scores,
stores and delivers them and answers with the positions it releases, and only the events up to
those are acknowledged, so committed offsets never run ahead of stored rows. (Faust's
``exactly_once`` needs aiokafka transactions, which the embedded broker does not support; the
idempotent sink makes at-least-once effectively-once.)
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
import ssl
import sys
import tempfile
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable

import faust

from fraudstream.settings import Settings
from stream_processor import compat
from stream_processor.commit import Position
from stream_processor.health import HealthServer
from stream_processor.outbox import DeliveryError
from stream_processor.pipeline import FETCH_MAX_WAIT_MS, produced_at, tune_gc
from stream_processor.remote import CoreProcessError, PipelineProcess
from stream_processor.sink import SinkError

log = logging.getLogger(__name__)


class FatalError(RuntimeError):
    pass


def faust_credentials(settings: Settings):
    """The same KAFKA_SECURITY_PROTOCOL / SASL / SSL settings, in faust's (aiokafka's) terms."""
    protocol = (settings.security_protocol or "PLAINTEXT").upper()
    if protocol == "PLAINTEXT":
        return None
    context = None
    if protocol in ("SSL", "SASL_SSL"):
        context = ssl.create_default_context(cafile=settings.ssl_ca_location)
    if protocol == "SSL":
        return faust.SSLCredentials(context)
    if protocol in ("SASL_PLAINTEXT", "SASL_SSL"):
        return faust.SASLCredentials(
            username=settings.sasl_username,
            password=settings.sasl_password,
            mechanism=settings.sasl_mechanism or "PLAIN",
            ssl_context=context,
        )
    raise FatalError(f"KAFKA_SECURITY_PROTOCOL={settings.security_protocol!r} is not supported")


async def store_while_reading(
    batches: AsyncIterator[list],
    store: Callable[[list], Awaitable[None]],
    size: int,
    stop: Callable[[], bool] = lambda: False,
) -> None:
    """Store what ``batches`` yields, one batch at a time, in order, reading on meanwhile.

    What was read while the previous batch was being stored (up to ``size`` events) becomes the
    next batch: under load the batches grow to ``size`` (faust's ``noack_take`` alone yields
    whatever ``BATCH_TIMEOUT_S`` gathered, a few hundred events, and every batch pays the
    database commit and the hand-over to the scoring process); at a low rate each batch is
    stored as soon as it is read. When ``size`` events wait, reading waits too. On the way out
    (cancelled, or ``stop()``), the batch being stored is finished; events still waiting are
    dropped unacknowledged, so they are consumed again after a restart."""
    pending: list = []
    ready = asyncio.Event()  # events are waiting
    room = asyncio.Event()  # fewer than ``size`` are
    room.set()
    idle = asyncio.Event()  # nothing waits and nothing is being stored
    idle.set()
    storing: list[asyncio.Future] = []

    async def send() -> None:
        while not stop():
            await ready.wait()
            batch = pending[:size]
            del pending[: len(batch)]
            if not pending:
                ready.clear()
            room.set()
            storing[:] = [asyncio.ensure_future(store(batch))]
            await asyncio.shield(storing[0])
            if not pending:
                idle.set()

    async def until(event: asyncio.Event) -> None:  # or until the sender stops
        waiting = asyncio.ensure_future(event.wait())
        await asyncio.wait([waiting, sender], return_when=asyncio.FIRST_COMPLETED)
        waiting.cancel()

    sender = asyncio.ensure_future(send())
    try:
        async for events in batches:
            if sender.done():  # stopped (a fatal error): take nothing more
                break
            pending.extend(events)
            idle.clear()
            ready.set()
            if len(pending) >= size:
                room.clear()
                await until(room)
        else:  # the reading ended: store what was read
            await until(idle)
    finally:
        pending.clear()
        ready.clear()
        sender.cancel()
        if storing and not storing[0].done():
            await asyncio.wait(storing)
        if sender.done() and not sender.cancelled() and sender.exception() is not None:
            raise sender.exception()


IDLE_CHECK_S = 0.2  # how soon a last batch is finished when no other follows


class Acks:
    """Events taken and not acknowledged yet, by partition, in order: acknowledged when the
    commit protocol releases a position at or past them."""

    def __init__(self) -> None:
        self._waiting: dict[tuple[str, int], deque] = {}

    def add(self, stream, events) -> None:
        for event in events:
            m = event.message
            self._waiting.setdefault((m.topic, m.partition), deque()).append((m.offset, stream, event))

    async def release(self, positions: list[Position]) -> None:
        for topic, partition, offset in positions:
            waiting = self._waiting.get((topic, partition))
            while waiting and waiting[0][0] <= offset:
                _offset, stream, event = waiting.popleft()
                await stream.ack(event)


def create_app(settings: Settings) -> faust.App:
    if not settings.bootstrap_servers:
        raise FatalError(
            "KAFKA_BOOTSTRAP_SERVERS is not set: point it at a cluster, or use `fraudstream run`, "
            "which starts the embedded broker"
        )
    # faust-streaming has no setting for its consumer's fetch wait (1.5 s): at a low event rate
    # every batch waited that long on a broker that holds an empty fetch.
    compat.set_faust_fetch_wait(FETCH_MAX_WAIT_MS)
    brokers = [f"kafka://{b.strip()}" for b in settings.bootstrap_servers.split(",")]
    credentials = faust_credentials(settings)
    app = faust.App(
        settings.consumer_group,
        broker=brokers,
        store="memory://",
        key_serializer="raw",
        value_serializer="raw",
        processing_guarantee="at_least_once",
        consumer_auto_offset_reset="earliest",
        broker_session_timeout=settings.session_timeout_ms / 1000,
        broker_heartbeat_interval=min(3.0, settings.session_timeout_ms / 3000),
        broker_commit_interval=1.0,
        topic_partitions=settings.topic_partitions,
        topic_disable_leader=True,
        web_enabled=False,  # the health page is the processor's own (stream_processor.health)
        worker_redirect_stdouts=False,
        broker_credentials=credentials,
        # Tables live in memory; faust still wants a data directory: keep it out of the cwd.
        datadir=tempfile.mkdtemp(prefix="fraudstream-faust-"),
    )
    source = app.topic(
        settings.transactions_topic, key_serializer="raw", value_serializer="raw", internal=False
    )
    label_source = app.topic(
        settings.labels_topic, key_serializer="raw", value_serializer="raw", internal=False
    )
    pipeline = PipelineProcess(settings)  # the scoring core in a process of its own
    tune_gc()
    lock = asyncio.Lock()  # the agent and the timer share the core and the sink
    app.fatal = None  # type: ignore[attr-defined]

    acks = app.acks = Acks()  # type: ignore[attr-defined]

    async def run_locked(method: str, *args) -> None:
        async with lock:
            try:
                released = await pipeline.acall(method, *args)
                await acks.release(released)
            except Exception as exc:  # noqa: BLE001 - whatever failed, stop acking
                # Stop before acking anything more: the unwritten batch is redelivered on restart
                # (the protocol in the child refuses to go on after a failure, too).
                known = isinstance(exc, (SinkError, DeliveryError, CoreProcessError))
                log.critical("FATAL: %s. Stopping; no offset past the last stored batch.",
                             exc if known else f"{type(exc).__name__}: {exc}")  # fmt: skip
                app.fatal = exc  # type: ignore[attr-defined]
                os.kill(os.getpid(), signal.SIGTERM)
                await asyncio.sleep(3600)

    def raw_batch(events) -> list[tuple]:  # RawMessage fields: built once, sent as they are
        return [
            (m.value, m.key, m.topic, m.partition, m.offset, produced_at(m.headers))
            for m in (e.message for e in events)
        ]

    async def store_and_ack(stream, events) -> None:
        # Acknowledged once the commit protocol releases them (stored, delivered, recorded).
        acks.add(stream, events)
        await run_locked("batch", raw_batch(events))

    @app.agent(source, name="score_transactions")
    async def score_transactions(stream):
        # Batches are stored one at a time, in order; a batch's events are acknowledged only
        # after it is stored and its alerts delivered (store_and_ack).
        batches = stream.noack_take(settings.batch_size, within=settings.batch_timeout_s)
        await store_while_reading(
            batches, lambda events: store_and_ack(stream, events), settings.batch_size,
            stop=lambda: app.fatal is not None,
        )  # fmt: skip

    @app.agent(label_source, name="learn_labels")
    async def learn_labels(stream):
        # Same path: the core tells labels from transactions by topic; acked once released.
        async for events in stream.noack_take(settings.batch_size, within=settings.batch_timeout_s):
            await store_and_ack(stream, events)

    @app.timer(interval=IDLE_CHECK_S)
    async def housekeeping():
        # When no batch comes: finish the one in flight, record deliveries, the idle first fit,
        # finished refits (the protocol does the latter once a second at most).
        if not lock.locked():  # a batch in progress does the same work
            await run_locked("idle")

    app.pipeline = pipeline  # type: ignore[attr-defined]
    return app


def run_worker(settings: Settings, loglevel: str = "info") -> int:
    """Run the faust worker until SIGINT/SIGTERM; the exit code is non-zero after a fatal error."""
    from faust.worker import Worker

    app = create_app(settings)
    health = HealthServer(settings.web_host, settings.web_port, app.pipeline.status)
    worker = Worker(app, loglevel=loglevel, quiet=True, redirect_stdouts=False)
    try:
        worker.execute_from_commandline()
    except SystemExit:
        pass
    finally:
        if app.fatal is None:
            try:
                # The batch in flight is finished and its deliveries recorded; faust has stopped
                # consuming, so what this releases cannot be acknowledged: it is consumed again
                # after a restart (stored rows are recognised, recorded alerts not sent again).
                app.pipeline.finish()
            except Exception:  # noqa: BLE001 - shutting down; the log says what was lost
                log.exception("could not finish the batch in flight at shutdown")
        health.close()
        app.pipeline.close()
        shutil.rmtree(app.conf.datadir, ignore_errors=True)
    if app.fatal is not None:
        print(f"stream processor stopped: {app.fatal}", file=sys.stderr)
        return 1
    return 0
