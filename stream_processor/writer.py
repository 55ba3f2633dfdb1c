"""SQLite writes in a process of their own, beside the batch path.

Python's sqlite3 takes the GIL back after every row it steps, so a write in a thread of the
processor would wait for the scoring thread at every row (docs/benchmarks.md). Here a child
process (``fraud-writer``) runs each batch's statements in one transaction while the processor
scores the next batch on the other core, and runs the write-ahead log's checkpoints (the
processor's own connections never checkpoint). It exits when the processor's end of the pipe
closes; a write in progress then still commits or rolls back as a whole.
"""

from __future__ import annotations

import marshal
import pickle
import sqlite3
import threading

from fraudstream.processes import Worker, WorkerGone
from fraudstream.retry import is_lock_error, retry
from stream_processor import WORKER_PRELOAD
from stream_processor.sink import SinkError

WRITER_PROCESS_NAME = "fraud-writer"  # what ps shows
CHECKPOINT_EVERY_WRITES = 8  # the log copied back whole at least this often
CHECKPOINT_EVERY_S = 1.0  # ... and once the writes pause this long


# -- the processor's side -----------------------------------------------------------------------


class WriterProcess:
    """The child process: :meth:`submit` a transaction, :meth:`wait` for it."""

    def __init__(self, path: str, busy_timeout_ms: int):
        self._worker = Worker(WRITER_PROCESS_NAME, serve, path, busy_timeout_ms,
                              preload=WORKER_PRELOAD)  # fmt: skip
        self.pid = self._worker.pid
        self.in_flight = False  # a write was submitted and not waited for
        self.checkpoints = 0
        try:
            kind, detail = self._worker.receive(timeout_s=30.0)
        except WorkerGone as exc:
            kind, detail = "error", str(exc)
        if kind != "ready":
            self._worker.stop(5.0)
            raise SinkError(f"the writer process could not open {path}: {detail}")

    def submit(self, statements: list[tuple[str, list[tuple]]]) -> None:
        """Start one transaction of ``statements`` (run in order); :meth:`wait` for it next."""
        if self.in_flight:
            raise SinkError("a write is still in flight: wait for it first")
        try:
            self._worker.send_bytes(_dumps(statements))
        except WorkerGone as exc:
            raise SinkError(str(exc)) from None
        self.in_flight = True

    def wait(self) -> None:
        """Until the submitted transaction is committed; :class:`SinkError` if it was not."""
        if not self.in_flight:
            return
        self.in_flight = False
        try:
            kind, detail = self._worker.receive()
        except WorkerGone as exc:
            raise SinkError(str(exc)) from None
        if kind != "ok":
            raise SinkError(detail)
        self.checkpoints = detail

    def write(self, statements: list[tuple[str, list[tuple]]]) -> None:
        self.submit(statements)
        self.wait()

    def close(self) -> None:
        """Let a write in flight finish, then stop the child (it checkpoints the log first)."""
        self._worker.stop(60.0)


def _dumps(message) -> bytes:
    """``message`` marshalled (faster than pickle; the same interpreter reads it), or pickled
    when marshal refuses a value (a subclass of a number or a string, an object); the first
    byte says which."""
    try:
        return b"m" + marshal.dumps(message)
    except ValueError:
        return b"p" + pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)


def _loads(data: bytes):
    body = memoryview(data)[1:]
    return marshal.loads(body) if data[:1] == b"m" else pickle.loads(body)


# -- the child ----------------------------------------------------------------------------------


def _transaction(conn: sqlite3.Connection, statements) -> None:
    """All ``statements`` in one transaction, retried while the database is locked (the busy
    timeout already waits on each statement; this outlasts longer locks)."""

    def attempt() -> None:
        conn.execute("BEGIN IMMEDIATE")
        try:
            for sql, params in statements:
                conn.executemany(sql, params)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:  # a failed COMMIT too: the next write starts clean
                conn.execute("ROLLBACK")
            raise

    retry(attempt, transient=lambda exc: isinstance(exc, sqlite3.OperationalError)
          and is_lock_error(exc))  # fmt: skip


