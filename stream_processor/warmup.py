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

    def claim(self, events: Iterable[HeldEvent]) -> None:
        """Hold events another processor held (and stored) for partitions this one took over."""
        for h in events:
            if h.txn.transaction_id not in self.ids:
                self.held.append(h)
                self.ids.add(h.txn.transaction_id)

    def full(self) -> bool:
        """Enough events are held for the first fit."""
        return len(self.held) >= self.size

    def idle(self) -> bool:
        """Events are held and none came for ``warmup_idle_s``: fit on what is held."""
        return bool(self.held) and time.monotonic() - self.last_event >= self.idle_s

    def release(self) -> list[HeldEvent]:
        """The held events, in the order they came, for the first fit; none are held after."""
        held, self.held, self.ids = self.held, [], set()
        return held
