"""The refit worker process: fits off the batch path, and never outlives its processor."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from fraudstream.processes import WorkerGone
from stream_processor.model import FIT_ANOMALY
from stream_processor.refit import RefitRunner, call, worker_pid

OWNER = textwrap.dedent(
    """
    import os, sys
    from stream_processor.refit import RefitRunner, worker_pid

    if __name__ == "__main__":
        runner = RefitRunner()
        assert runner.wait_started(120)
        worker = runner.submit(worker_pid).result(timeout=60)
        print(worker, flush=True)
        sys.stdin.read()  # until killed
    """
)


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except OSError:
        return False


def test_a_fit_runs_in_another_process_and_gives_the_same_model_as_here():
    rng = np.random.default_rng(0)
    train, batch = rng.normal(size=(3000, 7)), rng.normal(size=(200, 7))
    runner = RefitRunner()
    try:
        assert runner.run(worker_pid) not in (os.getpid(), None)
        there = runner.submit(FIT_ANOMALY, train, version=0, reason="events").result(60)
    finally:
        runner.close()
    here = call(FIT_ANOMALY, train, version=0, reason="events")
    assert np.array_equal(there.score(batch), here.score(batch))
    assert there.threshold == here.threshold
    assert there.dumps() and there.reason == "events"


def test_a_worker_that_dies_fails_its_fit_and_is_replaced():
    runner = RefitRunner()
    try:
        first = runner.run(worker_pid)
        dying = runner.submit(os._exit, 3)
        with pytest.raises(WorkerGone):
            dying.result(timeout=60)
        second = runner.run(worker_pid)
        assert second != first and alive(second)
    finally:
        runner.close()
    assert not alive(second)


def test_a_failed_fit_raises_its_error_in_the_caller():
    runner = RefitRunner()
    try:
        with pytest.raises(ValueError, match="Expected 2D array"):
            runner.run(FIT_ANOMALY, np.zeros(5), version=0, reason="events")
        assert runner.run(worker_pid)  # the worker goes on
    finally:
        runner.close()


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGTERM])
def test_the_worker_and_its_forkserver_exit_when_the_processor_is_killed(tmp_path, how):
    script = tmp_path / "owner.py"
    script.write_text(OWNER)
    owner = subprocess.Popen(
        [sys.executable, str(script)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": os.getcwd()},
    )  # fmt: skip
    try:
        worker = int(owner.stdout.readline())
        with open(f"/proc/{worker}/stat") as f:
            forkserver = int(f.read().split()[3])  # the worker's parent
        assert worker != owner.pid and alive(worker) and alive(forkserver)
        owner.send_signal(how)
        owner.wait(30)
        deadline = time.monotonic() + 20
        while (alive(worker) or alive(forkserver)) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not alive(worker), "the refit worker outlived its processor"
        assert not alive(forkserver), "the forkserver outlived its processor"
    finally:
        owner.kill()
        owner.wait()