class _Checkpoints:
    """The write-ahead log copied back into the database by a thread of the writer, on a
    connection of its own, beside the next write (Python's sqlite3 releases the GIL while SQLite
    works; a checkpoint between writes held up the next one: docs/benchmarks.md). SQLite rewinds
    the log only when a write begins after a checkpoint that copied all of it, and one that a
    write overlapped did not: when none did for ``every_writes`` writes, the next write waits for
    the one running and copies what is left first. The log stays bounded."""

    def __init__(self, conn: sqlite3.Connection, path: str, timeout_s: float, every_writes: int):
        self.conn = conn  # the writer's own: the catch-up, between writes
        self.every_writes = max(1, every_writes)
        self.count = 0  # checkpoints run
        self._cv = threading.Condition()
        self._writes = 0  # writes begun
        self._writing = False
        self._since_complete = 0  # writes begun since a checkpoint copied the whole log
        self._complete = False  # the last checkpoint copied all of the log, no write overlapped
        self._due = self._running = self._stop = False
        self._own = sqlite3.connect(
            path, timeout=timeout_s, isolation_level=None, check_same_thread=False
        )
        self._own.execute("PRAGMA synchronous=NORMAL")
        self._thread = threading.Thread(target=self._run, name="wal-checkpoint", daemon=True)
        self._thread.start()

    def before_write(self) -> None:
        with self._cv:
            if self._complete:  # this write rewinds the log
                self._complete, self._since_complete = False, 0
            due = self._since_complete >= self.every_writes
        if due:
            self.catch_up()
        with self._cv:
            self._writes += 1
            self._since_complete += 1
            self._writing = True

    def after_write(self) -> None:
        """After each write (committed or not): a background checkpoint, after any running."""
        with self._cv:
            self._writing = False
            self._due = True
            self._cv.notify_all()

    def catch_up(self) -> None:
        """Wait for the checkpoint in progress, then copy what is left (between writes)."""
        with self._cv:
            while (self._running or self._due) and self._thread.is_alive():
                self._cv.wait(1.0)
        complete = self._checkpoint(self.conn)
        with self._cv:
            self._complete = complete
            if complete:
                self._since_complete = 0

    def close(self) -> None:
        with self._cv:
            self._stop = True
            self._cv.notify_all()
        self._thread.join(timeout=60)
        self._own.close()

    def _run(self) -> None:
        while True:
            with self._cv:
                self._cv.wait_for(lambda: self._due or self._stop)
                self._due = False
                if self._stop:
                    self._cv.notify_all()
                    return
                self._running = True
                writes, overlapped = self._writes, self._writing
            complete = False
            try:
                complete = self._checkpoint(self._own)
            finally:  # whatever happened, the writes go on (and catch up themselves)
                with self._cv:
                    self._running = False
                    # a write in progress at the start, or begun since (one in progress now
                    # is one of the two)
                    overlapped = overlapped or self._writes != writes
                    self._complete = complete and not overlapped
                    self._cv.notify_all()

    def _checkpoint(self, conn: sqlite3.Connection) -> bool:
        """One PASSIVE checkpoint; True when it copied the whole log."""
        try:
            # fetchall: the statement ends here (an open one keeps a read mark on the log,
            # which then cannot be rewound)
            ((busy, frames, copied),) = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        except Exception:  # noqa: BLE001 - busy, locked, anything: the next round catches up
            return False
        self.count += 1
        return busy == 0 and frames == copied


def serve(inbox, outbox, path: str, busy_timeout_ms: int) -> None:
    try:
        # timeout: sqlite3_busy_timeout, what the processor's "PRAGMA busy_timeout" sets
        conn = sqlite3.connect(path, timeout=busy_timeout_ms / 1000, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA wal_autocheckpoint=0")  # checkpoints: _Checkpoints
        checkpoints = _Checkpoints(conn, path, busy_timeout_ms / 1000, CHECKPOINT_EVERY_WRITES)
    except sqlite3.Error as exc:
        outbox.send(("error", f"{type(exc).__name__}: {exc}"))
        return
    outbox.send(("ready", None))
    idle_since_write = False  # writes since the log was last copied back while idle
    try:
        while True:
            if not inbox.poll(CHECKPOINT_EVERY_S):
                if idle_since_write:  # idle: copy back what the last writes left in the log
                    checkpoints.catch_up()
                    idle_since_write = False
                continue
            try:
                statements = _loads(inbox.recv_bytes())
            except EOFError:  # the processor closed the pipe, or is gone
                break
            checkpoints.before_write()
            try:
                _transaction(conn, statements)
            except Exception as exc:  # noqa: BLE001 - reported; the processor decides
                outbox.send(("error", f"cannot write to the database: {exc}"))
                continue
            finally:
                checkpoints.after_write()
            idle_since_write = True
            outbox.send(("ok", checkpoints.count))
        if idle_since_write:
            checkpoints.catch_up()
    except (BrokenPipeError, EOFError, OSError):
        pass  # the processor is gone: nobody to answer
    finally:
        checkpoints.close()
        conn.close()
