"""The anomaly model over the stream: scoring, its training window, its refits, drift.

The Isolation Forest scores every event; the newest feature vectors are kept as the next refit's
training window. A refit runs in the refit worker (:mod:`stream_processor.refit`) when enough
events came (``refit_every_events``, not sooner than ``refit_min_interval_s`` after the last), when
``refit_interval_s`` passed, or early when ADWIN sees the scores drift; the next batch swaps the
new model in. Models are numbered when swapped in, so a failed fit leaves no gap in the versions.
It flags the top ``1 - flag_quantile`` of its recent scores (:class:`AlertBudget`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np

from fraudstream.settings import Settings
from stream_processor import compat
from stream_processor.contracts import BatchResult
from stream_processor.features import ANOMALY_COLUMNS, FEATURE_NAMES
from stream_processor.model import (
    FIT_ANOMALY,
    FIT_ANOMALY_STORED,
    FittedModel,
    Model,
    SupervisedModel,
)
from stream_processor.refit import PickledFuture, RefitRunner

log = logging.getLogger(__name__)

MIN_EVENTS_BEFORE_DRIFT_REFIT = 1000  # a drift refit trains on at least this many new events


class Versions:
    """The next model version: the anomaly and the supervised models share one sequence, this
    processor's own, or, with several processors, the database's (``draw``)."""

    def __init__(self, start: int = 1):
        self.next = start
        self.draw: Callable[[], int] | None = None  # several processors: the shared sequence

    def take(self) -> int:
        version = self.draw() if self.draw is not None else self.next
        self.next = max(self.next, version + 1)
        return version


class BackgroundFit:
    """One fit at a time in the refit worker: started, then its model taken (and numbered)."""

    def __init__(self, what: str, versions: Versions):
        self.what = what  # for the log: "refit", "supervised refit"
        self.versions = versions
        self.future: PickledFuture | None = None  # set to start a fit

    @property
    def running(self) -> bool:
        """Started and not taken yet (it may have finished)."""
        return self.future is not None

    def take(self) -> Model | None:
        """The model of a finished fit, once, numbered; None while it runs, or if it failed
        (logged: the current model stays)."""
        future = self.future
        if future is None or not future.done():
            return None
        self.future = None
        try:
            model = future.result()
        except Exception:
            log.exception("%s failed; keeping the current model", self.what)
            return None
        if model is None:  # it found too little to fit on
            return None
        return replace(model, version=self.versions.take())

    def wait(self, timeout_s: float) -> None:
        if self.future is not None:
            self.future.exception(timeout=timeout_s)


class GroupCount:
    """Several processors share the database (its ``url``): the trainer fits on what the whole
    group stored, read there by the refit worker, and counts towards the next refit what the
    group's writes count (``stream_processor.sink.GroupCounts``, read every ``MODEL_SYNC_S``).

    Counted from the first reading when a model exists (it was fit on what came before); from
    zero without one."""

    def __init__(self, url: str):
        self.url = url
        self._at_fit: int | None = None  # the group's count when the last fit started

    def since_fit(self, total: int, *, model_exists: bool) -> int:
        """What the group counted since the last fit started, at ``total`` so far."""
        if self._at_fit is None:
            self._at_fit = total if model_exists else 0
        return total - self._at_fit

    def fit_started(self, since_fit: int) -> None:
        """A fit on what the group stored started, ``since_fit`` after the last one."""
        assert self._at_fit is not None, "a fit before the group's count was read"
        self._at_fit += since_fit


class DriftWatch:
    """Watches the current model's anomaly scores (ADWIN; off when ``delta`` is 0) and keeps
    what it saw until a refit starts; a new model starts a new baseline."""

    def __init__(self, delta: float, counts: dict[str, int]):
        self.delta = delta
        self.counts = counts
        self.new_model()

    def watch(self, scores: np.ndarray) -> None:
        if self._adwin is None or self.detected:
            return
        for value in scores.tolist():
            if self._adwin.update(value):
                self.detected = True
                self.counts["drifts"] += 1
                log.info("drift in the anomaly scores (ADWIN): a refit is due")
                return

    def new_model(self) -> None:
        self._adwin = compat.adwin(self.delta) if self.delta > 0 else None
        self.detected = False

    def seen_elsewhere(self) -> bool:
        """Another processor saw drift in this model's scores: a refit is due here too. False
        when this watch had seen it already."""
        if self.detected:
            return False
        self.detected = True
        return True

    def refit_started(self) -> None:
        """A refit on the drift seen started; the watch goes on with the same baseline until
        the new model comes."""
        self.detected = False


class TrainingWindow:
    """A ring buffer of the newest feature vectors (FEATURE_NAMES): the next refit's data."""

    def __init__(self, size: int):
        self._rows = np.empty((max(size, 1), len(FEATURE_NAMES)))
        self._pos = self._len = 0

    def add(self, features: np.ndarray) -> None:
        size, n = len(self._rows), len(features)
        newest = features[-size:]  # the older rows would be overwritten by this batch
        # their slots, after the rows this batch overwrote itself, wrapping around to the start
        self._rows[(self._pos + n - len(newest) + np.arange(len(newest))) % size] = newest
        self._pos = (self._pos + n) % size
        self._len = min(size, self._len + n)

    def anomaly_inputs(self) -> np.ndarray:
        """A copy of the window's anomaly-model columns (its rows in ring order)."""
        return self._rows[: self._len, ANOMALY_COLUMNS]


