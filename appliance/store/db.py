"""One SQLite connection, owned by one dedicated thread, fed through a queue.

Measured on this machine (../shared/STACK.md): a thread hop costs 150-250 us and one owner thread beats
trio.to_thread per call about twice under concurrency. Writes are group-committed: every write job that
is waiting when the thread wakes shares one BEGIN IMMEDIATE .. COMMIT, each inside its own SAVEPOINT, so
synchronous=FULL (power-loss safe) costs one fsync per batch, not per request. A caller's write returns
only after COMMIT, so a device is never answered 200 for a result that is not on disk; a write that
raises changed nothing, and a storage fault (disk full, I/O error, a lock held elsewhere, a job that
waited too long) raises StoreUnavailable (appliance.store.faults).

A write job may run twice (see _run_writes), so it must be a function of the connection and its
arguments only, and must never end the transaction itself.
"""

from __future__ import annotations

import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import trio

from appliance import clock as clocks
from appliance.logs import get_logger
from appliance.store import schema, vacuum
from appliance.store.faults import REASONS, Fault, StoreUnavailable, unavailable

log = get_logger("store")
T = TypeVar("T")

_MAX_BATCH = 256
_STOP = object()
# The server's lock wait: a CLI transaction holds the write lock for milliseconds; one that holds it longer
# would stall every device request queued behind this thread, so they are answered 503 instead.
BUSY_TIMEOUT = 2.0
# How long a job may wait for the thread to start it: far above the longest legitimate job (an enqueue to
# 10,000 ids, 0.3 s here) and well below a device's patience, so it hears 503 and comes back.
QUEUE_DEADLINE = 5.0


# The WAL file is cut back to this after a checkpoint: a burst of writes (a retention pass) does not
# leave it at its largest for good.
WAL_SIZE_LIMIT = 64 * 1024 * 1024


def connect_sync(path: Path | str, synchronous: str = "FULL", migrate: bool = True, *,
                 busy_timeout: float = 30.0, create: bool = True) -> sqlite3.Connection:
    """Open the database the way the appliance does (pragmas + migrations); for the thread and the CLI.

    The CLI, which may run next to a server, passes migrate=False (only `serve` migrates; it checks
    schema.require_current itself), create=False (a missing file is an error, not a new database) and
    a short busy_timeout (every lock wait has a deadline)."""
    target = str(path) if create else Path(path).absolute().as_uri() + "?mode=rw"
    conn = sqlite3.connect(target, isolation_level=None, check_same_thread=False, timeout=busy_timeout,
                           uri=not create)
    try:
        conn.row_factory = sqlite3.Row
        conn.execute(f"PRAGMA busy_timeout={int(busy_timeout * 1000)}")
        if conn.execute("PRAGMA page_count").fetchone()[0] == 0:
            # A new file: freed pages can be given back (appliance.store.vacuum) only if this mode is set
            # before anything is written, WAL mode included.
            conn.execute("PRAGMA auto_vacuum=INCREMENTAL")
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA journal_size_limit={WAL_SIZE_LIMIT}")
        conn.execute(f"PRAGMA synchronous={synchronous}")
        conn.execute("PRAGMA foreign_keys=ON")
        if migrate:
            schema.migrate(conn)
    except BaseException:
        conn.close()
        raise
    return conn


def connect_readonly(path: Path | str) -> sqlite3.Connection:
    """A connection that can only read, for figures next to a running server (`db stats`, the retention
    worker's table counts): it takes no write lock and never migrates. Without a WAL file (no server has
    the database open) the file is opened immutable, so nothing is created beside it (a -shm made by
    another user would keep the service from opening its database)."""
    path = Path(path).absolute()
    wal = Path(f"{path}-wal").exists()
    uri = path.as_uri() + ("?mode=ro" if wal else "?mode=ro&immutable=1")
    conn = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False, timeout=5.0)
    conn.row_factory = sqlite3.Row
    return conn


