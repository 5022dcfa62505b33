"""The retention worker: deletes what has outlived its [retention] age and gives the space back.

Every `interval` (and once at start) a pass deletes, for each kind with an age (0 keeps it forever), the
rows older than that: results, command bodies no queue row or result names any more (once older than the
results age), stray reports, inventory history, DDM status reports and errors. After each deletion job
it gives the pages that job freed back to the file system (incremental vacuum), so the free list stays
short: each page given back costs a walk of the free list, so a long one makes every step slow (at 1.2
million free pages, 0.9 s per 256; docs/PERFORMANCE.md). At the end it counts the tables for /metrics.

Every deletion is one write job of at most BATCH rows, group-committed with device requests like any
other write, and the worker then pauses as long as that job took: pruning gets at most about half of the
store thread, and device requests that arrive meanwhile go first. Delivered webhook events need nothing
here: the outbox deletes each one when its receiver answers 2xx (undelivered ones are never dropped).
"""

from __future__ import annotations

import time
from collections import Counter
from datetime import timedelta

import trio

from appliance.logs import get_logger
from appliance.store import retention, vacuum
from appliance.store.db import StoreClosed, connect_readonly
from appliance.store.faults import StoreUnavailable
from appliance.store.timefmt import now, to_text

log = get_logger("retention")

BATCH = 500  # rows per write job: 10-35 ms at a year of history for 5,000 devices (docs/PERFORMANCE.md)
VACUUM_STEP = 256  # pages given back per write job (1 MiB at 4 KiB pages)
COUNT_SECONDS = 300  # how often the table counts behind /metrics are refreshed between passes


class Retention:
    """What the worker offers the rest of the appliance: the latest database figures (`stats`, for
    /metrics) and the passes done so far."""

    def __init__(self, runtime) -> None:
        self.runtime = runtime
        self.config = runtime.config.retention
        self.stats: dict | None = None
        self.passes = 0
        self.longest_free_list = 0  # the most free pages a vacuum step of the last pass started from
        self.pass_done = trio.Event()  # set and replaced after each pass

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._count_now_and_then)
            task_status.started(self)
            while True:
                try:
                    await self.run_pass()
                except StoreUnavailable as exc:
                    # Disk full, say: what was deleted is committed, the rest waits for the next try.
                    log.warning("retention_waiting", reason=exc.reason, retry_in_seconds=exc.retry_after)
                    await trio.sleep(exc.retry_after)
                    continue
                # The appliance's clock: a test that moves it a month on gets the next pass at once.
                await self.runtime.clock.sleep(self.config.interval)

    async def run_pass(self) -> Counter:
        started = time.monotonic()
        moment = now()
        present = await self.runtime.store.read(retention.tables)
        pruned: Counter = Counter()
        self.longest_free_list, self._released = 0, 0
        for rule in retention.AGE_RULES:
            age = getattr(self.config, rule.kind)
            if not age or rule.table not in present:
                continue
            cutoff = to_text(moment - timedelta(seconds=age))
            pruned[rule.kind] += await self._older(rule, cutoff)
        if self.config.results:
            pruned["command_bodies"] += await self._commands(to_text(moment - timedelta(seconds=self.config.results)))
        await self._release()  # what was free before this pass (a database from an older version, say)
        released = await self._given_back()
        metrics = self.runtime.metrics
        pruned = +pruned  # the kinds that had something to prune
        for kind, count in pruned.items():
            metrics.retention_pruned.labels(kind).inc(count)
        seconds = time.monotonic() - started
        metrics.retention_last_pass.set(time.time())
        metrics.retention_pass_seconds.set(seconds)
        if pruned or released:
            log.info("retention_pass", seconds=f"{seconds:.1f}", released_bytes=released,
                     longest_free_list=self.longest_free_list,
                     **{kind: count for kind, count in sorted(pruned.items())})
        await self.count()
        self.passes += 1
        self.pass_done.set()
        self.pass_done = trio.Event()
        return pruned

    async def _older(self, rule: retention.AgeRule, cutoff: str) -> int:
        """Every row of the rule older than cutoff, a batch per write job; writes only while some are due."""
        store, total = self.runtime.store, 0
        while await store.read(retention.any_older, rule, cutoff):
            took = time.monotonic()
            deleted = await store.write(retention.prune_older, rule, cutoff, BATCH)
            total += deleted
            await trio.sleep(time.monotonic() - took)  # the writer's other half is the devices'
            await self._release()
            if deleted < BATCH:
                break
        return total

    async def _commands(self, cutoff: str) -> int:
        total, after = 0, None
        while True:
            unused, after = await self.runtime.store.read(retention.unused_commands, cutoff, after, BATCH)
            if unused:
                took = time.monotonic()
                total += await self.runtime.store.write(retention.delete_commands, unused)
                await trio.sleep(time.monotonic() - took)
                await self._release()
            if after is None:
                return total

    async def _release(self) -> None:
        """Give the free pages back, a step of at most VACUUM_STEP pages per write job; writes only while
        there are some."""
        free = await self.runtime.store.read(_free_pages)
        self.longest_free_list = max(self.longest_free_list, free)
        while free > 0:
            took = time.monotonic()
            pages = await self.runtime.store.write(vacuum.release, min(free, VACUUM_STEP))
            await trio.sleep(time.monotonic() - took)
            if not pages:
                break
            self._released, free = self._released + pages, free - pages

    async def _given_back(self) -> int:
        """The bytes the pass gave back, counted for /metrics."""
        if not self._released:
            return 0
        page_size = await self.runtime.store.read(_page_size)
        released = self._released * page_size
        self.runtime.metrics.retention_released.inc(released)
        # In WAL mode the file shrinks when the pages reach it: checkpoint now rather than at the next
        # 1,000 pages. A checkpoint may not run inside a transaction, so it goes as a read job; PASSIVE
        # never waits for readers.
        await self.runtime.store.read(vacuum.checkpoint)
        return released

    async def count(self) -> None:
        """Refresh `stats` on a read-only connection in a thread: the store's thread never counts rows."""
        path = self.runtime.store.path

        def read() -> dict:
            conn = connect_readonly(path)
            try:
                return retention.database_stats(conn, path)
            finally:
                conn.close()

        try:
            stats = await trio.to_thread.run_sync(read)
        except Exception as exc:  # figures for /metrics: the last ones stay, the appliance carries on
            log.warning("database_count_failed", error=repr(exc))
            return
        stats["counted_at"] = time.time()
        self.stats = stats

    async def _count_now_and_then(self) -> None:
        while True:
            await self.count()
            await trio.sleep(COUNT_SECONDS)


def _page_size(conn) -> int:
    return conn.execute("PRAGMA page_size").fetchone()[0]


def _free_pages(conn) -> int:
    """The free pages there are to give back: none unless incremental vacuum is on."""
    return vacuum.free_pages(conn) if vacuum.mode(conn) == "incremental" else 0


async def run_retention(runtime, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
    """A part of the supervisor's workers nursery; hands out its Retention."""
    worker = Retention(runtime)
    try:
        await worker.run(task_status=task_status)
    except StoreClosed:
        # Shutting down while a job was in flight: what was committed stays, the next start goes on.
        log.info("retention_stopped", reason="store closed")