class AlertBudget:
    """The Isolation Forest flags the top ``1 - quantile`` of the events it scores now, whatever
    it was fit on: its threshold is that quantile of the current model's last ``window`` scores
    (once it has ``min_scores`` of them; until then the model's own, from its training scores).
    A model fit on events unlike today's (the first one, fit while every account was new; any
    one fit before the feed changed) would otherwise flag a share of the feed that no analyst
    team can read: the threshold follows the feed, not the fit."""

    def __init__(self, quantile: float, window: int = 20_000, min_scores: int = 1_000):
        self.quantile = quantile
        self.min_scores = min_scores
        self._scores = np.empty(window)  # a ring: the newest ``_len`` scores, next at ``_at``
        self._len = self._at = 0
        self._version = 0  # the model whose scores these are
        self.in_effect: float | None = None  # the last threshold given (the health page)

    def threshold(self, model: FittedModel) -> float:
        """The threshold for the next batch ``model`` scores: from its recent scores."""
        if model.version != self._version:  # another model's scores are on another scale
            self._version, self._len, self._at = model.version, 0, 0
        if self._len < self.min_scores:
            self.in_effect = model.threshold
        else:
            self.in_effect = float(np.quantile(self._scores[: self._len], self.quantile))
        return self.in_effect

    def add(self, scores: np.ndarray) -> None:
        """The scores of a batch, by the model of the last :meth:`threshold`."""
        ring = self._scores
        size = len(ring)
        scores = scores[-size:]  # a batch larger than the ring: its newest
        first = min(len(scores), size - self._at)  # up to the ring's end, the rest from its start
        ring[self._at : self._at + first] = scores[:first]
        ring[: len(scores) - first] = scores[first:]
        self._at = (self._at + len(scores)) % size
        self._len = min(size, self._len + len(scores))


@dataclass(slots=True)
class Scores:
    """A batch's scores by the anomaly model and the supervised one if any, and the verdict."""

    model: FittedModel
    supervised: SupervisedModel | None
    anomaly: np.ndarray  # the anomaly scores
    threshold: float  # the anomaly threshold in effect (AlertBudget)
    anomalous: np.ndarray  # bool: above it
    inputs: np.ndarray  # SUPERVISED_FEATURE_NAMES: the features, label features and the score
    probabilities: np.ndarray | None  # the supervised model's P(fraud)
    flags: np.ndarray  # anomalous, or P(fraud) at the supervised threshold
    risks: np.ndarray  # P(fraud) with a supervised model, else the anomaly score


