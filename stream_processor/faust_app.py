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
import contextlib
import logging
import os
import shutil
import signal
import ssl
import sys
import tempfile
from collections import defaultdict, deque
from collections.abc import AsyncIterator, Awaitable, Callable

import faust

from fraudstream.settings import Settings, reveal
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
    protocol = settings.security_protocol  # None or one of the four Settings allows
    if protocol in (None, "PLAINTEXT"):
        return None
    tls = protocol in ("SSL", "SASL_SSL")
    context = ssl.create_default_context(cafile=settings.ssl_ca_location) if tls else None
    if protocol == "SSL":
        return faust.SSLCredentials(context)
    return faust.SASLCredentials(
        username=settings.sasl_username,
        password=reveal(settings.sasl_password),
        mechanism=settings.sasl_mechanism or "PLAIN",
        ssl_context=context,
    )


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
    await _Batcher(store, size, stop).run(batches)


class _Batcher:
    """The events read and not stored yet, shared by the reader and the sender that stores them."""

    def __init__(
        self, store: Callable[[list], Awaitable[None]], size: int, stop: Callable[[], bool]
    ) -> None:
        self._store, self._size, self._stop = store, size, stop
        self._pending: list = []
        self._ready = asyncio.Event()  # events are waiting
        self._room = asyncio.Event()  # fewer than ``size`` are
        self._room.set()
        self._idle = asyncio.Event()  # nothing waits and nothing is being stored
        self._idle.set()
        self._storing: asyncio.Future | None = None
        self._sender = asyncio.ensure_future(self._send())

    async def run(self, batches: AsyncIterator[list]) -> None:
        """Queue what ``batches`` yields, pausing while ``size`` wait, then store the rest."""
        try:
            async for events in batches:
                if self._sender.done():  # stopped (a fatal error): take nothing more
                    return
                self._pending.extend(events)
                self._idle.clear()
                self._ready.set()
                if len(self._pending) >= self._size:
                    self._room.clear()
                    await self._until(self._room)
            await self._until(self._idle)
        finally:  # drop what is queued, finish the batch being stored, raise the sender's error
            self._pending.clear()
            self._ready.clear()
            self._sender.cancel()
            if self._storing is not None and not self._storing.done():
                await asyncio.wait([self._storing])
            sender = self._sender
            if sender.done() and not sender.cancelled() and sender.exception() is not None:
                raise sender.exception()

    async def _send(self) -> None:
        while not self._stop():
            await self._ready.wait()
            batch = self._pending[: self._size]  # the oldest queued events
            del self._pending[: len(batch)]
            if not self._pending:
                self._ready.clear()
            self._room.set()
            self._storing = asyncio.ensure_future(self._store(batch))
            await asyncio.shield(self._storing)  # a cancelled sender still finishes the batch
            if not self._pending:
                self._idle.set()

    async def _until(self, event: asyncio.Event) -> None:
        """Wait until ``event`` is set or the sender stops."""
        waiting = asyncio.ensure_future(event.wait())
        await asyncio.wait([waiting, self._sender], return_when=asyncio.FIRST_COMPLETED)
        waiting.cancel()


IDLE_CHECK_S = 0.2  # how soon a last batch is finished when no other follows


class Acks:
    """Events taken and not acknowledged yet, by partition, in order: acknowledged when the
    commit protocol releases a position at or past them."""

    def __init__(self) -> None:
        self._waiting: defaultdict[tuple[str, int], deque] = defaultdict(deque)

    def add(self, stream, events) -> None:
        for event in events:
            m = event.message
            self._waiting[m.topic, m.partition].append((m.offset, stream, event))

    async def release(self, positions: list[Position]) -> None:
        for topic, partition, offset in positions:
            waiting = self._waiting.get((topic, partition))
            while waiting and waiting[0][0] <= offset:
                _offset, stream, event = waiting.popleft()
                await stream.ack(event)


