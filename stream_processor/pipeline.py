"""The core and the sink wired together: what every runtime does with a batch.

A runtime calls :meth:`BatchPipeline.handle` with a batch (blocking: run it off the event loop) and
publishes the returned :class:`Outbound` (the confluent runtime splits the call, to score a batch
while the one before is written: :meth:`BatchPipeline.score`, ``submit``, ``collect``). The
delivery of those alerts is recorded with the next batch: its ``handle(..., published=...)`` marks
them (transaction id -> delivery time) in the same SQLite transaction as its rows (or
:meth:`BatchPipeline.published` on its own, when no batch comes).
A batch's offsets are committed once its rows are stored, its alerts and dead letters delivered, and
their delivery recorded: when it had no alerts, right after it is published; else after the next
write. Order of effects for batch N::

    score N -> SQLite commit (rows N, marks N-1) -> N's alerts delivered -> offsets up to N-1
    (or N, if it had no alerts)

One transaction a batch instead of two (a transaction of their own for the marks mostly
waited for the WAL checkpoint the batch's commit had just started: docs/benchmarks.md). A crash
anywhere replays what was not committed: stored rows are recognised by ``transaction_id`` and not
written again, and their alerts are published again if their delivery was not recorded (at least
once).
"""

from __future__ import annotations

import gc
import json
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from fraudstream.settings import Settings
from stream_processor import features
from stream_processor.core import BatchResult, RawMessage, ScoringCore
from stream_processor.refit import RefitRunner
from stream_processor.sink import open_sink

log = logging.getLogger(__name__)


FETCH_MAX_WAIT_MS = 20
"""How long a runtime's consumer lets the broker hold a fetch that has no data yet: short, so an
event at a low rate is scored within tens of milliseconds (both runtimes)."""


def tune_gc() -> None:
    """Keep the cyclic garbage collector's full passes off the batch path (runtimes only).

    Per-account state is millions of small containers that live for the whole run; a full
    collection walks all of them (0.15 s with ~10,000 accounts, seconds with a million) and
    stalls the batch it lands in: the latency outliers. Everything alive at start-up (modules,
    models, the state rebuilt from the database) is frozen out of collection, and full passes run
    a hundredth as often. Reference counting still frees everything that forms no cycle, which
    is all the per-event data.
    """
    gc.freeze()
    young, middle, _old = gc.get_threshold()
    gc.set_threshold(young, middle, 1000)


@dataclass
class Outbound:
    alerts: list[dict] = field(default_factory=list)
    dead_letters: list[dict] = field(default_factory=list)
    refit_s: float = 0.0  # of the batch's time, spent starting, swapping in, recording refits

    @property
    def alert_ids(self) -> list[str]:
        """What to hand to the next write once the alerts are delivered."""
        return [a["transaction_id"] for a in self.alerts]


class DeliveryRecords:
    """Alerts delivered but not recorded yet, and the events whose acknowledgement waits for it.

    A batch's events may be acknowledged (offsets committed) once its rows are stored, its
    alerts and dead letters delivered, and that delivery recorded. The record rides with the
    next write (``handle(..., published=records.delivered)``), so a batch with alerts is
    acknowledged after that write, one without right after it is published. Both runtimes::

        out = pipeline.handle(batch, published=records.delivered)
        acknowledge(records.written())
        publish(out)
        acknowledge(records.published(out, batch))

    (the confluent runtime calls ``published`` for a batch once the next batch is scored and
    its deliveries were waited for: :mod:`stream_processor.kafka_runtime`).
    """

    def __init__(self) -> None:
        self.delivered: dict[str, float] = {}  # transaction id -> epoch s of the delivery
        self._waiting: list = []

    def written(self) -> list:
        """A write that carried :attr:`delivered` committed: the events that waited for it."""
        ready, self._waiting, self.delivered = self._waiting, [], {}
        return ready

    def published(self, out: Outbound, events: Sequence) -> list:
        """``out``, the outcome of ``events``, was delivered: what may be acknowledged now."""
        if out.alerts:
            self.delivered.update(dict.fromkeys(out.alert_ids, time.time()))
            self._waiting.extend(events)
            return []
        if self._waiting:  # in order: never past events still waiting
            self._waiting.extend(events)
            return []
        return list(events)