class AnomalyScorer:
    """The Isolation Forest over the stream: scores batches, keeps their features as the next
    training window, and refits it in the background on schedule or on drift."""

    def __init__(
        self,
        settings: Settings,
        refits: RefitRunner,
        versions: Versions,
        counts: dict[str, int],
        model: FittedModel | None = None,
    ):
        self.settings = settings
        self.refits = refits
        self.versions = versions
        self.model = model
        self.window = TrainingWindow(settings.training_window)
        # events scored (by the group: group_scored()) since the last fit started
        self.since_fit = 0
        self.group: GroupCount | None = None  # several processors: fit on what they stored
        self.last_fit = time.monotonic()
        self.refit = BackgroundFit("refit", versions)
        self.drift = DriftWatch(settings.drift_delta, counts)
        self.budget = AlertBudget(settings.flag_quantile)

    def score(
        self, features: np.ndarray, label_features: np.ndarray, supervised: SupervisedModel | None
    ) -> Scores:
        """Both models' scores of a batch (``label_features``: LabelMemory's, for the
        supervised model)."""
        model = self.model
        assert model is not None
        scores = model.score(features[:, ANOMALY_COLUMNS])
        threshold = self.budget.threshold(model)
        self.budget.add(scores)
        anomalous = scores > threshold
        inputs = np.hstack([features, label_features, scores[:, None]])
        if supervised is None:
            return Scores(model=model, supervised=None, anomaly=scores, threshold=threshold,
                          anomalous=anomalous, inputs=inputs, probabilities=None,
                          flags=anomalous, risks=scores)  # fmt: skip
        probabilities = supervised.score(inputs)
        return Scores(model=model, supervised=supervised, anomaly=scores, threshold=threshold,
                      anomalous=anomalous, inputs=inputs, probabilities=probabilities,
                      flags=anomalous | (probabilities >= supervised.threshold),
                      risks=probabilities)  # fmt: skip

    def observe(self, features: np.ndarray, scores: np.ndarray, *, watch_drift: bool) -> None:
        """A scored batch: its features join the training window, its scores the drift watch
        (``watch_drift``: where this processor fits the models)."""
        if self.group is None:  # else the group's stored events are the window
            self.window.add(features)
            self.since_fit += len(features)
        if watch_drift:
            self.drift.watch(scores)

    def fit_first(self, features: np.ndarray, result: BatchResult) -> FittedModel:
        """Fit the first model on ``features`` (the held events), wait for it and install it."""
        inputs = features[:, ANOMALY_COLUMNS]  # fit in the refit worker too; this batch waits
        model = self._fit(self.refits.run, FIT_ANOMALY, inputs, version=self.versions.take(),
                          reason="initial")  # fmt: skip
        self._install(model, result)
        return model

    def _fit(self, run, fit: str, *training, version: int, reason: str):
        """The anomaly fit ``fit`` on ``training`` (the window, or where the group's is stored)
        by ``run`` (the refit runner's ``run`` or ``submit``)."""
        s = self.settings
        return run(
            fit,
            *training,
            version=version,
            reason=reason,
            flag_quantile=s.flag_quantile,
            n_estimators=s.n_estimators,
            seed=s.model_seed,
        )

    def group_scored(self, total: int) -> None:
        """The group has stored ``total`` events so far: the count towards the next refit."""
        assert self.group is not None
        self.since_fit = self.group.since_fit(total, model_exists=self.model is not None)

    def maybe_refit(self) -> None:
        if self.model is None or self.refit.running or self.since_fit == 0:
            return
        reason = self._due()
        if reason is None:
            return
        if self.group is None:
            fit, training = FIT_ANOMALY, (self.window.anomaly_inputs(),)
        else:
            self.group.fit_started(self.since_fit)
            fit, training = FIT_ANOMALY_STORED, (self.group.url, self.settings.training_window)
        self.since_fit = 0
        self.last_fit = time.monotonic()
        self.drift.refit_started()
        # version 0: numbered when swapped in
        self.refit.future = self._fit(self.refits.submit, fit, *training, version=0,
                                      reason=reason)  # fmt: skip

    def _due(self) -> str | None:
        """Why a refit is due now (drift, events, interval), else None."""
        s = self.settings
        if self.drift.detected and self.since_fit >= MIN_EVENTS_BEFORE_DRIFT_REFIT:
            return "drift"
        since_last = time.monotonic() - self.last_fit
        events_due = s.refit_every_events and self.since_fit >= s.refit_every_events
        if events_due and since_last >= s.refit_min_interval_s:
            return "events"
        if s.refit_interval_s and since_last >= s.refit_interval_s:
            return "interval"
        return None

    def swap_in(self, result: BatchResult) -> None:
        model = self.refit.take()
        if model is None:
            return
        self._install(model, result)
        log.info(
            "model v%d swapped in (%s refit on %d events, threshold %.4f, %.2f s)",
            model.version, model.reason, model.training_rows, model.threshold, model.fit_seconds,
        )  # fmt: skip

    def adopt(self, model: FittedModel) -> None:
        """Score with a model another processor fitted (and recorded)."""
        self.model = model
        self.since_fit = 0
        self.last_fit = time.monotonic()
        self.drift.new_model()

    def _install(self, model: FittedModel, result: BatchResult) -> None:
        self.model = model  # one reference assignment: the swap is atomic for the batch path
        self.versions.next = model.version + 1
        self.last_fit = time.monotonic()
        self.drift.new_model()  # a new model, a new baseline
        result.models.append(model)
