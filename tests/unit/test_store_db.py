"""The store thread: group commit, one caller's failure isolated from the others, durability order."""

from __future__ import annotations

import sqlite3

import pytest
import trio

from appliance.store.db import Store, StoreClosed


@pytest.fixture
async def store(tmp_path):
    store = Store(tmp_path / "t.db")
    await store.open()
    await store.write(lambda c: c.execute("CREATE TABLE t (k TEXT PRIMARY KEY, v INTEGER)"))
    yield store
    await store.close()


def insert(conn, key, value):
    conn.execute("INSERT INTO t (k, v) VALUES (?, ?)", (key, value))
    return key


async def test_concurrent_writes_share_commits(store):
    async with trio.open_nursery() as nursery:
        for i in range(200):
            nursery.start_soon(store.write, insert, f"k{i}", i)
    count = await store.read(lambda c: c.execute("SELECT count(*) FROM t").fetchone()[0])
    assert count == 200
    # 200 concurrent writers must not cost 200 fsyncs.
    assert store.commits < 200
    assert store.writes >= 200


async def test_a_failing_write_rolls_back_only_itself(store):
    results = {}

    async def attempt(key, value):
        try:
            results[key] = await store.write(insert, key, value)
        except sqlite3.IntegrityError as exc:
            results[key] = exc

    await store.write(insert, "taken", 0)

    def half_then_fail(conn):
        conn.execute("INSERT INTO t (k, v) VALUES ('partial', 1)")
        raise ValueError("boom")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(attempt, "a", 1)
        nursery.start_soon(attempt, "taken", 2)
        nursery.start_soon(attempt, "b", 3)
        nursery.start_soon(lambda: _expect_value_error(store.write(half_then_fail)))
    assert results["a"] == "a" and results["b"] == "b"
    assert isinstance(results["taken"], sqlite3.IntegrityError)
    keys = await store.read(lambda c: sorted(r[0] for r in c.execute("SELECT k FROM t")))
    assert keys == ["a", "b", "taken"]


async def _expect_value_error(awaitable):
    with pytest.raises(ValueError):
        await awaitable


async def test_a_cancelled_caller_still_gets_its_write_committed(store):
    with trio.move_on_after(0) as scope:
        await store.write(insert, "x", 1)
    assert not scope.cancelled_caught  # shielded: the write ran to commit
    assert await store.read(lambda c: c.execute("SELECT v FROM t WHERE k='x'").fetchone()[0]) == 1


async def test_writes_are_durable_once_returned(store, tmp_path):
    await store.write(insert, "durable", 7)
    other = sqlite3.connect(tmp_path / "t.db")
    assert other.execute("SELECT v FROM t WHERE k='durable'").fetchone()[0] == 7
    other.close()


async def test_closed_store_refuses_work(tmp_path):
    store = Store(tmp_path / "c.db")
    await store.open()
    await store.close()
    with pytest.raises(StoreClosed):
        await store.read(lambda c: 1)


async def test_a_cancelled_caller_of_a_closed_store_is_cancelled_not_refused(tmp_path):
    # The whole process stopping at once: workers still unwinding must not end it with StoreClosed.
    store = Store(tmp_path / "c.db")
    await store.open()
    await store.close()
    with trio.CancelScope() as scope:
        scope.cancel()
        await store.read(lambda c: 1)
    assert scope.cancelled_caught


async def test_open_failure_is_reported(tmp_path):
    (tmp_path / "dir.db").mkdir()
    with pytest.raises(sqlite3.OperationalError):
        await Store(tmp_path / "dir.db").open()
