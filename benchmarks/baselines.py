"""What the benchmarks compare the product with: none of these is an option of the product."""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor

from stream_processor.refit import call


class ThreadRefits:
    """Refits in a thread of the processor, sharing its GIL with the batch path: what the refit
    worker process (``stream_processor.refit.RefitRunner``) replaced. The same interface."""

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="refit")

    def submit(self, fn, /, *args, **kwargs) -> Future:
        return self._pool.submit(call, fn, *args, **kwargs)

    def run(self, fn, /, *args, **kwargs):
        return self.submit(fn, *args, **kwargs).result()

    def wait_started(self, timeout_s: float = 0.0) -> bool:
        return True

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
