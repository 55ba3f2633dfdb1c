"""The scoring core and the sink wired together: what every runtime does with a batch
(:class:`BatchPipeline`), driven by the commit protocol (:mod:`stream_processor.commit`), which
decides when offsets may be committed.
"""

from __future__ import annotations

import gc
import logging
import time
import uuid
from collections.abc import Mapping, Sequence

from sqlalchemy.exc import SQLAlchemyError

from fraudstream.settings import Settings
from stream_processor import features
from stream_processor.contracts import TRANSACTION_ID
from stream_processor.core import BatchResult, RawMessage, Restored, ScoringCore
from stream_processor.group import GroupState, Outgoing
from stream_processor.outbox import Outbound
from stream_processor.refit import RefitRunner
from stream_processor.rules_feed import RulesFeed
from stream_processor.sink import SinkStore, open_sink

log = logging.getLogger(__name__)


MODEL_SYNC_S = 1.0
"""How often a processor checks the trainer's lease and, without it, the models the trainer
recorded: a new version scores every processor's events within about this long."""

TRAINER = "this processor fits the models now (it holds the trainer's lease)"
FOLLOWER = "another processor fits the models (it holds the trainer's lease): taking its versions"

FETCH_MAX_WAIT_MS = 20
"""How long a runtime's consumer lets the broker hold a fetch that has no data yet: short, so an
event at a low rate is scored within tens of milliseconds (both runtimes)."""


def tune_gc() -> None:
    """Keep the cyclic garbage collector's full passes off the batch path (runtimes only).

    Per-account state is millions of small containers that live for the whole run; a full
    collection walks all of them and stalls the batch it lands in: the latency outliers.
    Everything alive at start-up (modules, models, the state rebuilt from the database) is
    frozen out of collection, and full passes run a hundredth as often; reference counting still
    frees all the per-event data, which forms no cycle.
    """
    gc.freeze()
    young, middle, _old = gc.get_threshold()
    gc.set_threshold(young, middle, 1000)


