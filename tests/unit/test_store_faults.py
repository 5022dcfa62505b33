"""The store under storage faults: every caller is told what is on disk.

A full database is made with SQLite's own `PRAGMA max_page_count` (a write that needs a page beyond it fails
with SQLITE_FULL, as on a full disk, and SQLite rolls the whole transaction back); a lock held elsewhere with a
second real connection; a stalled store thread with a job that waits. Nothing of the store is replaced.
"""

from __future__ import annotations

import sqlite3
import threading

import pytest
import trio
from trio.testing import wait_all_tasks_blocked

from appliance.store.db import QUEUE_DEADLINE, Store
from appliance.store.faults import StoreUnavailable


@pytest.fixture
async def store(tmp_path):
    store = Store(tmp_path / "t.db", busy_timeout=0.2)
    await store.open()
    await store.write(lambda c: c.execute("CREATE TABLE t (k TEXT PRIMARY KEY, v BLOB)"))
    yield store
    await store.close()


def insert(conn, key, value="small"):
    conn.execute("INSERT INTO t (k, v) VALUES (?, ?)", (key, value))
    return key


def insert_big(conn, key):
    """Needs ~50 new pages: past max_page_count, SQLite fails it with SQLITE_FULL and ends the transaction."""
    conn.execute("INSERT INTO t (k, v) VALUES (?, zeroblob(200000))", (key,))
    return key


async def fill(store):
    """No page may be added from now on; small rows still fit in the table's existing page."""
    await store.read(lambda c: c.execute("PRAGMA max_page_count = 1").fetchone())  # clamped to the file's size


async def make_room(store):
    await store.read(lambda c: c.execute("PRAGMA max_page_count = 1000000").fetchone())


async def keys(store) -> set[str]:
    return await store.read(lambda c: {row[0] for row in c.execute("SELECT k FROM t")})


async def one_batch(store, jobs) -> list:
    """Run write jobs in this order as one group-commit batch; each outcome is its result or its exception."""
    token = trio.lowlevel.current_trio_token()
    running, gate = trio.Event(), threading.Event()
    outcomes: list = [None] * len(jobs)

    def hold(conn):  # keeps the db thread busy until every write below is queued
        token.run_sync_soon(running.set)
        gate.wait(30)

    async def attempt(index, fn, *args):
        try:
            outcomes[index] = await store.write(fn, *args)
        except Exception as exc:  # noqa: BLE001 - the outcome under test
            outcomes[index] = exc

    async with trio.open_nursery() as nursery:
        nursery.start_soon(store.read, hold)
        await running.wait()
        for index, (fn, *args) in enumerate(jobs):
            nursery.start_soon(attempt, index, fn, *args)
            await wait_all_tasks_blocked()  # queued in this order
        gate.set()
    return outcomes


async def test_a_full_disk_in_mid_batch_never_lets_an_answer_differ_from_the_disk(store):
    await fill(store)
    commits = store.commits
    before, big, after = await one_batch(store, [(insert, "before"), (insert_big, "big"), (insert, "after")])
    stored = await keys(store)
    # Told it committed and on disk, or told it failed and not on disk: never one without the other.
    assert (before == "before") == ("before" in stored), (before, stored)
    assert (after == "after") == ("after" in stored), (after, stored)
    for outcome in (before, after):
        assert isinstance(outcome, (str, StoreUnavailable)), outcome  # a failure says it is the store's
    assert "big" not in stored
    assert isinstance(big, StoreUnavailable) and big.reason == "disk_full"
    assert store.commits > commits


async def test_jobs_that_lost_their_transaction_to_another_job_get_a_second_one(store):
    await fill(store)
    outcomes = await one_batch(store, [(insert, "a"), (insert_big, "big"), (insert, "b")])
    assert outcomes[0] == "a" and outcomes[2] == "b"
    assert await keys(store) == {"a", "b"}


async def test_jobs_are_refused_when_their_second_transaction_is_lost_too(store):
    await fill(store)
    first, innocent, second = await one_batch(
        store, [(insert_big, "big1"), (insert, "innocent"), (insert_big, "big2")])
    assert isinstance(first, StoreUnavailable) and isinstance(second, StoreUnavailable)
    # Its work was rolled back twice through no fault of its own: refused, and not stored.
    assert isinstance(innocent, StoreUnavailable) and innocent.reason == "disk_full"
    assert await keys(store) == set()


async def test_a_job_failing_on_its_own_keeps_its_error_when_the_batch_is_lost(store):
    await store.write(insert, "taken")
    await fill(store)
    duplicate, big, fresh = await one_batch(store, [(insert, "taken"), (insert_big, "big"), (insert, "fresh")])
    assert isinstance(duplicate, sqlite3.IntegrityError)  # a refusal of its own, and nothing stored
    assert isinstance(big, StoreUnavailable)
    assert fresh == "fresh"
    assert await keys(store) == {"taken", "fresh"}


async def test_disk_full_sets_the_fault_and_the_next_commit_clears_it(store):
    await fill(store)
    with pytest.raises(StoreUnavailable) as caught:
        await store.write(insert_big, "big")
    assert caught.value.retry_after > 0
    name, details, severity = await store.health()
    assert (name, severity, details["fault"]) == ("store", "error", "disk_full")
    assert "full" in await store.status_phrase()
    assert store.refused["disk_full"] == 1
    await make_room(store)
    assert await store.write(insert_big, "big") == "big"
    assert await store.health() == ("store", {"fault": None}, "ok")
    assert await store.status_phrase() is None


async def test_a_lock_held_by_another_process_is_waited_for_briefly_then_refused(store, tmp_path):
    other = sqlite3.connect(tmp_path / "t.db", isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(StoreUnavailable) as caught:
            await store.write(insert, "x")
        assert caught.value.reason == "busy"
        assert await keys(store) == set()  # reads go on under WAL while the lock is held
        assert (await store.health())[1]["fault"] == "busy"
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert await store.write(insert, "x") == "x"
    assert (await store.health())[2] == "ok"


async def test_jobs_queued_behind_a_stalled_job_are_refused_at_their_deadline_and_never_run(store, mock_clock):
    token = trio.lowlevel.current_trio_token()
    running, release = trio.Event(), threading.Event()
    outcomes: dict = {}

    def stalled(conn):  # a write that hangs on the db thread (a hung disk, say)
        token.run_sync_soon(running.set)
        release.wait(30)
        return insert(conn, "stalled")

    async def attempt(name, call, *args):
        try:
            outcomes[name] = await call(*args)
        except StoreUnavailable as exc:
            outcomes[name] = exc

    async with trio.open_nursery() as nursery:
        nursery.start_soon(attempt, "stalled", store.write, stalled)
        await running.wait()
        nursery.start_soon(attempt, "write", store.write, insert, "queued")
        nursery.start_soon(attempt, "read", store.read, lambda c: c.execute("SELECT count(*) FROM t").fetchone())
        await wait_all_tasks_blocked()
        mock_clock.jump(QUEUE_DEADLINE + 1)
        await wait_all_tasks_blocked()
        assert isinstance(outcomes.get("write"), StoreUnavailable), outcomes
        assert isinstance(outcomes.get("read"), StoreUnavailable), outcomes
        assert outcomes["write"].reason == outcomes["read"].reason == "queue_timeout"
        assert "stalled" not in outcomes  # already running at its deadline: its caller waits for the truth
        release.set()
    assert outcomes["stalled"] == "stalled"
    assert await keys(store) == {"stalled"}  # the refused write never ran, not even once the thread was free
    assert store.refused["queue_timeout"] == 2
