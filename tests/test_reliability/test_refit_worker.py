"""The refit worker process: fits off the batch path, and never outlives its processor."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from stream_processor.model import FIT_ANOMALY
from stream_processor.refit import RefitRunner

OWNER = textwrap.dedent(
    """
    import os, sys
    from stream_processor.refit import RefitRunner, _ready

    if __name__ == "__main__":
        runner = RefitRunner("process")
        assert runner.wait_started(120)
        worker = runner.submit(_ready).result(timeout=60)
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


def test_a_fit_runs_in_another_process_and_gives_the_same_model_as_in_a_thread():
    rng = np.random.default_rng(0)
    train, batch = rng.normal(size=(3000, 7)), rng.normal(size=(200, 7))
    fits = {}
    for mode in ("process", "thread"):
        runner = RefitRunner(mode)
        fits[mode] = runner.submit(FIT_ANOMALY, train, version=0, reason="events").result(60)
        runner.close()
    assert np.array_equal(fits["process"].score(batch), fits["thread"].score(batch))
    assert fits["process"].threshold == fits["thread"].threshold
    assert fits["process"].dumps() and fits["process"].reason == "events"


def test_an_unknown_worker_mode_is_refused_by_name():
    with pytest.raises(ValueError, match="REFIT_WORKER must be one of process, thread, not 'gpu'"):
        RefitRunner("gpu")


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
