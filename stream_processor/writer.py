"""SQLite writes in a process of their own, beside the batch path.

Python's sqlite3 takes the GIL back after every row it steps, so a write in a thread of the
processor waits for the scoring thread at every row (docs/benchmarks.md: 1,000 rows took 6.0 s
beside a busy thread, 6.5 ms alone). Here a small child process (``python -m
stream_processor.writer``: sqlite3, marshal and pickle, no NumPy, no SQLAlchemy) runs each
batch's statements in one transaction while the processor scores the next batch on the other
core.

The processor compiles the statements (:meth:`stream_processor.sink.Sink.statements`: SQL text
with ``?`` placeholders, and a list of parameter tuples for each) and sends them over a pipe
(marshalled: both ends run the same interpreter; pickled if marshal refuses a value); the child
answers once the transaction is committed, or with the error that stopped it.
The child also runs the write-ahead log's checkpoints, between writes (the processor's own
connections never checkpoint: see :class:`stream_processor.sink.WalCheckpointer`, which it
replaces). It exits when the processor's end of the pipe closes, however the processor ended; a
write in progress then still commits or rolls back as a whole.
"""

from __future__ import annotations

import marshal
import os
import pickle
import select
import signal
import sqlite3
import struct
import subprocess
import sys
import time

WRITER_PROCESS_NAME = "fraud-writer"  # what ps shows
_HEADER = struct.Struct("<Qc")  # the length of a message, and how it is encoded: _dumps
LOCK_WORDS = ("locked", "busy")


class WriterError(RuntimeError):
    """The write failed, or the writer process is gone."""


# -- the processor's side -----------------------------------------------------------------------


class WriterProcess:
    """The child process and its pipe: :meth:`submit` a transaction, :meth:`wait` for it."""

    def __init__(
        self,
        path: str,
        busy_timeout_ms: int,
        checkpoint_every_writes: int = 8,
        checkpoint_every_s: float = 1.0,
        start_timeout_s: float = 30.0,
    ):
        env = dict(os.environ)
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "stream_processor.writer", path, str(busy_timeout_ms),
             str(checkpoint_every_writes), str(checkpoint_every_s)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, bufsize=0,
        )  # fmt: skip
        self.pid = self._proc.pid
        _grow_pipe(self._proc.stdin.fileno())
        self._in_flight = False
        self.writes = 0
        self.checkpoints = 0
        ready = self._receive(start_timeout_s)
        if ready[0] != "ready":
            self.close()
            raise WriterError(f"the writer process could not open {path}: {ready[1]}")

    @property
    def in_flight(self) -> bool:
        return self._in_flight

    def submit(self, statements: list[tuple[str, list[tuple]]]) -> None:
        """Start one transaction of ``statements`` (run in order); :meth:`wait` for it next."""
        if self._in_flight:
            raise WriterError("a write is still in flight: wait for it first")
        try:
            _write_all(self._proc.stdin.fileno(), _dumps(statements))
        except OSError as exc:
            raise WriterError(f"the writer process is gone ({self._exit()}): {exc}") from None
        self._in_flight = True

    def wait(self) -> None:
        """Until the submitted transaction is committed; :class:`WriterError` if it was not."""
        if not self._in_flight:
            return
        self._in_flight = False
        kind, detail = self._receive(None)
        if kind != "ok":
            raise WriterError(detail)
        self.writes += 1
        self.checkpoints = detail

    def write(self, statements: list[tuple[str, list[tuple]]]) -> None:
        self.submit(statements)
        self.wait()

    def _receive(self, timeout_s: float | None) -> tuple:
        fd = self._proc.stdout.fileno()
        if timeout_s is not None and not select.select([fd], [], [], timeout_s)[0]:
            return ("error", f"no answer within {timeout_s:.0f} s")
        message = _read_message(fd)
        if message is None:
            self._proc.wait(5)
            return ("error", f"the writer process is gone ({self._exit()})")
        return message

    def _exit(self) -> str:
        code = self._proc.poll()
        return "still running" if code is None else f"exit code {code}"

    def close(self, timeout_s: float = 60.0) -> None:
        """Let a write in flight finish, then stop the child (it checkpoints the log first)."""
        try:
            self._proc.stdin.close()  # end of input: the child finishes and exits
        except OSError:
            pass
        try:
            self._proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        self._proc.stdout.close()


# -- the child ----------------------------------------------------------------------------------


