"""The transport-free scoring core: a batch of raw Kafka values in; rows, alerts, dead letters out.

No Kafka and no database in here: a runtime feeds :meth:`ScoringCore.process` with
:class:`RawMessage` lists, writes the :class:`BatchResult` in one database transaction, publishes
its alerts and dead letters, and only then commits its offsets. What the core reads from the
database comes through an :class:`EventStore`; what a restart restores, as a :class:`Restored`.

Before the first model exists, valid events are *held* (``BatchResult.pending_add``, which the
runtime stores in ``pending_events`` so a crash loses nothing). The first model is fit on them
once ``warmup_events`` are held, or ``warmup_idle_s`` after the last event (:meth:`tick`); they are
then scored like every later event. No event is ever stored unscored.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

import numpy as np
import orjson

from fraudstream.schema import InvalidRecord, Transaction, decode, format_timestamp
from fraudstream.settings import Settings
from stream_processor.contracts import (
    ROW_COLUMNS,
    BatchResult,
    EventStore,
    HeldEvent,
    LabelledEvent,
    MemoryStore,
    RawMessage,
    Restored,
    TransactionRow,
    alert_payload,
    dead_letter,
    rows_from_columns,
)
from stream_processor.features import SLOT, SUPERVISED_FEATURE_NAMES, AccountStates, LabelMemory
from stream_processor.group import GroupState
from stream_processor.labelling import LabelLearner, SupervisedTrainer
from stream_processor.labels import Label, decode_label
from stream_processor.model import FittedModel, Model, SupervisedModel
from stream_processor.reasons import explain
from stream_processor.refit import RefitRunner
from stream_processor.rules import RuleSet, batch_columns, rules_from
from stream_processor.scoring import AnomalyScorer, GroupCount, Scores, Versions
from stream_processor.warmup import WarmUp

__all__ = [
    "ROW_COLUMNS", "BatchResult", "EventStore", "HeldEvent", "LabelledEvent", "MemoryStore",
    "RawMessage", "Restored", "ScoringCore", "TransactionRow", "alert_payload", "db_timestamp",
    "features_json",
]  # fmt: skip

log = logging.getLogger(__name__)


try:  # the rows' text in C (rowtext.pyx, compiled at install); the Python below without it
    from stream_processor.rowtext import features_rows as _features_rows
    from stream_processor.rowtext import utc_text as _utc_text
except ImportError:  # not compiled (no C compiler at install): test_compiled.py runs both
    _features_rows = _utc_text = None

# The text around each value of a features object: '{"name": ', then ', "name": ', ..., '}'.
_FEATURES_KEYS = [f'{{"{SUPERVISED_FEATURE_NAMES[0]}": '] + [
    f', "{name}": ' for name in SUPERVISED_FEATURE_NAMES[1:]
]
_FEATURES_KEY_BYTES = [key.encode() for key in _FEATURES_KEYS] + [b"}"]


def features_json(matrix: np.ndarray) -> list[str]:
    """The ``features`` column of each row of ``matrix`` (SUPERVISED_FEATURE_NAMES, in order):
    a JSON object of name -> value rounded to 6 decimals, laid out as ``json.dumps`` lays it.

    The numbers of the whole batch are written by orjson in one call and joined with the names
    per row, because Python's float ``repr``, one number at a time, would be most of a row's
    cost (docs/benchmarks.md). A number may be written differently from ``repr`` (``1e-6``,
    not ``1e-06``); it reads back as the same float. A NaN would be ``null``.
    """
    if not len(matrix):
        return []
    numbers = orjson.dumps(
        np.ascontiguousarray(matrix.round(6), dtype=np.float64), option=orjson.OPT_SERIALIZE_NUMPY
    )
    if _features_rows is not None:
        return _features_rows(numbers, _FEATURES_KEY_BYTES)
    text = numbers.decode()
    parts = [None] * (2 * len(_FEATURES_KEYS)) + ["}"]
    parts[0:-1:2] = _FEATURES_KEYS
    join = "".join
    out = []
    for row in text[2:-2].split("],["):
        parts[1:-1:2] = row.split(",")
        out.append(join(parts))
    return out


def _json(value) -> str:
    """A decoded event's extra fields as JSON: by orjson, much faster on the batch path; by
    json.dumps what orjson refuses (integers beyond 64 bits)."""
    try:
        return orjson.dumps(value).decode()
    except TypeError:
        return json.dumps(value, ensure_ascii=False)


def db_timestamp(ts: datetime) -> str:
    """UTC as 'YYYY-MM-DD HH:MM:SS[.ffffff]': sorts as text; SQLite date functions read it."""
    if ts.tzinfo is UTC:  # what validation gives: '...+00:00' dropped, in one call
        if _utc_text is not None:
            return _utc_text(ts, UTC)
        return ts.isoformat(" ")[:-6]
    return format_timestamp(ts)[:-1].replace("T", " ")


class Decoder:
    """Raw messages to events and labels: validates them, dead-letters the invalid ones, and
    drops duplicate events within the batch."""

    def __init__(self, labels_topic: str):
        self.labels_topic = labels_topic

    def decode(
        self, messages: Sequence[RawMessage], result: BatchResult
    ) -> tuple[list[HeldEvent], set[str], list[RawMessage]]:
        """The batch's valid events, each id once, and their ids; its label messages, for
        :meth:`labels`."""
        labels_topic = self.labels_topic
        fresh: list[HeldEvent] = []
        batch_ids: set[str] = set()
        label_messages = []
        for msg in messages:
            if msg.topic == labels_topic:
                label_messages.append(msg)
                continue
            try:
                txn = decode(msg.value)
            except InvalidRecord as exc:
                result.dead_letters.append(dead_letter(msg, exc))
                continue
            if txn.transaction_id in batch_ids:
                result.duplicate_ids.append(txn.transaction_id)
                continue
            batch_ids.add(txn.transaction_id)
            fresh.append(HeldEvent(txn, msg.partition, msg.offset, msg.produced_at))
        return fresh, batch_ids, label_messages

    def labels(self, messages: list[RawMessage], result: BatchResult) -> list[Label]:
        """The valid labels of label messages, each with its row for the labels table."""
        now = time.time()
        out = []
        for msg in messages:
            try:
                label = decode_label(msg.value)
            except InvalidRecord as exc:
                result.dead_letters.append(dead_letter(msg, exc))
                continue
            result.labels.append(
                {
                    "transaction_id": label.transaction_id,
                    "is_fraud": label.is_fraud,
                    "labelled_at": db_timestamp(label.labelled_at),
                    "received_at": now,
                    "learned": None,  # set when the event clock reaches labelled_at
                }
            )
            out.append(label)
        return out


def emit_rows(
    events: list[HeldEvent],
    scores: Scores,
    result: BatchResult,
    hits: RuleHits | None = None,
    rules_version: int | None = None,
) -> np.ndarray:
    """The transactions rows of scored ``events`` into ``result``, and an alert, with the
    reasons, for each flagged one (``hits``: the rules they matched, of the rule set
    ``rules_version``); the flags."""
    model, supervised = scores.model, scores.supervised
    n = len(events)
    txns = [h.txn for h in events]
    # Python floats and bools once per batch: NumPy scalars, one a row, would cost more
    score_list = scores.anomaly.tolist()
    probabilities = scores.probabilities
    probability_list = [None] * n if probabilities is None else probabilities.tolist()
    flags = scores.flags if hits is None else scores.flags | hits.alerting
    flagged = np.flatnonzero(flags).tolist()
    reasons = _reasons(txns, flagged, scores, score_list, probability_list, hits)
    rows = rows_from_columns(
        {
            "transaction_id": [t.transaction_id for t in txns],
            "account_id": [t.account_id for t in txns],
            "amount": [t.amount for t in txns],
            "merchant": [t.merchant for t in txns],
            "timestamp": [db_timestamp(t.timestamp) for t in txns],
            "location": [t.location for t in txns],
            "is_fraud": [t.is_fraud for t in txns],
            "extras": [_json(t.extras) if t.extras else None for t in txns],
            "score": score_list,
            "threshold": [scores.threshold] * n,
            "supervised_score": probability_list,
            "risk_score": scores.risks.tolist(),
            "is_flagged": flags.astype(int).tolist(),
            "model_flagged": scores.flags.astype(int).tolist(),
            "reasons": reasons,
            "rules_hit": [None] * n if hits is None else hits.ids,
            "rules_version": [rules_version] * n,
            "model_version": [model.version] * n,
            "supervised_version": [supervised.version if supervised else None] * n,
            "features": features_json(scores.inputs),
            "kafka_partition": [h.partition for h in events],
            "kafka_offset": [h.offset for h in events],
            "produced_at": [h.produced_at for h in events],
            "scored_at": [time.time()] * n,
            "alert_published_at": [None] * n,
        }
    )
    result.rows += rows
    result.alerts += [alert_payload(TransactionRow._make(rows[i])) for i in flagged]
    return flags


def _reasons(
    txns: list[Transaction],
    flagged: list[int],
    scores: Scores,
    score_list: list[float],
    probability_list: list[float | None],
    hits: RuleHits | None,
) -> list[str | None]:
    """The ``reasons`` column: for each flagged event, the models' reasons and then the rules'
    (JSON text); None for the others."""
    supervised = scores.supervised
    reasons: list[str | None] = [None] * len(txns)
    for i in flagged:
        explained = explain(
            txns[i], scores.inputs[i], score_list[i], scores.threshold,
            anomalous=bool(scores.anomalous[i]), probability=probability_list[i],
            supervised_threshold=supervised.threshold if supervised else None,
        )  # fmt: skip
        if hits is not None:
            explained += hits.reasons(i)
        reasons[i] = json.dumps(explained, ensure_ascii=False) if explained else None
    return reasons


class RuleHits:
    """What the rules said of a batch: per event, the ids matched (JSON text, None for none),
    the reasons they give, and which events an alert rule flags."""

    def __init__(self, rules: RuleSet, events: list[HeldEvent], scores: Scores):
        txns = [h.txn for h in events]
        n = len(txns)

        def value_of(name: str):
            if name in SLOT:
                return scores.inputs[:, SLOT[name]]
            if name == "score":
                return scores.anomaly
            if name == "supervised_score":
                p = scores.probabilities
                return np.full(n, np.nan) if p is None else p
            if name == "timestamp":
                return [db_timestamp(t.timestamp) for t in txns]
            return [getattr(t, name) for t in txns]  # amount, account_id, merchant, location

        self.rules = rules
        self.matched: dict[int, list[str]] = {}  # event -> the ids of the rules it matched
        self.alerting = np.zeros(n, dtype=bool)
        for rule_id, hit in rules.hits(batch_columns(rules.names, value_of), n).items():
            for i in np.flatnonzero(hit).tolist():
                self.matched.setdefault(i, []).append(rule_id)
            if rules.action(rule_id) == "alert":
                self.alerting |= hit
        self.ids: list[str | None] = [None] * n
        for i, ids in self.matched.items():  # ids are [a-z0-9_]: JSON as they are
            self.ids[i] = '["' + '", "'.join(ids) + '"]'

    def reasons(self, i: int) -> list[str]:
        return [self.rules.describe(rule_id) for rule_id in self.matched.get(i, ())]


class ScoringCore:
    """Features, scoring, thresholding and reasons over batches; refits in the background."""

    def __init__(
        self,
        settings: Settings,
        store: EventStore | None = None,
        *,
        restored: Restored | None = None,
        refits: RefitRunner | None = None,
    ):
        restored = restored or Restored()
        self.store: EventStore = store or MemoryStore()
        self.refits = refits or RefitRunner()
        self.counts = {
            "scored": 0, "flagged": 0, "dead_letters": 0, "duplicates": 0, "labels": 0,
            "labels_learned": 0, "drifts": 0, "accounts_rebuilt": 0,
        }  # fmt: skip
        history = list(restored.history)
        self.states = AccountStates(settings.max_accounts, settings.account_history)
        self.states.learn(history)
        model, supervised = restored.model, restored.supervised
        self.versions = Versions(
            max(
                restored.next_version,
                model.version + 1 if model else 1,
                supervised.version + 1 if supervised else 1,
            )
        )
        self.trains = True  # see train()
        self.decoder = Decoder(settings.labels_topic)
        self.warmup = WarmUp(settings, restored.held)
        self.scorer = AnomalyScorer(settings, self.refits, self.versions, self.counts, model)
        self.trainer = SupervisedTrainer(settings, self.refits, self.versions, supervised)
        clock = max((t.event_time for t in history), default=float("-inf"))
        self.learner = LabelLearner(settings, self.store, self.trainer, self.counts, clock)
        self.learner.restore(restored.label_history, restored.queued_labels)
        self.group: GroupState | None = None  # several processors: what they share (share())
        self.rules = rules_from(settings.rules_file)  # the runtimes follow the rules topic

    # -- what runtimes, the pipeline and tests read ------------------------------------------

    @property
    def model(self) -> FittedModel | None:
        return self.scorer.model

    @property
    def supervised(self) -> SupervisedModel | None:
        return self.trainer.model

    @property
    def held(self) -> list[HeldEvent]:
        return self.warmup.held

    @property
    def label_memory(self) -> LabelMemory:
        return self.learner.memory

    @property
    def queued_labels(self) -> int:
        return self.learner.queued

    # -- the batch path ------------------------------------------------------------------------

    def process(self, messages: Sequence[RawMessage]) -> BatchResult:
        """Decode, validate, de-duplicate, score and explain one batch."""
        result = self._collect_refits()
        events, ids, label_messages = self.decoder.decode(messages, result)
        self.learner.labels_in_batch = bool(label_messages)
        if events:
            self.warmup.saw_events()
            known = self.store.known_ids(list(ids)) | (ids & self.warmup.ids)  # stored or held
            if known:
                result.duplicate_ids.extend(known)
                events = [h for h in events if h.txn.transaction_id not in known]
        if self.scorer.model is None:
            self.warmup.hold(events, result)
            if self.trains and self.warmup.full():
                self._fit_initial(result)
        else:
            self._release_held(result)
            if events:
                self._emit(events, self._features([h.txn for h in events]), result)
        labels = self.decoder.labels(label_messages, result)
        self.counts["labels"] += len(labels)
        for label in labels:
            self.learner.queue(label)
        self.learner.release(result)
        self._start_refits(result)
        self.counts["dead_letters"] += len(result.dead_letters)
        self.counts["duplicates"] += len(result.duplicate_ids)
        return result

    def tick(self) -> BatchResult:
        """Work due without new events: the idle first fit, and swapping in a finished refit."""
        result = self._collect_refits()
        if self.scorer.model is None:
            if self.trains and self.warmup.idle():
                self._fit_initial(result)
        else:
            self._release_held(result)
        self._start_refits(result)
        return result

    def wait_for_refit(self, timeout_s: float = 60.0) -> BatchResult:
        """Block until a running refit finishes and swap it in (tests, shutdown)."""
        self.scorer.refit.wait(timeout_s)
        self.trainer.refit.wait(timeout_s)
        return self._collect_refits()

    def train(self, trains: bool) -> None:
        """Whether this processor fits the models (it holds the trainer's lease, see
        :class:`~stream_processor.sink.TrainerLease`) or takes those another one records
        (:meth:`adopt`). Losing the lease drops a fit in progress: the new trainer numbers the
        next version."""
        if not trains:
            self.scorer.refit.future = self.trainer.refit.future = None
        self.trains = trains

    def adopt(self, model: Model) -> None:
        """A model the trainer recorded: it scores from the next batch on (the trainer recorded
        it; it is not recorded again). Events held for the first fit are scored then."""
        if isinstance(model, SupervisedModel):
            self.trainer.model = model
        else:
            self.scorer.adopt(model)
        self.versions.next = max(self.versions.next, model.version + 1)
        log.info("%s v%d taken from the trainer", model.kind, model.version)

    def fit_on_group(self, database_url: str, draw_version: Callable[[], int]) -> None:
        """Several processors share ``database_url``: the trainer fits both models on what the
        whole group stored there, counts what the group stored towards each refit
        (``scorer.group_scored``, ``trainer.group_learned``), and numbers its models by
        ``draw_version`` (the database's sequence)."""
        self.scorer.group = GroupCount(database_url)
        self.trainer.group = GroupCount(database_url)
        self.versions.draw = draw_version

    def share(self, group: GroupState) -> None:
        """Several processors: the merchant shares and labels learned here go to ``group``
        (and the others' come from it)."""
        self.group = self.learner.group = group

    def close(self) -> None:
        self.refits.close()

    # -- internals -----------------------------------------------------------------------------

    def _fit_initial(self, result: BatchResult) -> None:
        """Fit the first model on the events held here and by the group, then score those held
        here (the group's processors score theirs with it). Nothing was scored before, so the
        features of every held event, on a state of their own, are the ones a single processor
        would compute."""
        training = self.warmup.training()
        accounts = AccountStates(self.states.max_accounts, self.states.history)
        model = self.scorer.fit_first(accounts.transform([h.txn for h in training]), result)
        log.info("first model v%d fit on %d held events", model.version, len(training))
        self.warmup.group = []
        self._release_held(result)
        self.scorer.since_fit = 0  # the model was fit on these: no refit due for them

    def _release_held(self, result: BatchResult) -> None:
        """Score the events held before a model came from the trainer (or held by another
        processor for partitions this one took over)."""
        if self.warmup.held:
            held = self.warmup.release()
            self._emit(held, self._features([h.txn for h in held]), result)
            result.pending_clear = [h.txn.transaction_id for h in held]

    def _features(self, txns: list[Transaction]) -> np.ndarray:
        missing = self.states.missing({t.account_id for t in txns})
        if missing:  # accounts evicted from memory come back as their stored events rebuild them
            self.counts["accounts_rebuilt"] += self.states.restore(
                self.store.account_events(missing)
            )
        return self.states.transform(txns)

    def _emit(self, events: list[HeldEvent], features: np.ndarray, result: BatchResult) -> None:
        """Score ``events`` (of ``features``), write their rows, and learn what follows."""
        txns = [h.txn for h in events]
        scores = self.scorer.score(features, self.learner.memory.features(txns), self.supervised)
        hits = RuleHits(self.rules, events, scores) if self.rules.enabled else None
        flags = emit_rows(events, scores, result, hits, self.rules.version)
        self.learner.keep(events, scores.inputs, result)
        if self.group is not None:
            self.group.learned(events)
        group = self.group
        self.scorer.observe(features, scores.anomaly, watch_drift=self.trains or bool(group))
        if group is not None:
            self._share_drift(group)
        self.learner.advance(txns)
        self.counts["scored"] += len(events)
        self.counts["flagged"] += int(flags.sum())

    def _share_drift(self, group: GroupState) -> None:
        """Several processors: drift another one saw is the trainer's too; drift seen here by
        a processor that does not fit the models goes to the trainer (and it watches anew)."""
        drift, model = self.scorer.drift, self.scorer.model
        if self.trains:
            if group.drift_in >= model.version and drift.seen_elsewhere():
                log.info("drift in another processor's anomaly scores: a refit is due")
            group.drift_in = 0
        elif drift.detected:
            group.drift_seen(model.version)
            drift.new_model()
            log.info("drift in the anomaly scores of model v%d: told the trainer", model.version)

    def _collect_refits(self) -> BatchResult:
        """A new batch result with the models of finished refits (supervised first), timed."""
        result = BatchResult()
        started = time.perf_counter()
        self.trainer.swap_in(result)
        self.scorer.swap_in(result)
        result.refit_s = time.perf_counter() - started
        return result

    def _start_refits(self, result: BatchResult) -> None:
        """Start the refits that are due (supervised first), timed for the batch."""
        if not self.trains:
            return
        started = time.perf_counter()
        self.trainer.maybe_refit()
        self.scorer.maybe_refit()
        result.refit_s += time.perf_counter() - started
