"""The commit protocol (scoring, the sink, deliveries) in a child process, for the faust runtime.

faust-streaming spends as much Python per event before any work as the scoring core spends on
the event: in one interpreter the two take turns on the GIL (docs/benchmarks.md). So faust consumes in its process, and the protocol (:mod:`stream_processor.commit`) runs
in a :class:`~fraudstream.processes.Worker` that answers each batch with the positions it
releases: faust acknowledges the events up to them, and reads the next batch meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable

from fraudstream.processes import Worker, WorkerGone
from fraudstream.settings import Settings
from stream_processor import WORKER_PRELOAD
from stream_processor.commit import CommitProtocol, Position, ReleasedOffsets, last_positions
from stream_processor.core import RawMessage
from stream_processor.outbox import KafkaOutbox
from stream_processor.pipeline import BatchPipeline, tune_gc

CORE_PROCESS_NAME = "fraud-core"  # what ps shows
START_TIMEOUT_S = 300.0  # the child imports scikit-learn and rebuilds state from the database


class CoreProcessError(RuntimeError):
    """The scoring process is gone: the runtime must stop rather than acknowledge events."""


def _serve(inbox, outbox, settings: Settings, level: int) -> None:  # in the child
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        server = ProtocolServer(settings)
    except BaseException as exc:  # noqa: BLE001 - reported to the parent, which stops
        outbox.send((False, exc))
        return
    tune_gc()
    outbox.send((True, None))
    try:
        while True:
            try:
                method, args = inbox.recv()  # a ProtocolServer method (pickled by name)
            except (EOFError, OSError):
                return  # the parent closed the pipe, or is gone
            try:
                value = method(server, *args)
            except BaseException as exc:  # noqa: BLE001 - the parent decides what is fatal
                outbox.send((False, exc))
            else:
                outbox.send((True, value))
    finally:
        server.close()


class ProtocolServer:
    """What the child serves: the commit protocol over a pipeline of its own, each call
    answered with the positions it released."""

    def __init__(self, settings: Settings):
        self.pipeline = BatchPipeline(settings)
        try:
            self.pipeline.follow_rules()
        except BaseException:
            self.pipeline.close()
            raise
        self.outbox = KafkaOutbox(settings)
        self.released = ReleasedOffsets()
        self.protocol = CommitProtocol(self.pipeline, self.outbox, self.released)

    def batch(self, fields: list[tuple]) -> list[Position]:
        """A consumed batch, as ``RawMessage`` fields (tuples pickle faster than objects)."""
        messages = [RawMessage(*f) for f in fields]
        self.protocol.on_batch(messages, last_positions(messages))
        return self.released.take()

    def idle(self) -> list[Position]:
        self.protocol.on_idle()
        return self.released.take()

    def finish(self) -> list[Position]:
        self.protocol.close()
        return self.released.take()

    def status(self) -> dict:
        return self.pipeline.status()

    def close(self) -> None:
        self.outbox.close()
        self.pipeline.close()


class PipelineProcess:
    """A :class:`ProtocolServer` in a child process; exceptions raised in the child are raised
    again here.

    The faust runtime awaits it on its event loop (:meth:`_acall`), not from an executor thread,
    whose every call waited for the GIL to come back from the busy loop (docs/benchmarks.md)."""

    def __init__(self, settings: Settings):
        level = logging.getLogger().getEffectiveLevel()
        self._worker = Worker(CORE_PROCESS_NAME, _serve, settings, level, preload=WORKER_PRELOAD)
        self._lock = threading.Lock()
        self._unread = 0  # answers owed to cancelled calls, read and dropped by the next one
        self._closed = False
        try:
            ok, value = self._worker.receive(START_TIMEOUT_S)
        except WorkerGone as exc:
            ok, value = False, CoreProcessError(f"the scoring process did not start: {exc}")
        if not ok:
            self._worker.stop(5.0)
            raise value

    def _answer(self):
        try:
            while self._unread:  # answers to calls whose caller was cancelled
                self._worker.receive()
                self._unread -= 1
            ok, value = self._worker.receive()
        except WorkerGone as exc:
            raise CoreProcessError(f"the scoring process stopped: {exc}") from None
        if not ok:
            raise value
        return value

    def _send(self, method: Callable, args: tuple) -> None:  # with the lock held
        if self._closed:
            raise CoreProcessError("the scoring process was closed")
        try:
            self._worker.send((method, args))
        except WorkerGone as exc:
            raise CoreProcessError(f"the scoring process stopped: {exc}") from None

    def _call(self, method: Callable, *args):
        with self._lock:
            self._send(method, args)
            return self._answer()

    async def batch(self, fields: list[tuple]) -> list[Position]:
        """:meth:`ProtocolServer.batch` in the child."""
        return await self._acall(ProtocolServer.batch, fields)

    async def idle(self) -> list[Position]:
        """:meth:`ProtocolServer.idle` in the child."""
        return await self._acall(ProtocolServer.idle)

    async def _acall(self, method: Callable, *args):
        """``method(*args)`` in the child, awaited on the running event loop."""
        loop = asyncio.get_running_loop()
        while not self._lock.acquire(blocking=False):  # a blocking call from another thread
            await asyncio.sleep(0.001)
        try:
            self._send(method, args)
            answered = loop.create_future()
            fd = self._worker.answers_fd
            loop.add_reader(fd, lambda: answered.done() or answered.set_result(None))
            try:
                await answered  # readable: the answer (or the end of the pipe) has arrived
            except asyncio.CancelledError:  # the answer still comes: the next call skips it
                self._unread += 1
                raise
            finally:
                loop.remove_reader(fd)
            return self._answer()
        finally:
            self._lock.release()

    def status(self) -> dict:
        return self._call(ProtocolServer.status)

    def finish(self) -> list[Position]:
        """Finish the batch in flight and its deliveries (at shutdown): the positions released."""
        return self._call(ProtocolServer.finish)

    def close(self, timeout_s: float = 30.0) -> None:
        """Stop the child: it closes its pipeline (the sink finishes the write in hand)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._worker.stop(timeout_s)
