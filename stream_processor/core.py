"""The transport-free scoring core: a batch of raw Kafka values in; rows, alerts, dead letters out.

No Kafka and no database in here: a runtime feeds :meth:`ScoringCore.process` with
:class:`RawMessage` lists, writes the :class:`BatchResult` in one database transaction, publishes
its alerts and dead letters, and only then commits its offsets.

Before the first model exists, valid events are *held* (``BatchResult.pending_add``, which the
runtime stores in ``pending_events`` so a crash loses nothing). The first model is fit on them
once ``warmup_events`` are held, or ``warmup_idle_s`` after the last event (:meth:`tick`); they are
then scored like every later event. No event is ever stored unscored.
"""

from __future__ import annotations

import heapq
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

import numpy as np
import orjson

from fraudstream.schema import InvalidRecord, Transaction, decode, format_timestamp
from fraudstream.settings import Settings
from stream_processor import compat
from stream_processor.features import (
    ANOMALY_COLUMNS,
    FEATURE_NAMES,
    SUPERVISED_FEATURE_NAMES,
    AccountStates,
    LabelMemory,
)
from stream_processor.labels import Label, decode_label
from stream_processor.model import FIT_ANOMALY, FIT_SUPERVISED, FittedModel, SupervisedModel
from stream_processor.reasons import explain
from stream_processor.refit import PickledFuture, RefitRunner

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
    per row: Python's float ``repr`` costs about 250 ns a number (a timeit of 1,000 rows of 30
    numbers: 7.8 us a row with ``%r``, 2.3 with orjson and a ``%s`` template, 1.7 joining the
    pieces; docs/benchmarks.md). A number may be written differently from ``repr`` (``1e-6``,
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


# RawMessage and HeldEvent: one of each per event, not frozen (a frozen dataclass sets each
# field through object.__setattr__: 0.48 us to make a RawMessage, 0.13 as a plain one; a
# timeit). Nothing changes them after they are made.
@dataclass(slots=True)
class RawMessage:
    """One consumed Kafka record, as any runtime sees it."""

    value: bytes | None
    key: bytes | None = None
    topic: str = "transactions"
    partition: int = 0
    offset: int = 0
    produced_at: float | None = None  # epoch s, from the producer's header


@dataclass(slots=True)
class HeldEvent:
    txn: Transaction
    partition: int | None
    offset: int | None
    produced_at: float | None


# The transactions table's columns, in its order (tests/test_core.py checks it against the
# table): a stored row is a tuple of these, handed to SQLite as it is.
ROW_COLUMNS = (
    "transaction_id", "account_id", "amount", "merchant", "timestamp", "location", "is_fraud",
    "extras", "score", "threshold", "supervised_score", "risk_score", "is_flagged", "reasons",
    "model_version", "supervised_version", "features", "kafka_partition", "kafka_offset",
    "produced_at", "scored_at", "alert_published_at",
)  # fmt: skip


@dataclass
class BatchResult:
    # For the transactions table, a tuple a row in ROW_COLUMNS order (a dictionary a row and
    # the sink's mapping back to a tuple cost 0.8 us an event, a tuple 0.1: a timeit)
    row_values: list[tuple] = field(default_factory=list)
    alerts: list[dict] = field(default_factory=list)  # for the alerts topic
    dead_letters: list[dict] = field(default_factory=list)  # for dead_letters and the DLQ
    pending_add: list[dict] = field(default_factory=list)  # held until the first fit
    pending_clear: bool = False  # the held events were scored: empty pending_events
    models: list[FittedModel | SupervisedModel] = field(default_factory=list)  # to record
    duplicate_ids: list[str] = field(default_factory=list)  # already stored or held
    labels: list[dict] = field(default_factory=list)  # for the labels table
    labels_released: dict[str, int] = field(default_factory=dict)  # id -> learned (1) or not
    # Seconds this batch spent on refits: starting one (copying and sending the training
    # window), swapping one in (receiving and installing it), recording it (the sink adds that).
    refit_s: float = 0.0

    @property
    def rows(self) -> list[dict]:
        """The rows for the transactions table as dictionaries (column -> value)."""
        return [dict(zip(ROW_COLUMNS, values, strict=True)) for values in self.row_values]

    def __bool__(self) -> bool:
        return bool(
            self.row_values
            or self.dead_letters
            or self.pending_add
            or self.pending_clear
            or self.models
            or self.labels
            or self.labels_released
        )


@dataclass(frozen=True, slots=True)
class LabelledEvent:
    """What the supervised model learns from once the event's label arrives."""

    merchant: str
    account_id: str
    features: np.ndarray  # SUPERVISED_FEATURE_NAMES, as computed when the event was scored


def _json(value) -> str:
    """A JSON text of a decoded event's extra fields: orjson (a timeit of the shipped data's two
    extras: 0.13 us, json.dumps 3.1 us); json.dumps for what orjson refuses (integers beyond 64
    bits)."""
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


class ScoringCore:
    """Features, scoring, thresholding and reasons over batches; refits in the background."""

    def __init__(
        self,
        settings: Settings,
        known_ids: Callable[[list[str]], set[str]] = lambda ids: set(),
        lookup_events: Callable[[list[str]], dict[str, LabelledEvent | None]] = lambda ids: {},
        *,
        model: FittedModel | None = None,
        next_version: int = 1,
        held: Iterable[HeldEvent] = (),
        history: Iterable[Transaction] = (),
        supervised: SupervisedModel | None = None,
        label_history: Iterable[tuple[LabelledEvent, Label]] = (),
        queued_labels: Iterable[Label] = (),
        account_events: Callable[[list[str]], list[Transaction]] = lambda ids: [],
        refits: RefitRunner | None = None,
    ):
        self.settings = settings
        self.known_ids = known_ids
        self.lookup_events = lookup_events
        self.account_events = account_events  # stored events of evicted accounts, oldest first
        self.model = model
        self.next_version = max(next_version, model.version + 1 if model else 1)
        self.states = AccountStates(settings.max_accounts, settings.account_history)
        self.states.learn(list(history))
        self.held: list[HeldEvent] = list(held)
        self._held_ids = {h.txn.transaction_id for h in self.held}
        self._window = np.empty((max(settings.training_window, 1), len(FEATURE_NAMES)))
        self._window_pos = 0
        self._window_len = 0
        self._since_fit = 0
        self._last_fit = time.monotonic()
        self._last_event = time.monotonic()
        self._refit: PickledFuture | None = None
        self._refit_reason = ""
        self.refits = refits or RefitRunner()
        self.counts = {
            "scored": 0, "flagged": 0, "dead_letters": 0, "duplicates": 0, "labels": 0,
            "labels_learned": 0, "drifts": 0, "accounts_rebuilt": 0,
        }  # fmt: skip
        # Delayed labels: what they teach, the events waiting for one, the supervised model.
        self.supervised = supervised
        if supervised is not None:
            self.next_version = max(self.next_version, supervised.version + 1)
        self.label_memory = LabelMemory()
        self._batch_events: dict[str, LabelledEvent] = {}  # scored in the batch in progress
        size = max(settings.supervised_window, 1)
        self._sup_x = np.empty((size, len(SUPERVISED_FEATURE_NAMES)))
        self._sup_y = np.zeros(size, dtype=np.int8)
        self._sup_pos = self._sup_len = 0
        self._labels_since_fit = 0
        self._sup_refit: PickledFuture | None = None
        for event, label in label_history:
            self._learn_label(event, label)
        self._labels_since_fit = 0 if supervised is not None else self._sup_len
        # Labels wait here until the stream's event time reaches their labelled_at: a label
        # never teaches anything about events that happened before it was known.
        self._label_queue: list[tuple[float, int, Label]] = []
        # Released labels whose event was not scored yet (another partition can lag behind):
        # learned right after that event is scored, never before.
        self._orphans: OrderedDict[str, Label] = OrderedDict()
        self._label_seq = 0
        self._labels_in_batch = False
        self.clock = max((t.event_time for t in history), default=float("-inf"))
        for label in queued_labels:
            self._queue_label(label)
        # Drift: ADWIN watches the anomaly scores of the current model.
        self._adwin = ScoreDrift(settings.drift_delta) if settings.drift_delta > 0 else None
        self._drift = False

    # -- the batch path ------------------------------------------------------------------------

    def process(self, messages: Sequence[RawMessage]) -> BatchResult:
        """Decode, validate, de-duplicate, score and explain one batch."""
        result = BatchResult()
        self._collect_refit(result)
        fresh: list[HeldEvent] = []
        batch_ids: set[str] = set()
        label_messages = []
        for msg in messages:
            if msg.topic == self.settings.labels_topic:
                label_messages.append(msg)
                continue
            try:
                txn = decode(msg.value)
            except InvalidRecord as exc:
                result.dead_letters.append(_dead_letter(msg, exc))
                continue
            if txn.transaction_id in batch_ids:
                result.duplicate_ids.append(txn.transaction_id)
                continue
            batch_ids.add(txn.transaction_id)
            fresh.append(HeldEvent(txn, msg.partition, msg.offset, msg.produced_at))
        self._labels_in_batch = bool(label_messages)
        if fresh:
            self._last_event = time.monotonic()
            known = self.known_ids(list(batch_ids)) | (batch_ids & self._held_ids)
            if known:
                result.duplicate_ids.extend(known)
                fresh = [h for h in fresh if h.txn.transaction_id not in known]
        if self.model is None:
            self._hold(fresh, result)
            if len(self.held) >= self.settings.warmup_events:
                self._fit_initial(result)
        else:
            self._score(fresh, result)
        if label_messages:
            self._take_labels(label_messages, result)
        self._release_labels(result)
        self._batch_events = {}
        self._maybe_refit(result)
        self.counts["dead_letters"] += len(result.dead_letters)
        self.counts["duplicates"] += len(result.duplicate_ids)
        return result

    def tick(self) -> BatchResult:
        """Work due without new events: the idle first fit, and swapping in a finished refit."""
        result = BatchResult()
        self._collect_refit(result)
        idle = time.monotonic() - self._last_event
        if self.model is None and self.held and idle >= self.settings.warmup_idle_s:
            self._fit_initial(result)
        self._maybe_refit(result)
        return result

    def wait_for_refit(self, timeout_s: float = 60.0) -> BatchResult:
        """Block until a running refit finishes and swap it in (tests, shutdown)."""
        for future in (self._refit, self._sup_refit):
            if future is not None:
                future.exception(timeout=timeout_s)
        result = BatchResult()
        self._collect_refit(result)
        return result

    def close(self) -> None:
        self.refits.close()

    # -- internals -----------------------------------------------------------------------------

    def _hold(self, fresh: list[HeldEvent], result: BatchResult) -> None:
        for h in fresh:
            result.pending_add.append(
                {
                    "transaction_id": h.txn.transaction_id,
                    "seq": len(self.held),
                    "event": h.txn.encode().decode(),
                    "kafka_partition": h.partition,
                    "kafka_offset": h.offset,
                    "produced_at": h.produced_at,
                }
            )
            self.held.append(h)
            self._held_ids.add(h.txn.transaction_id)

    def _fit_initial(self, result: BatchResult) -> None:
        held, self.held, self._held_ids = self.held, [], set()
        txns = [h.txn for h in held]
        features = self._features(txns)
        model = self.refits.run(  # in the refit worker too; this batch waits for it
            FIT_ANOMALY,
            features[:, ANOMALY_COLUMNS],
            version=self.next_version,
            reason="initial",
            flag_quantile=self.settings.flag_quantile,
            n_estimators=self.settings.n_estimators,
            seed=self.settings.model_seed,
        )
        self._install(model, result)
        log.info("first model v%d fit on %d held events", model.version, len(held))
        self._emit(held, features, result)
        self._since_fit = 0  # the model was fit on exactly these: no refit due for them
        result.pending_clear = True

    def _score(self, fresh: list[HeldEvent], result: BatchResult) -> None:
        if not fresh:
            return
        features = self._features([h.txn for h in fresh])
        self._emit(fresh, features, result)

    def _features(self, txns: list[Transaction]) -> np.ndarray:
        missing = self.states.missing({t.account_id for t in txns})
        if missing:  # accounts evicted from memory come back as their stored events rebuild them
            self.counts["accounts_rebuilt"] += self.states.restore(self.account_events(missing))
        return self.states.transform(txns)

    def _emit(self, events: list[HeldEvent], features: np.ndarray, result: BatchResult) -> None:
        model = self.model
        assert model is not None
        txns = [h.txn for h in events]
        scores = model.score(features[:, ANOMALY_COLUMNS])
        anomaly_flags = scores > model.threshold
        full = np.hstack([features, self.label_memory.features(txns), scores[:, None]])
        supervised = self.supervised
        if supervised is not None:
            probabilities = supervised.score(full)
            supervised_flags = probabilities >= supervised.threshold
            flags = anomaly_flags | supervised_flags
            risks = probabilities
        else:
            probabilities = supervised_flags = None
            flags, risks = anomaly_flags, scores
        now = time.time()
        # Only a label due in this batch can need an event of this batch right away; with none
        # queued or waiting (the pipeline without labels), nothing is kept.
        keep_events = self._labels_in_batch or bool(self._label_queue) or bool(self._orphans)
        features_text = features_json(full)
        # Python floats and bools once per batch: a NumPy scalar a row costs ~0.1 us each
        score_list, flag_list, risk_list = scores.tolist(), flags.tolist(), risks.tolist()
        probability_list = [None] * len(events) if probabilities is None else probabilities.tolist()
        threshold = model.threshold
        supervised_version = supervised.version if supervised else None
        for i, h in enumerate(events):
            txn, score, flagged = h.txn, score_list[i], flag_list[i]
            probability = probability_list[i]
            reasons = None
            if flagged:
                reasons = explain(
                    txn, full[i], score, model.threshold, self.states.get(txn.account_id),
                    anomalous=bool(anomaly_flags[i]), probability=probability,
                    supervised_threshold=supervised.threshold if supervised else None,
                )  # fmt: skip
            row = (  # ROW_COLUMNS
                txn.transaction_id,
                txn.account_id,
                txn.amount,
                txn.merchant,
                db_timestamp(txn.timestamp),
                txn.location,
                txn.is_fraud,
                _json(txn.extras) if txn.extras else None,
                score,
                threshold,
                probability,
                risk_list[i],
                int(flagged),
                json.dumps(reasons, ensure_ascii=False) if reasons else None,
                model.version,
                supervised_version,
                features_text[i],
                h.partition,
                h.offset,
                h.produced_at,
                now,
                None,  # alert_published_at
            )
            result.row_values.append(row)
            if flagged:
                result.alerts.append(alert_payload(dict(zip(ROW_COLUMNS, row, strict=True))))
            if not keep_events:
                continue
            event = LabelledEvent(txn.merchant, txn.account_id, full[i])
            label = self._orphans.pop(txn.transaction_id, None) if self._orphans else None
            if label is None:
                self._batch_events[txn.transaction_id] = event
            else:  # its label came first: learn from it now that the event has its score
                self._learn_label(event, label)
                self.counts["labels_learned"] += 1
                result.labels_released.setdefault(txn.transaction_id, 1)
        self._remember(features)
        self._watch_drift(scores)
        self.clock = max(self.clock, max(t.timestamp for t in txns).timestamp())
        self.counts["scored"] += len(events)
        self.counts["flagged"] += int(flags.sum())

    # -- delayed labels ------------------------------------------------------------------------

    def _take_labels(self, messages: list[RawMessage], result: BatchResult) -> None:
        now = time.time()
        for msg in messages:
            try:
                label = decode_label(msg.value)
            except InvalidRecord as exc:
                result.dead_letters.append(_dead_letter(msg, exc))
                continue
            self.counts["labels"] += 1
            result.labels.append(
                {
                    "transaction_id": label.transaction_id,
                    "is_fraud": label.is_fraud,
                    "labelled_at": db_timestamp(label.labelled_at),
                    "received_at": now,
                    "learned": None,  # set when the event clock reaches labelled_at
                }
            )
            self._queue_label(label)

    def _queue_label(self, label: Label) -> None:
        self._label_seq += 1
        heapq.heappush(self._label_queue, (label.labelled_at.timestamp(), self._label_seq, label))

    def _release_labels(self, result: BatchResult) -> None:
        """Learn from the queued labels whose labelled_at the event clock has reached.

        The scored event comes from this batch, else from the database (``lookup_events``);
        a label whose event was not scored yet waits for it (bounded by LABEL_MEMORY).
        """
        queue = self._label_queue
        due: list[Label] = []
        while queue and queue[0][0] <= self.clock:
            due.append(heapq.heappop(queue)[2])
        if not due:
            return
        missing = [lb.transaction_id for lb in due if lb.transaction_id not in self._batch_events]
        stored = self.lookup_events(missing) if missing else {}
        for label in due:
            tid = label.transaction_id
            if tid in result.labels_released:
                continue  # a repeated label: the first one taught already
            event = self._batch_events.get(tid) or stored.get(tid, MISSING)
            if event is None:
                continue  # stored, and already learned from an earlier label
            if event is MISSING:
                self._orphans[tid] = label
                if len(self._orphans) > self.settings.label_memory:
                    self._orphans.popitem(last=False)
                continue
            self._learn_label(event, label)
            self.counts["labels_learned"] += 1
            result.labels_released[tid] = 1

    @property
    def queued_labels(self) -> int:
        return len(self._label_queue)

    def _learn_label(self, event: LabelledEvent, label: Label) -> None:
        self.label_memory.add(
            event.merchant, event.account_id, label.is_fraud, label.labelled_at.timestamp()
        )
        size = len(self._sup_y)
        self._sup_x[self._sup_pos] = event.features
        self._sup_y[self._sup_pos] = label.is_fraud
        self._sup_pos = (self._sup_pos + 1) % size
        self._sup_len = min(size, self._sup_len + 1)
        self._labels_since_fit += 1

    def _watch_drift(self, scores: np.ndarray) -> None:
        if self._adwin is None or self._drift:
            return
        for value in scores.tolist():
            if self._adwin.update(value):
                self._drift = True
                self.counts["drifts"] += 1
                log.info("drift in the anomaly scores (ADWIN): refitting early")
                return

    def _remember(self, features: np.ndarray) -> None:
        """Keep the newest feature vectors in a ring buffer: the next refit's training window."""
        size = len(self._window)
        for start in range(0, len(features), size):
            chunk = features[start : start + size]
            end = self._window_pos + len(chunk)
            if end <= size:
                self._window[self._window_pos : end] = chunk
            else:
                split = size - self._window_pos
                self._window[self._window_pos :] = chunk[:split]
                self._window[: end - size] = chunk[split:]
            self._window_pos = end % size
            self._window_len = min(size, self._window_len + len(chunk))
        self._since_fit += len(features)

    def _maybe_refit(self, result: BatchResult) -> None:
        started = time.perf_counter()
        self._start_refit()
        result.refit_s += time.perf_counter() - started

    def _start_refit(self) -> None:
        self._maybe_refit_supervised()
        if self.model is None or self._refit is not None or self._since_fit == 0:
            return
        s = self.settings
        if self._drift and self._since_fit >= MIN_EVENTS_BEFORE_DRIFT_REFIT:
            reason = "drift"
        elif (
            s.refit_every_events
            and self._since_fit >= s.refit_every_events
            and time.monotonic() - self._last_fit >= s.refit_min_interval_s
        ):
            reason = "events"
        elif s.refit_interval_s and time.monotonic() - self._last_fit >= s.refit_interval_s:
            reason = "interval"
        else:
            return
        training = self._window[: self._window_len, ANOMALY_COLUMNS]  # a copy
        self._since_fit = 0
        self._last_fit = time.monotonic()
        self._refit_reason = reason
        self._drift = False
        self._refit = self.refits.submit(
            FIT_ANOMALY,
            training,
            version=0,  # numbered when swapped in, so a failed fit leaves no gap
            reason=reason,
            flag_quantile=s.flag_quantile,
            n_estimators=s.n_estimators,
            seed=s.model_seed,
        )

    def _maybe_refit_supervised(self) -> None:
        s = self.settings
        if self._sup_refit is not None or self._labels_since_fit < s.supervised_refit_labels:
            return
        y = self._sup_y[: self._sup_len]
        frauds = int(y.sum())
        if frauds < s.supervised_min_frauds or frauds == len(y):
            return
        self._labels_since_fit = 0
        self._sup_refit = self.refits.submit(
            FIT_SUPERVISED,
            self._sup_x[: self._sup_len].copy(),
            y.copy(),
            version=0,
            threshold=s.supervised_flag_threshold,
            seed=s.model_seed,
        )

    def _finished(self, name: str, what: str):
        """The model a finished background fit (attribute ``name``) produced, else None."""
        future = getattr(self, name)
        if future is None or not future.done():
            return None
        setattr(self, name, None)
        try:
            return future.result()
        except Exception:
            log.exception("%s failed; keeping the current model", what)
            return None

    def _collect_refit(self, result: BatchResult) -> None:
        started = time.perf_counter()
        self._swap_in(result)
        result.refit_s += time.perf_counter() - started

    def _swap_in(self, result: BatchResult) -> None:
        supervised = self._finished("_sup_refit", "supervised refit")
        if supervised is not None:
            supervised = replace(supervised, version=self.next_version)
            self.supervised = supervised
            self.next_version = supervised.version + 1
            result.models.append(supervised)
            log.info(
                "supervised model v%d swapped in (%d labelled events, %d frauds, %.2f s)",
                supervised.version, supervised.training_rows, supervised.frauds,
                supervised.fit_seconds,
            )  # fmt: skip
        model = self._finished("_refit", "refit")
        if model is None:
            return
        model = replace(model, version=self.next_version)
        self._install(model, result)
        log.info(
            "model v%d swapped in (%s refit on %d events, threshold %.4f, %.2f s)",
            model.version, model.reason, model.training_rows, model.threshold, model.fit_seconds,
        )  # fmt: skip

    def _install(self, model: FittedModel, result: BatchResult) -> None:
        self.model = model  # one reference assignment: the swap is atomic for the batch path
        self.next_version = model.version + 1
        self._last_fit = time.monotonic()
        if self._adwin is not None:
            self._adwin = ScoreDrift(self.settings.drift_delta)  # a new model, a new baseline
        self._drift = False
        result.models.append(model)


class ScoreDrift:
    """river's ADWIN (``river.drift.ADWIN``, its defaults) on the anomaly scores, built by
    :func:`stream_processor.compat.adwin` so that the processor imports no scikit-learn."""

    def __init__(self, delta: float):
        self._window = compat.adwin(delta)

    def update(self, value: float) -> bool:
        """Add a score; True when the window detects a change."""
        return self._window.update(value)


MISSING = object()  # lookup_events did not find the id
MIN_EVENTS_BEFORE_DRIFT_REFIT = 1000  # a drift refit trains on at least this many new events


def alert_payload(row: dict) -> dict:
    """The JSON object published to the alerts topic for a flagged row."""
    return {
        "transaction_id": row["transaction_id"],
        "account_id": row["account_id"],
        "amount": row["amount"],
        "merchant": row["merchant"],
        "timestamp": row["timestamp"].replace(" ", "T") + "Z",
        "location": row["location"],
        "score": round(row["score"], 6),
        "threshold": round(row["threshold"], 6),
        "supervised_score": (
            None if row.get("supervised_score") is None else round(row["supervised_score"], 6)
        ),
        "risk_score": round(row["risk_score"], 6) if row.get("risk_score") is not None else None,
        "model_version": row["model_version"],
        "reasons": json.loads(row["reasons"]) if row["reasons"] else [],
        "scored_at": row["scored_at"],
    }


def _dead_letter(msg: RawMessage, exc: InvalidRecord) -> dict:
    return {
        "source_topic": msg.topic,
        "source_partition": msg.partition,
        "source_offset": msg.offset,
        "message_key": msg.key,
        "message_value": msg.value,
        "error_field": exc.field,
        "error": exc.reason,
        "received_at": time.time(),
    }
