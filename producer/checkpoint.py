"""Where a replay is: the last CSV line below which every event was delivered.

``--resume`` restarts after that line, so a producer killed mid-replay leaves no gap. Events
sent after the checkpoint but not yet confirmed are sent again: those duplicates carry the same
``transaction_id`` and the stream processor stores them once.
"""

from __future__ import annotations

import json
import os
from collections import deque
from pathlib import Path

Position = tuple[int, int]  # (loop, line): loop 0 is the first pass over the file


class CheckpointError(ValueError):
    pass


class Checkpoint:
    def __init__(self, path: Path):
        self.path = Path(path)
        self.position: Position = (0, 0)
        self._sent: deque[Position] = deque()
        self._delivered: set[Position] = set()

    @classmethod
    def load(cls, path: Path) -> Checkpoint:
        cp = cls(path)
        if cp.path.exists():
            try:
                data = json.loads(cp.path.read_text())
                cp.position = (int(data["loop"]), int(data["line"]))
            except (ValueError, KeyError, TypeError) as exc:
                raise CheckpointError(
                    f"{cp.path}: not a replay checkpoint ({exc}); delete it to start over"
                ) from None
        return cp

    def sent(self, pos: Position) -> None:
        self._sent.append(pos)

    def delivered(self, pos: Position) -> None:
        self._delivered.add(pos)
        while self._sent and self._sent[0] in self._delivered:
            self.position = self._sent.popleft()
            self._delivered.discard(self.position)

    def save(self) -> None:
        """Atomically (write + rename), so a kill never leaves half a file."""
        tmp = self.path.with_suffix(self.path.suffix + ".tmp")
        tmp.write_text(json.dumps({"loop": self.position[0], "line": self.position[1]}))
        os.replace(tmp, self.path)
