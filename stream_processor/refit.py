"""Where background refits run: a separate worker process (default) or a thread.

A refit is CPU-bound Python and NumPy (Isolation Forest fit, threshold scoring, the
gradient-boosted fit). In a thread it holds the GIL for most of a second and every batch in that
second waits for it: that was the scoring pause. In a worker process the batch path keeps the
interpreter to itself; the worker runs at a lower priority (``nice`` 10) with one native thread,
so on a small machine the stream still gets the CPU first. The training arrays go to the worker
and the fitted model comes back pickled, as NumPy arrays (:mod:`stream_processor.model`); the
model's joblib dump is made in the worker too. Callers name the function to run
(``"module:function"``), so the processor itself never imports scikit-learn.
Both are pickled and unpickled in the caller's thread (a few milliseconds), not in the executor's
helper threads: the batch path pays for them at a moment it chooses and can measure.

One worker process serves every scoring core of the interpreter (a runtime has one core; tests have
many). It is started with the first core, off the batch path, from a ``forkserver`` (a fresh
interpreter that preloaded the fitting code and scikit-learn: safe beside librdkafka's and faust's
threads, and it never re-runs the caller's main script). It exits when the processor exits, however
that ends (it watches the processor's pid, and the forkserver follows it), and is replaced if it
ever dies: the fit that was running then fails, is logged, and the current model is kept.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import pickle
import select
import threading
import time
from collections.abc import Callable
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from importlib import import_module

log = logging.getLogger(__name__)

MODES = ("process", "thread")
WORKER_NICENESS = 10
REFIT_PROCESS_NAME = "fraud-refit"  # what ps shows

_lock = threading.Lock()
_process_pool: ProcessPoolExecutor | None = None
_limits = None  # the worker's threadpoolctl limits, kept alive for the process's lifetime


def _init_worker(owner: int) -> None:  # runs in the worker process before any fit
    global _limits
    from threadpoolctl import threadpool_limits

    from fraudstream.broker import die_with_parent, name_process

    die_with_parent()  # the forkserver, our parent, stopping
    name_process(REFIT_PROCESS_NAME)
    threading.Thread(target=_exit_with, args=(owner,), name="owner-watch", daemon=True).start()
    os.nice(WORKER_NICENESS)
    _limits = threadpool_limits(limits=1)  # one OpenMP / BLAS thread: the stream keeps a core


def _exit_with(owner: int) -> None:
    """Exit when the processor that owns this worker exits, however it ends.

    The worker's parent is the forkserver, not the processor, and its task queue never reports
    the processor gone (the worker holds both ends of the queue's pipe); and the forkserver lives
    as long as a worker does. So the worker watches the processor itself."""
    try:
        fd = os.pidfd_open(owner)
    except (AttributeError, OSError):  # no pidfd (old kernel): poll the pid
        while True:
            time.sleep(1.0)
            try:
                os.kill(owner, 0)
            except ProcessLookupError:
                os._exit(0)
            except PermissionError:
                pass
    select.select([fd], [], [])  # readable when the process has exited
    os._exit(0)


def _shared_process_pool(replace_broken: bool = False) -> ProcessPoolExecutor:
    global _process_pool
    with _lock:
        if _process_pool is None or replace_broken:
            if _process_pool is not None:
                _process_pool.shutdown(wait=False, cancel_futures=True)
                log.warning("the refit worker process died; starting a new one")
            context = multiprocessing.get_context("forkserver")
            # Not "__main__": the worker needs only the fitting code, and a caller's script
            # without a main guard must not run again in it.
            context.set_forkserver_preload(["stream_processor.fitting", "stream_processor.refit"])
            _process_pool = ProcessPoolExecutor(
                max_workers=1,
                mp_context=context,
                initializer=_init_worker,
                initargs=(os.getpid(),),
            )
        return _process_pool


def _ready() -> int:
    return os.getpid()


def resolve(fn: str | Callable) -> Callable:
    """``"package.module:function"`` -> the function (imported where it runs)."""
    if callable(fn):
        return fn
    module, _, name = fn.partition(":")
    return getattr(import_module(module), name)


def call(fn: str | Callable, /, *args, **kwargs):
    """Call ``fn`` (a function or its name) here, in this thread."""
    return resolve(fn)(*args, **kwargs)


def _run_pickled(payload: bytes) -> bytes:  # in the worker: bytes in, bytes out
    fn, args, kwargs = pickle.loads(payload)
    return pickle.dumps(resolve(fn)(*args, **kwargs), protocol=pickle.HIGHEST_PROTOCOL)


class PickledFuture:
    """A worker's future whose ``result()`` unpickles the value in the calling thread."""

    def __init__(self, inner: Future):
        self.inner = inner

    def done(self) -> bool:
        return self.inner.done()

    def cancel(self) -> bool:
        return self.inner.cancel()

    def exception(self, timeout: float | None = None) -> BaseException | None:
        return self.inner.exception(timeout)

    def result(self, timeout: float | None = None):
        return pickle.loads(self.inner.result(timeout))


_started = threading.Event()


def _warm_up() -> None:
    try:
        _shared_process_pool().submit(_ready).result(timeout=120)
    except Exception:  # the first real fit will start (or fail to start) it again
        log.warning("could not start the refit worker process", exc_info=True)
    finally:
        _started.set()


class RefitRunner:
    """Submits fits to the refit worker; ``mode`` is ``process`` or ``thread``."""

    def __init__(self, mode: str = "process"):
        if mode not in MODES:
            raise ValueError(f"REFIT_WORKER must be one of {', '.join(MODES)}, not {mode!r}")
        self.mode = mode
        self._thread_pool: Executor | None = None
        self._futures: set[Future] = set()
        if mode == "process":  # start the worker now, off the batch path (it takes ~2 s)
            threading.Thread(target=_warm_up, name="refit-worker-start", daemon=True).start()

    def submit(self, fn: str | Callable, /, *args, **kwargs) -> Future | PickledFuture:
        """Run ``fn`` (a function or its ``"module:function"`` name) in the worker."""
        if self.mode == "thread":
            if self._thread_pool is None:
                self._thread_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="refit")
            future = self._thread_pool.submit(call, fn, *args, **kwargs)
        else:
            payload = pickle.dumps((fn, args, kwargs), protocol=pickle.HIGHEST_PROTOCOL)
            try:
                future = _shared_process_pool().submit(_run_pickled, payload)
            except BrokenProcessPool:
                future = _shared_process_pool(replace_broken=True).submit(_run_pickled, payload)
        self._futures.add(future)
        future.add_done_callback(self._futures.discard)
        return future if self.mode == "thread" else PickledFuture(future)

    def run(self, fn: str | Callable, /, *args, **kwargs):
        """Run ``fn`` in the worker and wait for its result (the first fit, loading a model)."""
        return self.submit(fn, *args, **kwargs).result()

    def wait_started(self, timeout_s: float = 120.0) -> bool:
        """Block until the worker process has started (benchmarks: time refits, not start-up)."""
        return self.mode == "thread" or _started.wait(timeout_s)

    def close(self) -> None:
        """Cancel this runner's fits that did not start (a running one finishes unseen)."""
        for future in list(self._futures):
            future.cancel()
        if self._thread_pool is not None:
            self._thread_pool.shutdown(wait=False, cancel_futures=True)
