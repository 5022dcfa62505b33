"""One SQLite connection, owned by one dedicated thread, fed through a queue.

Measured on this machine (../shared/STACK.md): a thread hop costs 150-250 us and one owner thread beats
trio.to_thread per call about twice under concurrency. Writes are group-committed: every write job that
is waiting when the thread wakes shares one BEGIN IMMEDIATE .. COMMIT, each inside its own SAVEPOINT, so
synchronous=FULL (power-loss safe) costs one fsync per batch, not per request. A caller's write returns
only after COMMIT, so a device is never answered 200 for a result that is not on disk.
"""

from __future__ import annotations

import queue
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import trio

from appliance.logs import get_logger
from appliance.store import schema

log = get_logger("store")
T = TypeVar("T")

_MAX_BATCH = 256
_STOP = object()


def connect_sync(path: Path | str, synchronous: str = "FULL", migrate: bool = True) -> sqlite3.Connection:
    """Open the database the way the appliance does (pragmas + migrations); for the thread and the CLI."""
    conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False, timeout=30.0)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(f"PRAGMA synchronous={synchronous}")
    conn.execute("PRAGMA foreign_keys=ON")
    conn.execute("PRAGMA busy_timeout=30000")
    if migrate:
        schema.migrate(conn)
    return conn


class _Job:
    __slots__ = ("fn", "args", "write", "done", "result", "error", "token")

    def __init__(self, fn, args, write: bool) -> None:
        self.fn = fn
        self.args = args
        self.write = write
        self.done = trio.Event()
        self.result: Any = None
        self.error: BaseException | None = None
        self.token = trio.lowlevel.current_trio_token()

    def finish(self) -> None:
        # run_sync_soon is a cheap, non-blocking wake-up of the trio loop from this thread.
        self.token.run_sync_soon(self.done.set)


class StoreClosed(RuntimeError):
    pass


class Store:
    """`await store.read(fn, *args)` / `await store.write(fn, *args)`; fn(conn, *args) runs on the db thread."""

    def __init__(self, path: Path, synchronous: str = "FULL") -> None:
        self.path = Path(path)
        self.synchronous = synchronous
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._closed = False
        self.commits = 0  # batches committed; a figure for benchmarks and tests of group commit
        self.writes = 0

    async def open(self) -> None:
        opened = trio.Event()
        token = trio.lowlevel.current_trio_token()
        failure: list[BaseException] = []

        def start() -> None:
            try:
                self._conn = connect_sync(self.path, self.synchronous)
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
            raise StoreClosed("the store is closed")
        job = _Job(fn, args, write)
        self._jobs.put(job)
        # Shielded: once submitted, a write runs to COMMIT whatever happens to the caller, and the
        # caller learns its outcome; the thread always answers, so this cannot hang.
        with trio.CancelScope(shield=True):
            await job.done.wait()
        if job.error is not None:
            raise job.error
        return job.result

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
                    if not job.write:
                        self._run_read(job)
                writes = [job for job in batch if job.write]
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
            job.error = exc
        job.finish()

    def _run_writes(self, jobs: list[_Job]) -> None:
        conn = self._conn
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            for job in jobs:
                job.error = exc
                job.finish()
            return
        for job in jobs:
            try:
                conn.execute("SAVEPOINT job")
                job.result = job.fn(conn, *job.args)
                conn.execute("RELEASE job")
            except BaseException as exc:
                job.error = exc
                try:
                    conn.execute("ROLLBACK TO job")
                    conn.execute("RELEASE job")
                except sqlite3.Error:
                    pass
        try:
            conn.execute("COMMIT")
            self.commits += 1
            self.writes += len(jobs)
        except sqlite3.Error as exc:
            log.error("store_commit_failed", error=str(exc), jobs=len(jobs))
            try:
                conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            for job in jobs:
                if job.error is None:
                    job.error = exc
        for job in jobs:
            job.finish()


async def run_store(path: Path, synchronous: str = "FULL", *, task_status=trio.TASK_STATUS_IGNORED) -> None:
    """A part of the root nursery: opens + migrates, reports the Store, and closes it cleanly when cancelled."""
    store = Store(path, synchronous)
    await store.open()
    log.info("store_open", path=path)
    try:
        task_status.started(store)
        await trio.sleep_forever()
    finally:
        with trio.CancelScope(shield=True):
            await store.close()
            log.info("store_closed", path=path)