class BatchPipeline:
    """The scoring core and the sink. :meth:`handle` scores and stores a batch; or, to score the
    next batch while the last one is written (the sink writes beside the batch path: a child
    process for SQLite, a thread for PostgreSQL), :meth:`score`, :meth:`submit`,
    :meth:`collect`::

        result = pipeline.score(batch_n)      # while batch n-1's write runs
        out = pipeline.collect()              # batch n-1 committed: its alerts to publish
        pipeline.submit(result, published=...)

    While a write is in flight the core reads through a :class:`SinkStore`."""

    def __init__(self, settings: Settings, refits: RefitRunner | None = None):
        self.settings = settings
        self.sink = open_sink(settings.database_url)
        self._submitted: BatchResult | None = None  # written, not collected yet
        self.store = SinkStore(self.sink, settings.account_history)
        refits = refits or RefitRunner()  # saved models load where scikit-learn is
        restored = Restored(
            model=self.sink.latest_model(refits.run),
            next_version=self.sink.next_version(),
            held=self.sink.held_events(),
            # The most recently active MAX_ACCOUNTS accounts now; any other, when it comes back.
            history=list(
                self.sink.recent_history(settings.account_history, accounts=settings.max_accounts)
            ),
            supervised=self.sink.latest_supervised(refits.run),
            label_history=self.sink.label_history(settings.supervised_window),
            queued_labels=self.sink.queued_labels(settings.label_memory),
        )
        self.core = ScoringCore(settings, self.store, restored=restored, refits=refits)
        self.core.states.not_loaded(self.sink.account_count() - len(self.core.states))
        if self.sink.SHARED:  # events and labels spread over the processors: fit on the stored
            self.core.fit_on_group(settings.database_url, self.sink.draw_version)
        self.group: GroupState | None = None  # see join_group()
        # What the group learned from the batch scored last and from the one being written:
        # published once that batch is stored (see join_group()).
        self._scored_snapshot: Outgoing | None = None
        self._writing_snapshot: Outgoing | None = None
        self.lease = self.sink.trainer_lease()
        self._trains: bool | None = None  # holds the lease (None: not asked yet)
        self._synced = float("-inf")  # when the lease and the models were last checked
        self._partitions: set[int] = set()  # of the transactions topic, assigned by Kafka
        # Stored alerts whose delivery was never recorded, sent with the first batch: a crash
        # between a write and its alerts' delivery loses nothing, also for events whose offsets
        # were committed before that write (those held for the first fit).
        self._undelivered = self.sink.unpublished_alerts()
        model, supervised = restored.model, restored.supervised
        log.info(
            "processor state: model %s, supervised %s, %d accounts from %d stored events, "
            "%d held for first fit, %d labels learned",
            f"v{model.version}" if model else "none yet",
            f"v{supervised.version}" if supervised else "none yet", len(self.core.states),
            len(restored.history), len(restored.held), self.core.label_memory.labels,
        )  # fmt: skip
        self.rules_feed: RulesFeed | None = None  # see follow_rules()
        self._sync_models()
        if not features.COMPILED:
            log.warning(
                "the feature code runs as plain Python (it was not compiled at install: no C "
                "compiler?): the same results, about half the speed; see docs/development.md, "
                "Compiled parts"
            )

    # -- batches -------------------------------------------------------------------------------

    def handle(self, messages: Sequence[RawMessage]) -> Outbound:
        """Score and store a batch at once (tests, benchmarks; runtimes use the commit protocol)."""
        self.submit(self.score(messages))
        return self.collect()

    def score(self, messages: Sequence[RawMessage]) -> BatchResult:
        """Score a batch (no write): :meth:`submit` the result next."""
        self._sync_models()
        self._sync_rules()
        return self._snapshot(self._refused_rules(self.core.process(messages)))

    def idle_work(self) -> BatchResult:
        """What is due without new events (the idle first fit, a finished refit)."""
        self._sync_models()
        self._sync_rules()
        return self._snapshot(self._refused_rules(self.core.tick()))

    def follow_rules(self) -> None:
        """Score with the live rules of the rules topic (runtimes; see
        :mod:`stream_processor.rules_feed`): each batch with the newest rule set read."""
        self.rules_feed = RulesFeed(self.settings, self.core.rules)
        self._sync_rules()

    def _sync_rules(self) -> None:
        if self.rules_feed is not None:
            self.core.rules = self.rules_feed.current

    def _refused_rules(self, result: BatchResult) -> BatchResult:
        """Rule sets refused on the rules topic since the last batch, as its dead letters: those
        not dead-lettered before (every processor reads the whole topic at each start)."""
        refused = self.rules_feed.take_refused() if self.rules_feed is not None else []
        if refused:
            topic, partition = refused[0]["source_topic"], refused[0]["source_partition"]
            known = self.sink.dead_lettered(topic, partition, [d["source_offset"] for d in refused])
            refused = [d for d in refused if d["source_offset"] not in known]
            result.dead_letters += refused
            self.core.counts["dead_letters"] += len(refused)
        return result

    def join_group(self) -> GroupState:
        """Several processors on this database (a runtime that carries what they share, see
        :class:`~stream_processor.group.GroupState`): what this one learns goes to the others,
        publishable once stored."""
        core = self.core
        self.group = GroupState(core.states, core.label_memory, core.learner.clock,
                                sender=uuid.uuid4().hex)  # fmt: skip
        core.share(self.group)
        return self.group

    def _snapshot(self, result: BatchResult) -> BatchResult:
        if self.group is not None:  # what the batch taught, published once it is stored
            self._scored_snapshot = self.group.snapshot()
        return result

    # -- several processors ----------------------------------------------------------------------

    def _sync_models(self) -> None:
        """Every MODEL_SYNC_S: take the trainer's lease if it is free; without it, score with
        the newest models the trainer recorded (loaded here: the batch never waits for a fit)."""
        now = time.monotonic()
        if now - self._synced < MODEL_SYNC_S:
            return
        self._synced = now
        try:
            self._check_models()
        except SQLAlchemyError as exc:  # the database is away: the sink's writes say so if it stays
            log.warning("cannot read the trainer's models (%s); scoring on with these", exc)

    def _check_models(self) -> None:
        core = self.core
        trains = self.lease.held()
        if trains != self._trains:
            if trains:
                core.versions.next = max(core.versions.next, self.sink.next_version())
            log.info(TRAINER if trains else FOLLOWER)
            self._trains = trains
        core.train(trains)
        if trains:
            if self.sink.SHARED:
                counts = self.sink.group_counts()
                core.scorer.group_scored(counts.scored)
                core.trainer.group_learned(counts.learned)
                if core.model is None:  # the group's held events, to fit on
                    core.warmup.group = self.sink.held_events()
            return
        newest = self.sink.newest_versions()
        run = core.refits.run
        if newest.get("isolation_forest", 0) > (core.model.version if core.model else 0):
            self._adopt(self.sink.latest_model(run))
        if newest.get("supervised", 0) > (core.supervised.version if core.supervised else 0):
            self._adopt(self.sink.latest_supervised(run))

    def _adopt(self, model) -> None:
        if model is not None:  # None: saved with other features (logged)
            self.core.adopt(model)

    def partitions_assigned(self, partitions: list[int]) -> None:
        """The transactions topic's partitions this processor consumes now, after a rebalance
        (the batches consumed before it finished). Until now another processor scored the
        events of a partition this one gained, so every account's state is rebuilt from the
        stored events of the partitions held (the ``max_accounts`` most recently active; any
        other when it comes back), and events held there for the first fit are held here too."""
        if self._submitted is not None:
            raise RuntimeError("collect() the write in flight before partitions move")
        if not self.sink.SHARED:  # one processor on the database: what it holds is current
            return
        gained = set(partitions) - self._partitions
        self._partitions = set(partitions)
        if self.group is not None:
            self.group.assigned(partitions)
        self.core.warmup.reassigned(self._partitions, self.sink.held_events(sorted(gained)))
        if not gained:
            return
        s, states = self.settings, self.core.states
        history = self.sink.partition_history(s.account_history, s.max_accounts, sorted(partitions))
        states.drop_accounts()
        states.restore(history)
        states.not_loaded(self.sink.account_count(sorted(partitions)) - len(states))
        gc.freeze()  # the rebuilt state lives on: out of the collector's full passes (tune_gc)
        log.info(
            "partitions %s assigned (%s new): %d accounts rebuilt from the database",
            sorted(partitions), sorted(gained), len(states),
        )  # fmt: skip

    def partitions_lost(self) -> None:
        """The group moved on without this processor (it missed its session timeout): others
        may have scored its partitions since, so whatever it is assigned next is rebuilt."""
        self._partitions = set()
        if self.group is not None:
            self.group.assigned([])

    def submit(self, result: BatchResult, published: Mapping[str, float] | None = None) -> None:
        """Start storing ``result`` (and recording ``published``) in one transaction; committed
        when :meth:`collect` returns. The write submitted before must be collected first."""
        if self._submitted is not None:
            raise RuntimeError("collect() the write in flight before submitting another")
        self.sink.submit(result, published)
        self._submitted = result
        self._writing_snapshot, self._scored_snapshot = self._scored_snapshot, None
        if self.sink.in_flight:
            ids = [r[TRANSACTION_ID] for r in result.rows]
            ids += [p["transaction_id"] for p in result.pending_add]
            self.store.in_flight_ids = frozenset(ids)

    def collect(self) -> Outbound:
        """Wait until the submitted write is committed (:class:`SinkError` if it failed): what
        to publish for it. An empty :class:`Outbound` when nothing was submitted."""
        result, self._submitted = self._submitted, None
        try:
            self.sink.wait()
        finally:
            self.store.in_flight_ids = frozenset()
        if result is None:
            return Outbound()
        snapshot, self._writing_snapshot = self._writing_snapshot, None
        if snapshot is not None:
            self.group.stored(snapshot)
        for m in result.models:
            log.info(
                "model v%d recorded (%s, %d training events, threshold %.4f; refit work in "
                "this batch %.1f ms)",
                m.version, m.reason, m.training_rows, m.threshold, 1000 * result.refit_s,
            )  # fmt: skip
        alerts = list(result.alerts)
        if result.duplicate_ids:
            alerts.extend(self.sink.unpublished_alerts(result.duplicate_ids))
        alerts.extend(self._undelivered)
        self._undelivered = []
        unique = list({a["transaction_id"]: a for a in alerts}.values())
        return Outbound(alerts=unique, dead_letters=result.dead_letters, refit_s=result.refit_s)

    @property
    def in_flight(self) -> bool:
        return self._submitted is not None

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
            "threshold": core.scorer.budget.in_effect,
            "held_for_first_fit": len(core.held),
            "accounts_in_memory": len(core.states),
            "accounts_evicted": core.states.evicted,
            # the rules the next batch is scored with
            "rules_version": (self.rules_feed.current if self.rules_feed else core.rules).version,
            **dict(core.counts),  # a copy: the health page reads it from its own thread
        }

    def finish(self, timeout_s: float = 60.0) -> None:
        """On shutdown: let a refit in progress finish and record it (it scores nothing)."""
        if self._submitted is not None:
            raise RuntimeError("collect() the write in flight first")
        result = self.core.wait_for_refit(timeout_s)
        if result.models:
            self.sink.write(result)
            log.info("model v%d recorded at shutdown", result.models[-1].version)

    def close(self) -> None:
        if self.rules_feed is not None:
            self.rules_feed.close()
        self.core.close()
        self.lease.close()
        self.sink.close()


def produced_at(headers) -> float | None:
    """The producer's ``produced_at`` header (epoch s), if present and readable."""
    value = next((v for k, v in headers or () if k == "produced_at"), None)
    try:
        return float(value)
    except (TypeError, ValueError):  # not there (None), or not a number
        return None