def _name_process(name: str) -> None:
    try:
        import ctypes

        ctypes.CDLL(None).prctl(15, name.encode()[:15], 0, 0, 0)  # PR_SET_NAME
    except (OSError, AttributeError):
        pass


def _send(out, message: tuple) -> None:
    out.write(_dumps(message))
    out.flush()


def _dumps(message) -> bytes:
    """``message`` with its header: marshalled (a timeit of a batch's rows: 0.8 us a row,
    pickle 1.4; the same interpreter reads it), or pickled when marshal refuses a value (a
    subclass of a number or a string, an object)."""
    try:
        data, kind = marshal.dumps(message), b"m"
    except ValueError:
        data, kind = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL), b"p"
    return _HEADER.pack(len(data), kind) + data


def _loads(kind: bytes, data: bytes):
    return marshal.loads(data) if kind == b"m" else pickle.loads(data)


def _grow_pipe(fd: int) -> None:
    """Make the pipe hold a whole batch (about 1 KB a row): sending it then costs a copy, not a
    wait for the child at every 64 KB (Linux's default pipe size) while both share 2 cores."""
    try:
        import fcntl

        with open("/proc/sys/fs/pipe-max-size") as f:
            limit = int(f.read())
        fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, min(limit, 4 << 20))
    except (ImportError, AttributeError, OSError, ValueError):
        pass  # another platform, or a smaller limit: the default size works, more slowly


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _read_exact(fd: int, size: int) -> bytes | None:
    parts, left = [], size
    while left:
        part = os.read(fd, min(left, 1 << 20))
        if not part:
            return None  # end of input
        parts.append(part)
        left -= len(part)
    return b"".join(parts)


def _read_message(fd: int):
    """The next message on ``fd`` (:func:`_dumps`); None at end of input."""
    header = _read_exact(fd, _HEADER.size)
    if header is None:
        return None
    size, kind = _HEADER.unpack(header)
    data = _read_exact(fd, size)
    return None if data is None else _loads(kind, data)


def _transaction(conn: sqlite3.Connection, statements, attempts: int = 10) -> None:
    """All ``statements`` in one transaction, retried while the database is locked (the busy
    timeout already waits on each statement; this outlasts longer locks)."""
    for attempt in range(1, attempts + 1):
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                for sql, params in statements:
                    conn.executemany(sql, params)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
            return
        except sqlite3.OperationalError as exc:
            text = str(exc).lower()
            if attempt < attempts and any(w in text for w in LOCK_WORDS):
                time.sleep(min(2.0, 0.1 * 2**attempt))
                continue
            raise


def serve(path: str, busy_timeout_ms: int, every_writes: int, every_s: float) -> None:
    _name_process(WRITER_PROCESS_NAME)
    # The processor decides when to stop (it closes the pipe): not a Ctrl-C sent to the group.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    stdin, stdout = sys.stdin.fileno(), sys.stdout.buffer
    try:
        # timeout: sqlite3_busy_timeout, what the processor's "PRAGMA busy_timeout" sets
        conn = sqlite3.connect(path, timeout=busy_timeout_ms / 1000, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA wal_autocheckpoint=0")  # checkpoints below, between writes
    except sqlite3.Error as exc:
        _send(stdout, ("error", f"{type(exc).__name__}: {exc}"))
        return
    _send(stdout, ("ready", None))
    writes_since, last_checkpoint, checkpoints = 0, time.monotonic(), 0

    def checkpoint() -> None:
        nonlocal writes_since, last_checkpoint, checkpoints
        writes_since, last_checkpoint = 0, time.monotonic()
        try:
            conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
            checkpoints += 1
        except sqlite3.Error:  # busy or locked: the next round catches up
            pass

    try:
        while True:
            if not select.select([stdin], [], [], every_s)[0]:
                if writes_since:  # idle: copy back what the last writes left in the log
                    checkpoint()
                continue
            message = _read_message(stdin)
            if message is None:  # the processor closed the pipe, or is gone
                break
            try:
                _transaction(conn, message)
            except Exception as exc:  # noqa: BLE001 - reported; the processor decides
                _send(stdout, ("error", f"cannot write to the database: {exc}"))
                continue
            writes_since += 1
            _send(stdout, ("ok", checkpoints))
            if writes_since >= every_writes or time.monotonic() - last_checkpoint >= every_s:
                checkpoint()  # the next write waits for it: the log stays bounded
        if writes_since:
            checkpoint()
    except BrokenPipeError:
        pass  # the processor is gone: nobody to answer
    finally:
        conn.close()


if __name__ == "__main__":
    serve(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]))
