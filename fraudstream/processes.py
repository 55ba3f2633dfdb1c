"""Child processes, started, spoken to and stopped one way: :class:`Worker` runs a Python
function in one; :func:`stop` ends a ``subprocess.Popen`` (the embedded broker, the processor
that ``fraudstream run`` starts), which :func:`die_with_parent` binds to this process."""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import logging
import multiprocessing
import os
import select
import signal
import subprocess
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection
from pathlib import Path

log = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1
PR_SET_NAME = 15
PIPE_BYTES = 4 << 20  # a pipe that holds a whole batch's write: sending it is a copy, no wait


class WorkerGone(RuntimeError):
    """The worker process is gone (it crashed, or was stopped)."""


def _prctl(option: int, value) -> None:
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(option, value, 0, 0, 0)


def process_name(pid: int) -> str:
    """The name ``ps`` shows for ``pid`` ('' when it is gone)."""
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def descendants(pid: int) -> list[int]:
    """Every live process below ``pid`` (children, their children, ...)."""
    found = [pid]
    for parent in found:  # grows while it is walked: the children, then theirs
        for task in Path(f"/proc/{parent}/task").glob("*"):
            with contextlib.suppress(OSError):  # the task or the process ended meanwhile
                found.extend(int(c) for c in (task / "children").read_text().split())
    return found[1:]


def die_with_parent() -> None:
    """Have the kernel send this process SIGTERM when its parent dies (a ``preexec_fn``)."""
    _prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def stop(proc: subprocess.Popen, timeout_s: float = 30.0) -> None:
    """SIGTERM, then SIGKILL if it has not exited within ``timeout_s``; reaped either way."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class Worker:
    """``target(inbox, outbox, *args)`` in a child process named ``name`` as ``ps`` shows it,
    spoken to over two one-way pipes. Forked from multiprocessing's forkserver: a clean
    interpreter, safe beside librdkafka's and faust's threads, that never runs the caller's
    script again; ``preload``: the modules the forkserver imports once (callers that share it
    pass the same). The child exits when this process exits or closes the pipe to it."""

    def __init__(self, name: str, target: Callable, *args, preload: Sequence[str] = ()):
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(list(preload))
        inbox, self._requests = context.Pipe(duplex=False)
        self._answers, outbox = context.Pipe(duplex=False)
        _grow_pipe(self._requests.fileno())
        self.process = context.Process(
            target=_run, args=(name, os.getpid(), target, inbox, outbox, args), name=name
        )
        self.process.start()
        inbox.close()
        outbox.close()
        self.pid = self.process.pid
        # Without stop(): the end of its input when this object goes, or at the latest when the
        # interpreter exits, before multiprocessing's exit handler waits for the child (atexit
        # runs the handlers registered last first; that one was registered by start()).
        self._end_input = weakref.finalize(self, self._requests.close)  # runs once at most
        atexit.register(self._end_input)

    def send(self, message) -> None:
        self._guard(self._requests.send, message)

    def send_bytes(self, data: bytes) -> None:
        self._guard(self._requests.send_bytes, data)

    def receive(self, timeout_s: float | None = None):
        """The next message (pickled); :class:`WorkerGone` if the worker ended or timed out."""
        return self._receive(self._answers.recv, timeout_s)

    def receive_bytes(self, timeout_s: float | None = None) -> bytes:
        return self._receive(self._answers.recv_bytes, timeout_s)

    @property
    def answers_fd(self) -> int:
        """Readable when an answer (or the end of the pipe) waits: for an event loop."""
        return self._answers.fileno()

    def stop(self, timeout_s: float = 30.0) -> None:
        """End its input (the worker finishes what it holds and exits); SIGKILL after timeout_s."""
        atexit.unregister(self._end_input)
        self._end_input()
        self.process.join(timeout_s)
        if self.process.exitcode is None:
            log.warning("worker %s did not stop; killing it", self.process.name)
            self.process.kill()
            self.process.join()
        self._answers.close()

    def _receive(self, recv, timeout_s: float | None):
        if timeout_s is not None and not self._answers.poll(timeout_s):
            raise WorkerGone(f"{self.process.name}: no answer within {timeout_s:.0f} s")
        return self._guard(recv)

    def _guard(self, call, *args):
        try:
            return call(*args)
        except (EOFError, OSError):
            code = self.process.exitcode
            state = "still running" if code is None else f"exit code {code}"
            raise WorkerGone(f"{self.process.name} is gone ({state})") from None


def _run(name: str, owner: int, target: Callable, inbox: Connection, outbox: Connection, args):
    """In the child: named, deaf to SIGINT and SIGTERM (a signal to the whole process group must
    not end it before its owner is done with it), gone when its owner is, then ``target``."""
    _prctl(PR_SET_NAME, name.encode()[:15])  # the name ps and /proc/<pid>/comm show
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    threading.Thread(target=_exit_with, args=(owner,), name="owner-watch", daemon=True).start()
    try:
        target(inbox, outbox, *args)
    finally:
        # Leave now: multiprocessing's exit handlers would wait for what this process started.
        logging.shutdown()
        os._exit(0)


def _exit_with(owner: int) -> None:
    """Exit when the process that started this worker exits, however it ends (the worker's
    parent is the forkserver, not the owner)."""
    try:
        fd = os.pidfd_open(owner)
    except (AttributeError, OSError):  # no pidfd (an old kernel): poll /proc
        while Path(f"/proc/{owner}").exists():
            time.sleep(1.0)
    else:
        select.select([fd], [], [])  # readable once the process has exited
    os._exit(0)


def _grow_pipe(fd: int) -> None:
    """Let the pipe hold a whole message (Linux's default holds 64 KB: a larger one would be
    sent in pieces, each waiting for the child while both share two cores)."""
    try:
        import fcntl

        limit = int(Path("/proc/sys/fs/pipe-max-size").read_text())
        fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, min(limit, PIPE_BYTES))
    except (ImportError, AttributeError, OSError, ValueError):
        pass  # another platform, or a smaller limit: the default size works, more slowly