class DatabaseInUse(RuntimeError):
    """Another process (a running appliance) has the database open."""


def connect_exclusive(path: Path | str) -> sqlite3.Connection:
    """The database alone, for work that must not run beside a server (`db vacuum`): in WAL mode an
    exclusive lock is refused while any other connection has the file open, so a running appliance is
    noticed rather than stalled. The lock is held until the connection closes."""
    conn = sqlite3.connect(str(path), isolation_level=None, timeout=1.0)
    conn.row_factory = sqlite3.Row
    try:
        conn.execute("PRAGMA locking_mode=EXCLUSIVE")
        conn.execute("BEGIN EXCLUSIVE")
        conn.execute("COMMIT")
    except sqlite3.OperationalError as exc:
        conn.close()
        if "locked" in str(exc) or "busy" in str(exc):
            raise DatabaseInUse(f"{path} is in use by another process") from None
        raise
    return conn


_claims = threading.Lock()
_QUEUED, _CLAIMED, _ABANDONED = "queued", "claimed", "abandoned"


class _Job:
    __slots__ = ("fn", "args", "write", "done", "result", "error", "token", "state")

    def __init__(self, fn, args, write: bool) -> None:
        self.fn = fn
        self.args = args
        self.write = write
        self.done = trio.Event()
        self.result: Any = None
        self.error: BaseException | None = None
        self.token = trio.lowlevel.current_trio_token()
        self.state = _QUEUED

    def claim(self) -> bool:
        """On the db thread, before running the job: False if its caller already gave up on it."""
        with _claims:
            if self.state == _ABANDONED:
                return False
            self.state = _CLAIMED
            return True

    def abandon(self) -> bool:
        """On the caller's side at its deadline: True if the job will now never run."""
        with _claims:
            if self.state == _CLAIMED:
                return False
            self.state = _ABANDONED
            return True

    def finish(self) -> None:
        # run_sync_soon is a cheap, non-blocking wake-up of the trio loop from this thread.
        self.token.run_sync_soon(self.done.set)


class StoreClosed(RuntimeError):
    pass