class BatchPipeline:
    """The scoring core and the sink. :meth:`handle` scores and stores a batch; or, to score the
    next batch while the last one is written (the sink writes beside the batch path: a child
    process for SQLite, a thread for PostgreSQL), :meth:`score`, :meth:`submit`,
    :meth:`collect`::

        result = pipeline.score(batch_n)      # while batch n-1's write runs
        out = pipeline.collect()              # batch n-1 committed: its alerts to publish
        pipeline.submit(result, published=...)

    While a write is in flight the core's reads see the committed database plus, for duplicate
    detection, the ids being written; a read of stored events (evicted accounts, labelled
    events) waits for the write first."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.sink = open_sink(settings.database_url)
        self._submitted: BatchResult | None = None  # written, not collected yet
        self._in_flight_ids: frozenset[str] = frozenset()
        refits = RefitRunner(settings.refit_worker)  # saved models load where scikit-learn is
        model = self.sink.latest_model(refits.run)
        held = self.sink.held_events()
        # The most recently active MAX_ACCOUNTS accounts now; any other, when it comes back.
        history = list(
            self.sink.recent_history(settings.account_history, accounts=settings.max_accounts)
        )
        supervised = self.sink.latest_supervised(refits.run)
        self.core = ScoringCore(
            settings,
            self._known_ids,
            self._lookup_events,
            model=model,
            next_version=self.sink.next_version(),
            held=held,
            history=history,
            supervised=supervised,
            label_history=self.sink.label_history(settings.supervised_window),
            queued_labels=self.sink.queued_labels(settings.label_memory),
            account_events=self._account_events,
            refits=refits,
        )
        self.core.states.not_loaded(self.sink.account_count() - len(self.core.states))
        log.info(
            "processor state: model %s, supervised %s, %d accounts from %d stored events, "
            "%d held for first fit, %d labels learned",
            f"v{model.version}" if model else "none yet",
            f"v{supervised.version}" if supervised else "none yet", len(self.core.states),
            len(history), len(held), self.core.label_memory.labels,
        )  # fmt: skip
        if not features.COMPILED:
            log.warning(
                "the feature code runs as plain Python (it was not compiled at install: no C "
                "compiler?): the same results, about half the speed; see README, Compiled parts"
            )

    # -- what the core reads while a write may be in flight -------------------------------------

    def _known_ids(self, ids: list[str]) -> set[str]:
        found = self.sink.known_ids(ids)
        if self._in_flight_ids:
            found |= self._in_flight_ids.intersection(ids)
        return found

    def _lookup_events(self, ids: list[str]):
        self.sink.wait()
        return self.sink.lookup_events(ids)

    def _account_events(self, ids: list[str]):
        self.sink.wait()
        return self.sink.account_history(ids, self.settings.account_history)

    # -- batches -------------------------------------------------------------------------------

    def handle(
        self, messages: Sequence[RawMessage], published: Mapping[str, float] | None = None
    ) -> Outbound:
        """Score and store a batch; ``published``: earlier alerts delivered since the last write
        (transaction id -> epoch s of the delivery), recorded in the same transaction."""
        result = self.score(messages)
        return self._commit(result, published)

    def tick(self, published: Mapping[str, float] | None = None) -> Outbound:
        return self._commit(self.idle_work(), published)

    def score(self, messages: Sequence[RawMessage]) -> BatchResult:
        """Score a batch (no write): :meth:`submit` the result next."""
        return self.core.process(messages)

    def idle_work(self) -> BatchResult:
        """What is due without new events (the idle first fit, a finished refit)."""
        return self.core.tick()

    def submit(self, result: BatchResult, published: Mapping[str, float] | None = None) -> None:
        """Start storing ``result`` (and recording ``published``) in one transaction; committed
        when :meth:`collect` returns. The write submitted before must be collected first."""
        if self._submitted is not None:
            raise RuntimeError("collect() the write in flight before submitting another")
        self.sink.submit(result, published)
        self._submitted = result
        if self.sink.in_flight:
            ids = [r[0] for r in result.row_values]  # ROW_COLUMNS[0]: transaction_id
            ids += [p["transaction_id"] for p in result.pending_add]
            self._in_flight_ids = frozenset(ids)

    def collect(self) -> Outbound:
        """Wait until the submitted write is committed (:class:`SinkError` if it failed): what
        to publish for it. An empty :class:`Outbound` when nothing was submitted."""
        result, self._submitted = self._submitted, None
        try:
            self.sink.wait()
        finally:
            self._in_flight_ids = frozenset()
        if result is None:
            return Outbound()
        return self._outbound(result)

    @property
    def in_flight(self) -> bool:
        """A write was submitted and not collected yet."""
        return self._submitted is not None

    def _commit(self, result: BatchResult, published: Mapping[str, float] | None) -> Outbound:
        self.submit(result, published)
        return self.collect()

    def _outbound(self, result: BatchResult) -> Outbound:
        for m in result.models:
            log.info(
                "model v%d recorded (%s, %d training events, threshold %.4f; refit work in "
                "this batch %.1f ms)",
                m.version, m.reason, m.training_rows, m.threshold, 1000 * result.refit_s,
            )  # fmt: skip
        alerts = list(result.alerts)
        if result.duplicate_ids:
            alerts.extend(self.sink.unpublished_alerts(result.duplicate_ids))
        return Outbound(alerts=alerts, dead_letters=result.dead_letters, refit_s=result.refit_s)

    def published(self, published: Mapping[str, float]) -> None:
        """Record delivered alerts in a transaction of their own (no batch to carry them)."""
        if self._submitted is not None:
            raise RuntimeError("collect() the write in flight first")
        self.sink.mark_published(published)

    def status(self) -> dict:
        core = self.core
        return {
            "model_version": core.model.version if core.model else None,
            "supervised_version": core.supervised.version if core.supervised else None,
            "labels_queued": core.queued_labels,
            "threshold": core.model.threshold if core.model else None,
            "held_for_first_fit": len(core.held),
            "accounts_in_memory": len(core.states),
            "accounts_evicted": core.states.evicted,
            **core.counts,
        }

    def finish(self, timeout_s: float = 60.0, published: Mapping[str, float] | None = None) -> None:
        """On shutdown: record delivered alerts; let a refit in progress finish and record it
        (it scores nothing)."""
        if self._submitted is not None:
            raise RuntimeError("collect() the write in flight first")
        if published:
            self.published(published)
        result = self.core.wait_for_refit(timeout_s)
        if result.models:
            self.sink.write(result)
            log.info("model v%d recorded at shutdown", result.models[-1].version)

    def close(self) -> None:
        self.core.close()
        self.sink.close()


def alert_message(alert: dict) -> tuple[bytes, bytes, list[tuple[str, bytes]]]:
    """(key, value, headers) of an alert: keyed by account, JSON value."""
    value = json.dumps(alert, ensure_ascii=False, separators=(",", ":")).encode()
    return (
        alert["account_id"].encode(),
        value,
        [("transaction_id", alert["transaction_id"].encode())],
    )


def dead_letter_message(dl: dict) -> tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]:
    """(key, value, headers) of a dead letter: the original bytes, the error in headers."""
    headers = [
        ("error", dl["error"].encode()),
        ("error_field", (dl["error_field"] or "").encode()),
        ("source_topic", dl["source_topic"].encode()),
        ("source_partition", str(dl["source_partition"]).encode()),
        ("source_offset", str(dl["source_offset"]).encode()),
    ]
    return dl["message_key"], dl["message_value"], headers


def produced_at(headers) -> float | None:
    """The producer's ``produced_at`` header (epoch s), if present and readable."""
    for key, value in headers or ():
        if key == "produced_at":
            try:
                return float(value)
            except (TypeError, ValueError):
                return None
    return None
