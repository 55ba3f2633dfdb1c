"""The faust runtime's scoring process: it and its refit worker never outlive the processor."""

import asyncio
import signal
import time
from pathlib import Path

import pytest

from fraudstream.processes import descendants, process_name
from fraudstream.run import start_processor, stop_processor
from stream_processor.refit import REFIT_PROCESS_NAME
from stream_processor.remote import CORE_PROCESS_NAME, PipelineProcess


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def named_descendants(pid: int) -> dict[str, list[int]]:
    found: dict[str, list[int]] = {}
    for child in descendants(pid):
        found.setdefault(process_name(child), []).append(child)
    return found


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGTERM])
def test_the_scoring_process_and_its_worker_exit_with_the_faust_processor(
    kafka_settings, tmp_path, how
):
    proc = start_processor(kafka_settings.replace(runtime="faust"), tmp_path / "processor.log")
    try:
        deadline = time.monotonic() + 120
        tree: dict[str, list[int]] = {}
        while time.monotonic() < deadline and proc.poll() is None:
            tree = named_descendants(proc.pid)
            if tree.get(CORE_PROCESS_NAME) and tree.get(REFIT_PROCESS_NAME):
                break
            time.sleep(0.2)
        log = (tmp_path / "processor.log").read_text(errors="replace")
        assert tree.get(CORE_PROCESS_NAME), f"no scoring process started:\n{log[-3000:]}"
        assert tree.get(REFIT_PROCESS_NAME), f"no refit worker started:\n{log[-3000:]}"
        everyone = [pid for pids in tree.values() for pid in pids]
        proc.send_signal(how)
        proc.wait(60)
        deadline = time.monotonic() + 30
        while any(alive(pid) for pid in everyone) and time.monotonic() < deadline:
            time.sleep(0.1)
        left = {name: [p for p in pids if alive(p)] for name, pids in tree.items()}
        assert not any(left.values()), f"outlived the processor: {left}"
    finally:
        stop_processor(proc)


def test_a_cancelled_call_does_not_hand_its_answer_to_the_next_one(kafka_settings):
    """The faust runtime awaits the scoring process on its event loop; a call cancelled there
    (a timer or a health request at shutdown) still gets its answer later, which the next call
    must skip rather than take for its own."""
    pipeline = PipelineProcess(kafka_settings)  # it follows the rules topic
    try:

        async def cancelled_then_status():
            call = asyncio.ensure_future(pipeline.idle())
            await asyncio.sleep(0)  # the request is written; its answer is not read yet
            call.cancel()
            with pytest.raises(asyncio.CancelledError):
                await call
            return pipeline.status(), await pipeline.idle()

        status, released = asyncio.run(cancelled_then_status())
        assert isinstance(status, dict) and status["accounts_in_memory"] == 0  # not idle's answer
        assert released == []
    finally:
        pipeline.close()
