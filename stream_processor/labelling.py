"""Delayed labels: what confirmed outcomes teach, and the supervised model they train.

A label waits until the stream's event time reaches its ``labelled_at`` (a label never teaches
anything about events that happened before it was known), then is learned from its event as it
was scored: into the label memory (the merchant and account fraud features) and the supervised
training window, which refits the supervised model in the background.
"""

from __future__ import annotations

import heapq
import itertools
import logging
from collections import OrderedDict
from collections.abc import Iterable

import numpy as np

from fraudstream.schema import Transaction
from fraudstream.settings import Settings
from stream_processor.contracts import BatchResult, EventStore, HeldEvent, LabelledEvent
from stream_processor.features import SUPERVISED_FEATURE_NAMES, LabelMemory
from stream_processor.group import GroupState
from stream_processor.labels import Label
from stream_processor.model import FIT_SUPERVISED, FIT_SUPERVISED_STORED, SupervisedModel
from stream_processor.refit import RefitRunner
from stream_processor.scoring import BackgroundFit, GroupCount, Versions

log = logging.getLogger(__name__)

MISSING = object()  # the store did not find the id


class SupervisedTrainer:
    """The supervised model and its training window: the newest labelled events, a refit in the
    background every ``supervised_refit_labels`` new ones once enough frauds are known."""

    def __init__(
        self,
        settings: Settings,
        refits: RefitRunner,
        versions: Versions,
        model: SupervisedModel | None = None,
    ):
        self.settings = settings
        self.refits = refits
        self.model = model
        size = max(settings.supervised_window, 1)
        self._x = np.empty((size, len(SUPERVISED_FEATURE_NAMES)))
        self._y = np.zeros(size, dtype=np.int8)
        self._pos = self._len = 0
        self.since_fit = 0  # labels added since the last fit started
        self.refit = BackgroundFit("supervised refit", versions)
        # Several processors: each learns the labels of its own partitions, so the trainer fits
        # on the group's, counted by group_learned(); its own window above is a share of them.
        self.group: GroupCount | None = None

    def add(self, features: np.ndarray, is_fraud: int) -> None:
        size = len(self._y)
        self._x[self._pos] = features
        self._y[self._pos] = is_fraud
        self._pos = (self._pos + 1) % size
        self._len = min(size, self._len + 1)
        if self.group is None:  # else counted by group_learned()
            self.since_fit += 1

    def restored(self) -> None:
        """The window was refilled from the stored labels: with a stored model, only new labels
        count towards the next refit; without one, all of them."""
        self.since_fit = 0 if self.model is not None else self._len

    def group_learned(self, total: int) -> None:
        """The group has learned ``total`` labels so far: the count towards the next refit."""
        assert self.group is not None
        self.since_fit = self.group.since_fit(total, model_exists=self.model is not None)

    def maybe_refit(self) -> None:
        s = self.settings
        due = self.since_fit > 0 and self.since_fit >= s.supervised_refit_labels
        if self.refit.running or not due:
            return
        if self.group is not None:
            self.group.fit_started(self.since_fit)
            self.since_fit = 0
            self.refit.future = self.refits.submit(
                FIT_SUPERVISED_STORED,
                self.group.url,
                s.supervised_window,
                min_frauds=s.supervised_min_frauds,
                version=0,  # numbered when swapped in
                threshold=s.supervised_flag_threshold,
                seed=s.model_seed,
            )
            return
        y = self._y[: self._len]
        frauds = int(y.sum())
        if frauds < s.supervised_min_frauds or frauds == len(y):
            return
        self.since_fit = 0
        self.refit.future = self.refits.submit(
            FIT_SUPERVISED,
            self._x[: self._len].copy(),
            y.copy(),
            version=0,  # numbered when swapped in
            threshold=s.supervised_flag_threshold,
            seed=s.model_seed,
        )

    def swap_in(self, result: BatchResult) -> None:
        model = self.refit.take()
        if model is None:
            return
        self.model = model
        result.models.append(model)
        log.info(
            "supervised model v%d swapped in (%d labelled events, %d frauds, %.2f s)",
            model.version, model.training_rows, model.frauds, model.fit_seconds,
        )  # fmt: skip


