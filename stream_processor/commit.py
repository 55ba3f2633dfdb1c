"""The commit protocol: the one place that decides which consumed offsets may be committed.

A batch's offsets may be committed once

  (a) its rows are committed by the sink (a crash replays it; stored ids are recognised),
  (b) its alerts and dead letters are delivered to their topics, and
  (c) the delivery of its alerts is recorded in the database (``alert_published_at``: a replayed
      event whose alert delivery was not recorded has its alert sent again),

and every batch consumed before it may be too: offsets are committed in consume order.

Both runtimes drive it the same way: :meth:`CommitProtocol.on_batch` for each consumed batch,
:meth:`~CommitProtocol.on_idle` when nothing came, :meth:`~CommitProtocol.close` at shutdown.
What makes it fast is that the steps of consecutive batches overlap: batch N+1 is scored while
batch N is written, and batch N's alerts travel to the broker while N+1 is written. The record
of a delivery rides with the next write instead of a transaction of its own. For each batch::

    1  score batch N+1                  (batch N is being written meanwhile)
    2  batch N's write committed        -> its alerts and dead letters known      (a)
    3  batch N-1's deliveries waited for (they travelled during step 1)           (b)
       batch N's alerts and dead letters produced
    4  batch N+1 submitted for writing, with the record of the deliveries so far  (c, on commit)
    5  the offsets of every batch, in order, that meets (a), (b) and (c) committed

A failure in any step (the sink, a delivery, anything) propagates, and the protocol refuses every
call after it (:class:`ProtocolStopped`): the runtime stops without committing more, and whatever
was not committed is consumed again on restart. A batch that failed is never skipped.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from stream_processor.core import BatchResult, RawMessage
from stream_processor.outbox import KafkaDelivery, KafkaOutbox, Outbound

if TYPE_CHECKING:  # the annotation only: the protocol runs with fakes in tests
    from stream_processor.pipeline import BatchPipeline

Position = tuple[str, int, int]
"""(topic, partition, offset) of the last message a batch holds from that partition."""

IDLE_WORK_EVERY_S = 1.0  # without events: record deliveries, first fit when idle, swap refits


class ProtocolStopped(RuntimeError):
    """A step failed earlier: nothing more may be scored, written or committed."""


class Offsets(Protocol):
    """Where released offsets go: the consumer's commit, or the faust runtime's acks."""

    def commit(self, positions: list[Position], *, final: bool) -> None: ...


@dataclass(eq=False)
class _Batch:
    positions: list[Position]
    outbound: Outbound | None = None  # known once its write committed (a)
    delivery: KafkaDelivery | None = None  # produced, not waited for yet
    delivered: bool = False  # (b)
    recorded: bool = False  # (c)
    delivered_at: dict[str, float] = field(default_factory=dict)  # its alerts' delivery times

    def done(self) -> bool:  # delivered: its outbound is known
        return self.delivered and (self.recorded or not self.outbound.alerts)


class CommitProtocol:
    def __init__(
        self,
        pipeline: BatchPipeline,
        outbox: KafkaOutbox,
        offsets: Offsets,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.pipeline, self.outbox, self.offsets, self.clock = pipeline, outbox, offsets, clock
        self._pending: deque[_Batch] = deque()  # consumed and not committed, in consume order
        self._writing: _Batch | None = None  # submitted, its write not collected
        self._travelling: _Batch | None = None  # its alerts and dead letters produced
        self._unrecorded: list[_Batch] = []  # delivered, their record not yet submitted
        self._recording: list[_Batch] = []  # their record rides with the write in flight
        self._last_idle_work = clock()
        self._failed: BaseException | None = None

    def on_batch(self, messages: Sequence[RawMessage], positions: list[Position]) -> None:
        """A consumed batch (``positions``: its last offset in each partition)."""
        with self._step():
            self._advance(self.pipeline.score(messages), positions)  # 1, then 2 to 5

    def on_idle(self) -> None:
        """Nothing was consumed: finish the batch in flight, or do the idle work when due."""
        with self._step():
            if self._writing is not None:
                self._drain()
                self._release(final=False)  # 5
            elif self._unrecorded or self.clock() - self._last_idle_work >= IDLE_WORK_EVERY_S:
                self._last_idle_work = self.clock()
                self._advance(self.pipeline.idle_work(), [])

    def flush(self) -> None:
        """Before partitions move to another processor (a rebalance), and at shutdown: finish
        the write and the deliveries in flight, record them, and commit what they release,
        waiting for the broker's answer. Every batch consumed so far is then committed."""
        with self._step():
            self._drain()
            if self._unrecorded:  # no later write to ride with: a transaction of their own
                self.pipeline.published(_delivery_times(self._unrecorded))
                for batch in self._unrecorded:
                    batch.recorded = True
                self._unrecorded = []
            self._release(final=True)

    def close(self) -> None:
        """At shutdown: :meth:`flush`, then let the pipeline finish."""
        self.flush()
        with self._step():
            self.pipeline.finish()

    @contextmanager
    def _step(self):
        if self._failed is not None:
            raise ProtocolStopped(f"stopped after an earlier failure: {self._failed}")
        try:
            yield
        except BaseException as exc:
            self._failed = exc
            raise

    def _drain(self) -> None:
        """Steps 2 and 3 with no batch to score beside them."""
        self._collect()  # 2
        self._deliver()  # 3
        self._produce()
        self._deliver()  # nothing follows to travel beside: wait for it now

    def _advance(self, result: BatchResult, positions: list[Position]) -> None:
        self._collect()  # 2
        self._deliver()  # 3
        self._produce()
        self._submit(result, positions)  # 4
        self._release(final=False)  # 5

    def _collect(self) -> None:
        batch, self._writing = self._writing, None
        if batch is None:
            return
        batch.outbound = self.pipeline.collect()
        for recorded in self._recording:
            recorded.recorded = True
        self._recording = []
        self._travelling = batch

    def _deliver(self) -> None:
        batch = next((b for b in self._pending if b.delivery is not None), None)
        if batch is None:
            return
        batch.delivery.wait()
        batch.delivery, batch.delivered = None, True
        if batch.outbound.alerts:
            batch.delivered_at = dict.fromkeys(batch.outbound.alert_ids, time.time())
            self._unrecorded.append(batch)

    def _produce(self) -> None:
        batch, self._travelling = self._travelling, None
        if batch is None:
            return
        if batch.outbound.alerts or batch.outbound.dead_letters:
            batch.delivery = self.outbox.produce(batch.outbound)
        else:
            batch.delivered = True

    def _submit(self, result: BatchResult, positions: list[Position]) -> None:
        batch = _Batch(positions)
        self._pending.append(batch)
        self.pipeline.submit(result, _delivery_times(self._unrecorded))
        self._recording, self._unrecorded = self._unrecorded, []
        self._writing = batch

    def _release(self, *, final: bool) -> None:
        released: list[Position] = []
        while self._pending and self._pending[0].done():
            released.extend(self._pending.popleft().positions)
        if released or final:
            self.offsets.commit(released, final=final)


def last_positions(messages: Sequence[RawMessage]) -> list[Position]:
    """The position of the last of ``messages`` in each partition they come from."""
    last: dict[tuple[str, int], int] = {}
    for m in messages:
        key = (m.topic, m.partition)
        if m.offset > last.get(key, -1):
            last[key] = m.offset
    return [(topic, partition, offset) for (topic, partition), offset in last.items()]


class ReleasedOffsets:
    """Released positions kept for someone else to commit (the faust runtime acknowledges the
    events up to them in its own process): :meth:`take` them."""

    def __init__(self) -> None:
        self._released: list[Position] = []

    def commit(self, positions: list[Position], *, final: bool) -> None:
        self._released.extend(positions)

    def take(self) -> list[Position]:
        released, self._released = self._released, []
        return released


def _delivery_times(batches: list[_Batch]) -> dict[str, float]:
    return {tid: at for batch in batches for tid, at in batch.delivered_at.items()}
