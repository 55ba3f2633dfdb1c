"""The warm-up: events held until the first model exists (see :mod:`stream_processor.core`)."""

from __future__ import annotations

import time
from collections.abc import Iterable

from fraudstream.settings import Settings
from stream_processor.contracts import BatchResult, HeldEvent


class WarmUp:
    """Holds valid events until the first model exists, and says when to fit it:
    ``warmup_events`` held, or ``warmup_idle_s`` after the last event."""

    def __init__(self, settings: Settings, held: Iterable[HeldEvent] = ()):
        self.size = settings.warmup_events
        self.idle_s = settings.warmup_idle_s
        self.held: list[HeldEvent] = list(held)
        self.ids = {h.txn.transaction_id for h in self.held}
        self.last_event = time.monotonic()
        self.group: list[HeldEvent] = []
        """What the other processors of the group hold (read from the database by the one that
        fits the models): the first model is fit on every processor's held events."""

    def saw_events(self) -> None:
        """Valid events arrived (held or not): the idle time starts again."""
        self.last_event = time.monotonic()

    def hold(self, events: list[HeldEvent], result: BatchResult) -> None:
        """Hold ``events``; ``result.pending_add`` stores them, so a crash loses none."""
        for h in events:
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
            self.ids.add(h.txn.transaction_id)

    def reassigned(self, partitions: set[int], taken_over: Iterable[HeldEvent]) -> None:
        """Partitions moved: keep holding the events of ``partitions`` only (those of others
        are their new processor's, stored in pending_events), and hold ``taken_over``, the
        stored events another processor held for partitions this one gained."""
        self.held = [h for h in self.held if h.partition in partitions]
        self.ids = {h.txn.transaction_id for h in self.held}
        for h in taken_over:
            if h.txn.transaction_id not in self.ids:
                self.held.append(h)
                self.ids.add(h.txn.transaction_id)

    def training(self) -> list[HeldEvent]:
        """What the first model is fit on: the events held here and by the group."""
        return self.held + [h for h in self.group if h.txn.transaction_id not in self.ids]

    def full(self) -> bool:
        """Enough events are held for the first fit (here and by the group)."""
        return len(self.training()) >= self.size

    def idle(self) -> bool:
        """Events are held and none came for ``warmup_idle_s``: fit on what is held."""
        return bool(self.training()) and time.monotonic() - self.last_event >= self.idle_s

    def release(self) -> list[HeldEvent]:
        """The held events, in the order they came, for the first fit; none are held after."""
        held, self.held, self.ids, self.group = self.held, [], set(), []
        return held