class LabelLearner:
    """Learns delayed labels, each from its scored event: this batch's, a stored one, or one
    still to come."""

    def __init__(
        self,
        settings: Settings,
        store: EventStore,
        trainer: SupervisedTrainer,
        counts: dict[str, int],
        clock: float = float("-inf"),
    ):
        self.store = store
        self.trainer = trainer
        self.counts = counts
        self.max_orphans = settings.label_memory
        self.memory = LabelMemory()
        self.clock = clock  # the stream's event time: the newest event scored (epoch s)
        self._queue: list[tuple[float, int, Label]] = []  # by labelled_at, then arrival
        self._arrivals = itertools.count()
        # Released labels whose event was not scored yet (another partition can lag behind):
        # learned right after that event is scored, never before.
        self.orphans: OrderedDict[str, Label] = OrderedDict()
        self._batch_events: dict[str, LabelledEvent] = {}  # scored in the batch in progress
        self.group: GroupState | None = None  # several processors: told what is learned here
        self.labels_in_batch = False  # the batch in progress brought labels

    def restore(self, learned: Iterable[tuple[LabelledEvent, Label]], queued: Iterable[Label]):
        """After a restart: the labels learned before (oldest first), and those still queued."""
        for event, label in learned:
            self._learn(event, label)
        self.trainer.restored()
        for label in queued:
            self.queue(label)

    @property
    def queued(self) -> int:
        return len(self._queue)

    def queue(self, label: Label) -> None:
        heapq.heappush(self._queue, (label.labelled_at.timestamp(), next(self._arrivals), label))

    def keep(self, events: list[HeldEvent], inputs: np.ndarray, result: BatchResult) -> None:
        """Events just scored (``inputs``: their supervised inputs): an orphan's label is
        learned now; the others are kept for labels released with this batch."""
        # Only a label of this batch, a queued one or an orphan can need them: the pipeline
        # without labels keeps nothing.
        if not (self.labels_in_batch or self._queue or self.orphans):
            return
        orphans, kept = self.orphans, self._batch_events
        for i, h in enumerate(events):
            txn = h.txn
            event = LabelledEvent(txn.merchant, txn.account_id, inputs[i])
            label = orphans.pop(txn.transaction_id, None) if orphans else None
            if label is None:
                kept[txn.transaction_id] = event
            else:  # its label came first: learn from it now that the event has its score
                self._learn(event, label)
                self.counts["labels_learned"] += 1
                result.labels_released.setdefault(txn.transaction_id, 1)

    def advance(self, txns: list[Transaction]) -> None:
        self.clock = max(self.clock, max(t.timestamp for t in txns).timestamp())

    def release(self, result: BatchResult) -> None:
        """Learn from the queued labels whose labelled_at the event clock has reached, each
        from its scored event: this batch's, else the store's; a label whose event was not
        scored yet waits for it (at most ``label_memory`` of them). Ends the batch."""
        due: list[Label] = []
        while self._queue and self._queue[0][0] <= self.clock:
            due.append(heapq.heappop(self._queue)[2])
        kept, self._batch_events = self._batch_events, {}
        missing = [lb.transaction_id for lb in due if lb.transaction_id not in kept]
        stored = self.store.lookup_events(missing) if missing else {}
        for label in due:
            tid = label.transaction_id
            if tid in result.labels_released:
                continue  # a repeated label: the first one taught already
            event = kept.get(tid) or stored.get(tid, MISSING)
            if event is None:
                continue  # stored, and already learned from an earlier label
            if event is MISSING:
                self.orphans[tid] = label
                if len(self.orphans) > self.max_orphans:
                    self.orphans.popitem(last=False)
                continue
            self._learn(event, label)
            self.counts["labels_learned"] += 1
            result.labels_released[tid] = 1

    def _learn(self, event: LabelledEvent, label: Label) -> None:
        at = label.labelled_at.timestamp()
        self.memory.add(event.merchant, event.account_id, label.is_fraud, at)
        self.trainer.add(event.features, label.is_fraud)
        if self.group is not None:
            self.group.label_learned(event.merchant, event.account_id, label.is_fraud, at)