class BatchRunner:
    """Hands batches to the scoring process one call at a time and acknowledges what it releases;
    after a failure, records it on the app and stops the worker."""

    def __init__(self, app: faust.App, pipeline: PipelineProcess) -> None:
        self.app = app
        self.pipeline = pipeline
        self.acks = Acks()
        self.lock = asyncio.Lock()  # the agents and the timer share the core and the sink

    async def store_and_ack(self, stream, events) -> None:
        """Store ``events``, acknowledged once released (stored, delivered, recorded)."""
        self.acks.add(stream, events)
        await self._released(lambda: self.pipeline.batch(raw_batch(events)))

    async def idle(self) -> None:
        """Let the protocol do its idle work, unless a batch in progress is doing the same."""
        if not self.lock.locked():
            await self._released(self.pipeline.idle)

    async def _released(self, request: Callable[[], Awaitable[list[Position]]]) -> None:
        """Make a request of the scoring process and acknowledge the positions it releases; after
        a failure, stop the worker before anything more is acknowledged, holding the lock."""
        async with self.lock:
            try:
                await self.acks.release(await request())
            except Exception as exc:  # noqa: BLE001 - whatever failed, stop acking
                # The unwritten batch is redelivered on restart (the protocol in the child
                # refuses to go on after a failure, too).
                known = isinstance(exc, (SinkError, DeliveryError, CoreProcessError))
                log.critical("FATAL: %s. Stopping; no offset past the last stored batch.",
                             exc if known else f"{type(exc).__name__}: {exc}")  # fmt: skip
                self.app.fatal = exc  # type: ignore[attr-defined]
                os.kill(os.getpid(), signal.SIGTERM)
                await asyncio.sleep(3600)


def raw_batch(events) -> list[tuple]:
    """The events as RawMessage fields, which the scoring process takes as they are."""
    return [
        (m.value, m.key, m.topic, m.partition, m.offset, produced_at(m.headers))
        for m in (e.message for e in events)
    ]


def create_app(settings: Settings) -> faust.App:
    """The faust app: agents for transactions and labels and an idle timer, on a scoring process."""
    if not settings.bootstrap_servers:
        raise FatalError(
            "KAFKA_BOOTSTRAP_SERVERS is not set: point it at a cluster, or use `fraudstream run`, "
            "which starts the embedded broker"
        )
    app = _new_app(settings)
    pipeline = PipelineProcess(settings)  # the scoring core in a process of its own
    tune_gc()
    app.fatal = None  # type: ignore[attr-defined]
    runner = BatchRunner(app, pipeline)
    app.pipeline = pipeline  # type: ignore[attr-defined]

    @app.agent(_raw_topic(app, settings.transactions_topic), name="score_transactions")
    async def score_transactions(stream):
        """Store the transactions in batches as large as the reading allows."""
        # Batches are stored one at a time, in order; a batch's events are acknowledged only
        # after it is stored and its alerts delivered (store_and_ack).
        batches = stream.noack_take(settings.batch_size, within=settings.batch_timeout_s)
        await store_while_reading(
            batches, lambda events: runner.store_and_ack(stream, events), settings.batch_size,
            stop=lambda: app.fatal is not None,  # a call failed: the worker is stopping
        )  # fmt: skip

    @app.agent(_raw_topic(app, settings.labels_topic), name="learn_labels")
    async def learn_labels(stream):
        # Same path: the core tells labels from transactions by topic; acked once released.
        async for events in stream.noack_take(settings.batch_size, within=settings.batch_timeout_s):
            await runner.store_and_ack(stream, events)

    @app.timer(interval=IDLE_CHECK_S)
    async def housekeeping():
        # The protocol's idle turn, when no batch comes: finish the one in flight, record
        # deliveries, the idle first fit, finished refits (the latter once a second at most).
        await runner.idle()

    return app


def _new_app(settings: Settings) -> faust.App:
    """A faust app on the configured cluster, with raw keys and values and tables in memory."""
    # faust-streaming has no setting for its consumer's fetch wait (1.5 s), and at a low event
    # rate every batch would wait that long on a broker that holds an empty fetch.
    compat.set_faust_fetch_wait(FETCH_MAX_WAIT_MS)
    return faust.App(
        settings.consumer_group,
        broker=[f"kafka://{b.strip()}" for b in settings.bootstrap_servers.split(",")],
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
        broker_credentials=faust_credentials(settings),
        # Tables live in memory; faust still wants a data directory: keep it out of the cwd.
        datadir=tempfile.mkdtemp(prefix="fraudstream-faust-"),
    )


def _raw_topic(app: faust.App, name: str):
    """The existing topic ``name``, read as raw bytes."""
    return app.topic(name, key_serializer="raw", value_serializer="raw", internal=False)


def run_worker(settings: Settings, loglevel: str = "info") -> int:
    """Run the faust worker until SIGINT/SIGTERM; the exit code is non-zero after a fatal error."""
    from faust.worker import Worker

    app = create_app(settings)
    health = HealthServer(settings.web_host, settings.web_port, app.pipeline.status)
    worker = Worker(app, loglevel=loglevel, quiet=True, redirect_stdouts=False)
    try:
        with contextlib.suppress(SystemExit):
            worker.execute_from_commandline()
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
