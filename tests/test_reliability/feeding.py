"""What the reliability tests put on the transactions topic, and where it went.

A generated CSV is replayed in parts, one as each processor incarnation starts, so that every
incarnation has work to be killed in however fast the processors are; undecodable events go
between them. The newest offset of each partition is what to wait for, and the bad events'
positions are what the dead letters must be.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from confluent_kafka import Producer

from fraudstream.settings import Settings
from producer.replay import ReplayOptions, replay


class Feed:
    def __init__(self, settings: Settings, csv: Path, parts: int, rate: int):
        self.settings = settings
        self.rate = rate
        self.offsets: dict[int, int] = {}  # partition -> newest offset produced
        self.bad_offsets: set[tuple[int, int]] = set()  # (partition, offset) of each bad event
        header, *lines = csv.read_text().splitlines(keepends=True)
        self.parts: list[Path] = []
        for k, chunk in enumerate(np.array_split(np.arange(len(lines)), parts)):
            self.parts.append(csv.parent / f"part-{k}.csv")
            self.parts[-1].write_text(header + "".join(lines[i] for i in chunk))
        self._bad = Producer({"bootstrap.servers": settings.bootstrap_servers})

    def part(self, k: int) -> None:
        """Replay part ``k``: every row of it produced."""
        path = self.parts[k]
        s = self.settings
        stats = replay(path, s.bootstrap_servers, s.transactions_topic,
                       ReplayOptions(progress=False, rate=self.rate))  # fmt: skip
        assert stats.failed == 0 and stats.produced == len(path.read_text().splitlines()) - 1
        self._produced(stats.last_offsets.items())

    def bad(self, numbers) -> None:
        """One undecodable event for each of ``numbers``, between the valid ones."""
        for i in numbers:
            self._bad.produce(self.settings.transactions_topic, key=f"AC{i:06d}".encode(),
                              value=b"\x00not json %d" % i, on_delivery=self._kept)  # fmt: skip
        self._bad.flush(30)

    def _kept(self, err, msg) -> None:
        assert err is None, err
        self.bad_offsets.add((msg.partition(), msg.offset()))
        self._produced([(msg.partition(), msg.offset())])

    def _produced(self, positions) -> None:
        for partition, offset in positions:
            self.offsets[partition] = max(self.offsets.get(partition, -1), offset)