class Store:
    """`await store.read(fn, *args)` / `await store.write(fn, *args)`; fn(conn, *args) runs on the db thread,
    where `timefmt.now()` reads `clock` (the system's unless serve() was handed another)."""

    def __init__(self, path: Path, synchronous: str = "FULL", *, busy_timeout: float = BUSY_TIMEOUT,
                 queue_deadline: float = QUEUE_DEADLINE, clock: clocks.Clock = clocks.SYSTEM) -> None:
        self.path = Path(path)
        self.synchronous = synchronous
        self.busy_timeout = busy_timeout
        self.queue_deadline = queue_deadline
        self.clock = clock
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._closed = False
        self.commits = 0  # batches committed; a figure for benchmarks and tests of group commit
        self.writes = 0  # write jobs committed
        # Storage faults (appliance.store.faults): the current one, and jobs refused per reason.
        self.fault: Fault | None = None
        self.refused = dict.fromkeys(REASONS, 0)
        self._fault_lock = threading.Lock()
        self._fault_changed = trio.Event()

    async def open(self) -> None:
        opened = trio.Event()
        token = self._token = trio.lowlevel.current_trio_token()
        failure: list[BaseException] = []

        def start() -> None:
            clocks.use(self.clock)
            try:
                # Start-up may wait the long timeout (a CLI command finishing); serving may not.
                self._conn = connect_sync(self.path, self.synchronous)
                vacuum.prepare(self._conn, self.path)
                self._conn.execute(f"PRAGMA busy_timeout={int(self.busy_timeout * 1000)}")
            except BaseException as exc:  # reported to the opener, never swallowed
                failure.append(exc)
                token.run_sync_soon(opened.set)
                return
            token.run_sync_soon(opened.set)
            self._loop()

        self._thread = threading.Thread(target=start, name="sqlite-store", daemon=True)
        self._thread.start()
        await opened.wait()
        if failure:
            self._thread.join()
            raise failure[0]

    async def close(self) -> None:
        if self._closed or self._thread is None:
            return
        self._closed = True
        self._jobs.put(_STOP)
        await trio.to_thread.run_sync(self._thread.join)

    async def read(self, fn: Callable[..., T], *args) -> T:
        return await self._submit(fn, args, write=False)

    async def write(self, fn: Callable[..., T], *args) -> T:
        return await self._submit(fn, args, write=True)

    async def _submit(self, fn, args, write: bool):
        if self._closed:
            # A caller being cancelled (the whole process stopping at once) learns that, not StoreClosed:
            # otherwise a worker still unwinding would end the shutdown with an error.
            await trio.lowlevel.checkpoint_if_cancelled()
            raise StoreClosed("the store is closed")
        job = _Job(fn, args, write)
        self._jobs.put(job)
        # Shielded: a submitted job either never starts (its deadline passed while it waited behind other
        # work: StoreUnavailable, nothing done) or runs to its end, and its caller learns the outcome
        # whatever happens to the caller meanwhile. A started job ends with its batch: the lock waits in it are
        # bounded by busy_timeout, and only a disk that never answers can hold it longer.
        with trio.CancelScope(shield=True):
            with trio.move_on_after(self.queue_deadline):
                await job.done.wait()
            if not job.done.is_set():
                if job.abandon():
                    fault = StoreUnavailable("queue_timeout", f"waited {self.queue_deadline:g} s for the "
                                             "database thread")
                    self._refuse(fault)
                    self._set_fault(fault)
                    raise fault
                await job.done.wait()
        if job.error is not None:
            raise job.error
        return job.result

    # --- health, for /healthz, STATUS= and /metrics ----------------------------------------------------

    async def health(self) -> tuple[str, dict, str]:
        fault = self.fault
        if fault is None:
            return "store", {"fault": None}, "ok"
        return "store", fault.health(), "error"

    async def status_phrase(self) -> str | None:
        fault = self.fault
        return None if fault is None else fault.phrase()

    async def fault_changed(self) -> None:
        """Returns when a fault begins, changes or ends (so STATUS= need not wait for its next refresh)."""
        await self._fault_changed.wait()

    def _announce(self) -> None:  # on the trio thread
        self._fault_changed.set()
        self._fault_changed = trio.Event()

    def _set_fault(self, fault: StoreUnavailable) -> None:
        with self._fault_lock:
            current = self.fault
            if current is not None and current.reason == fault.reason:
                return
            self.fault = Fault(fault.reason, fault.detail, time.time())
        log.error("store_fault", reason=fault.reason, cause=fault.cause, detail=fault.detail, hint=fault.hint)
        self._token.run_sync_soon(self._announce)

    def _clear_fault(self) -> None:
        if self.fault is None:  # the common case, after every commit: no lock needed to see it
            return
        with self._fault_lock:
            ended, self.fault = self.fault, None
        if ended is not None:
            log.info("store_recovered", reason=ended.reason, after_seconds=f"{time.time() - ended.since:.1f}")
            self._token.run_sync_soon(self._announce)

    def _refuse(self, fault: StoreUnavailable) -> None:
        with self._fault_lock:
            self.refused[fault.reason] += 1

    # --- on the db thread -------------------------------------------------------------------------

    def _loop(self) -> None:
        conn = self._conn
        try:
            while True:
                first = self._jobs.get()
                if first is _STOP:
                    break
                batch = [first]
                stop = False
                while len(batch) < _MAX_BATCH:
                    try:
                        job = self._jobs.get_nowait()
                    except queue.Empty:
                        break
                    if job is _STOP:
                        stop = True
                        break
                    batch.append(job)
                for job in batch:
                    if not job.write and job.claim():
                        self._run_read(job)
                writes = [job for job in batch if job.write and job.claim()]
                if writes:
                    self._run_writes(writes)
                if stop:
                    break
        finally:
            try:
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.Error:
                pass
            conn.close()

    def _run_read(self, job: _Job) -> None:
        try:
            job.result = job.fn(self._conn, *job.args)
        except BaseException as exc:
            job.error = unavailable(exc) or exc
            if isinstance(job.error, StoreUnavailable):
                self._refuse(job.error)
                self._set_fault(job.error)
        job.finish()

    def _run_writes(self, jobs: list[_Job]) -> None:
        lost, fault = self._transaction(jobs)
        if lost:
            # SQLite rolled the whole transaction back because of one job (a huge write on a nearly full
            # disk, say), taking the others' work with it. Those did nothing wrong, so they get one more
            # transaction of their own; if that one is lost too, the store itself is failing and they are
            # refused rather than run again and again while every caller waits.
            again, fault = self._transaction(lost)
            for job in again:
                job.error = fault.again()
        for job in jobs:
            if isinstance(job.error, StoreUnavailable):
                self._refuse(job.error)
            job.finish()

    def _transaction(self, jobs: list[_Job]) -> tuple[list[_Job], StoreUnavailable | None]:
        """Run the jobs in one transaction. Returns the jobs that did nothing wrong but whose work SQLite
        rolled back with the transaction (to run again), and the fault that cost it."""
        conn = self._conn
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            return [], self._fail_all(jobs, exc)
        faulted = False
        for index, job in enumerate(jobs):
            job.result, job.error = None, None
            try:
                conn.execute("SAVEPOINT job")
                job.result = job.fn(conn, *job.args)
                conn.execute("RELEASE job")
            except BaseException as exc:
                job.error = unavailable(exc) or exc
                if conn.in_transaction:
                    try:
                        conn.execute("ROLLBACK TO job")
                        conn.execute("RELEASE job")
                    except sqlite3.Error:
                        pass
            if not conn.in_transaction:
                # SQLite ended the transaction (FULL, IOERR, NOMEM... may do that): what ran before is gone,
                # and what comes after must not run outside a transaction, in autocommit.
                fault = job.error if isinstance(job.error, StoreUnavailable) else StoreUnavailable(
                    "io_error", "SQLite rolled the transaction back")
                if job.error is None:
                    job.error = fault
                self._set_fault(fault)
                lost = [j for j in jobs[:index] if j.error is None] + jobs[index + 1:]
                return lost, fault
            if isinstance(job.error, StoreUnavailable):
                faulted = True
                self._set_fault(job.error)
        try:
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            if conn.in_transaction:
                try:
                    conn.execute("ROLLBACK")
                except sqlite3.Error:
                    pass
            return [], self._fail_all([job for job in jobs if job.error is None], exc)
        self.commits += 1
        self.writes += sum(1 for job in jobs if job.error is None)
        if not faulted:
            self._clear_fault()
        return [], None

    def _fail_all(self, jobs: list[_Job], exc: sqlite3.Error) -> StoreUnavailable:
        fault = unavailable(exc) or StoreUnavailable("io_error", str(exc))
        self._set_fault(fault)  # logged when the fault begins, not for every batch it refuses
        for job in jobs:
            job.error = fault.again()
        return fault


async def run_store(path: Path, synchronous: str = "FULL", clock: clocks.Clock = clocks.SYSTEM, *,
                    task_status=trio.TASK_STATUS_IGNORED) -> None:
    """A part of the root nursery: opens + migrates, reports the Store, and closes it cleanly when cancelled."""
    store = Store(path, synchronous, clock=clock)
    await store.open()
    log.info("store_open", path=path)
    try:
        task_status.started(store)
        await trio.sleep_forever()
    finally:
        with trio.CancelScope(shield=True):
            await store.close()
            log.info("store_closed", path=path)
