"""Background refits, in a worker process of their own (``fraud-refit``).

A refit is CPU-bound Python and NumPy: in a thread it would hold the GIL for most of a second,
and every batch in that second would wait (``benchmarks.latency``'s refit pause). In a worker
process, at a lower priority (``nice`` 10) with one native thread, the stream still gets the CPU
first. Callers name the function to run (``"module:function"``), so the processor never imports
scikit-learn. Arguments and results are pickled in the caller's thread, not a helper thread: the
batch path pays for them at a moment it chooses and can measure.

The worker (a :class:`fraudstream.processes.Worker`) starts when its :class:`RefitRunner` is
made, exits with the processor, and is replaced if it dies: the fit it was running fails, is
logged, and the current model is kept.
"""

from __future__ import annotations

import itertools
import logging
import os
import pickle
import struct
import threading
from collections.abc import Callable
from concurrent.futures import Future
from importlib import import_module

from fraudstream.processes import Worker, WorkerGone
from stream_processor import WORKER_PRELOAD

log = logging.getLogger(__name__)

WORKER_NICENESS = 10
REFIT_PROCESS_NAME = "fraud-refit"  # what ps shows
_TASK = struct.Struct("<Q?")  # a task's number, and (in answers) whether it succeeded


def resolve(fn: str | Callable) -> Callable:
    """``"package.module:function"`` -> the function (imported where it runs)."""
    if callable(fn):
        return fn
    module, _, name = fn.partition(":")
    return getattr(import_module(module), name)


def call(fn: str | Callable, /, *args, **kwargs):
    """Call ``fn`` (a function or its name) here, in this thread."""
    return resolve(fn)(*args, **kwargs)


def worker_pid() -> int:
    """The pid of the process running it (what a test asks the worker)."""
    return os.getpid()


class PickledFuture(Future):
    """A fit's future, set to the pickled value; ``result()`` unpickles it in the calling thread."""

    def result(self, timeout: float | None = None):
        return pickle.loads(super().result(timeout))


class RefitRunner:
    """Submits fits to the refit worker process, one at a time, in order."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._worker: Worker | None = None
        self._tasks = itertools.count()
        self._pending: dict[int, tuple[Worker, PickledFuture]] = {}
        self._started = threading.Event()
        self._closed = False
        # The worker starts now, off the batch path (a fork of the forkserver; the forkserver
        # itself, with scikit-learn, takes about 2 s the first time).
        threading.Thread(target=self._start, name="refit-worker-start", daemon=True).start()

    def submit(self, fn: str | Callable, /, *args, **kwargs) -> PickledFuture:
        """Run ``fn`` (a function or its ``"module:function"`` name) in the worker."""
        payload = pickle.dumps((fn, args, kwargs), protocol=pickle.HIGHEST_PROTOCOL)
        future = PickledFuture()
        with self._lock:
            if self._closed:
                raise WorkerGone("the refit worker was closed")
            task = next(self._tasks)
            for attempt in (1, 2):  # a worker found gone is replaced once
                worker = self._running_worker()
                self._pending[task] = (worker, future)
                try:
                    worker.send_bytes(_TASK.pack(task, True) + payload)
                    break
                except WorkerGone:
                    self._replace(worker)
                    if attempt == 2:
                        raise
        return future

    def run(self, fn: str | Callable, /, *args, **kwargs):
        """Run ``fn`` in the worker and wait for its result (the first fit, loading a model)."""
        return self.submit(fn, *args, **kwargs).result()

    def wait_started(self, timeout_s: float = 120.0) -> bool:
        """Block until the worker process has started (benchmarks: time refits, not start-up)."""
        return self._started.wait(timeout_s)

    def close(self) -> None:
        """Stop the worker; fits not finished fail (a runtime waited for them already)."""
        with self._lock:
            self._closed = True
            worker, self._worker = self._worker, None
        if worker is not None:
            worker.stop(timeout_s=2.0)

    def _start(self) -> None:
        try:
            with self._lock:
                if not self._closed:
                    self._running_worker()
        except Exception:  # noqa: BLE001 - the first real fit will start (or fail to start) it
            log.warning("could not start the refit worker process", exc_info=True)
        finally:
            self._started.set()

    def _running_worker(self) -> Worker:  # with the lock held
        if self._worker is None:
            self._worker = Worker(REFIT_PROCESS_NAME, _serve, preload=WORKER_PRELOAD)
            threading.Thread(target=self._answers, args=(self._worker,), name="refit-answers",
                             daemon=True).start()  # fmt: skip
        return self._worker

    def _replace(self, worker: Worker) -> None:  # with the lock held
        if self._worker is worker:
            self._worker = None

    def _answers(self, worker: Worker) -> None:
        """Hand each answer to its future; when the worker is gone, fail what it held."""
        while True:
            try:
                data = worker.receive_bytes()
            except WorkerGone:
                log.warning("the refit worker process died; the next fit starts a new one")
                break
            if not data:  # its goodbye at the end of its input: not a crash
                break
            task, ok = _TASK.unpack_from(data)
            with self._lock:
                _worker, future = self._pending.pop(task, (None, None))
            if future is None or future.cancelled():
                continue
            body = data[_TASK.size :]
            if ok:
                future.set_result(body)
            else:
                future.set_exception(pickle.loads(body))
        with self._lock:
            self._replace(worker)
            lost = [t for t, (w, _f) in self._pending.items() if w is worker]
            futures = [self._pending.pop(t)[1] for t in lost]
        for future in futures:
            if not future.cancelled():
                future.set_exception(WorkerGone("the refit worker process stopped during a fit"))


def _serve(inbox, outbox) -> None:  # in the worker
    from threadpoolctl import threadpool_limits

    os.nice(WORKER_NICENESS)
    with threadpool_limits(limits=1):  # one OpenMP / BLAS thread: the stream keeps a core
        while True:
            try:
                data = inbox.recv_bytes()
            except EOFError:
                outbox.send_bytes(b"")  # goodbye: an end, not a crash
                return
            task, _ = _TASK.unpack_from(data)
            try:
                fn, args, kwargs = pickle.loads(memoryview(data)[_TASK.size :])
                body, ok = pickle.dumps(resolve(fn)(*args, **kwargs), pickle.HIGHEST_PROTOCOL), True
            except Exception as exc:  # noqa: BLE001 - the caller's future raises it
                body, ok = _pickled_error(exc), False
            outbox.send_bytes(_TASK.pack(task, ok) + body)


def _pickled_error(exc: Exception) -> bytes:
    try:
        return pickle.dumps(exc, pickle.HIGHEST_PROTOCOL)
    except Exception:  # noqa: BLE001 - an exception that does not pickle: its text
        return pickle.dumps(RuntimeError(f"{type(exc).__name__}: {exc}"))
