"""The appliance clock: an OffsetClock moves when told, wakes its sleepers, and is what the store thread and
the tasks of whoever installed it read."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest
import trio
import trio.testing

from appliance import clock as clocks
from appliance.clock import OffsetClock
from appliance.store import timefmt
from appliance.store.db import Store


def test_an_offset_clock_jumps_when_advanced_and_keeps_running():
    clock = OffsetClock(datetime(2031, 5, 1, 12, tzinfo=UTC))
    assert abs(clock.now() - datetime(2031, 5, 1, 12, tzinfo=UTC)) < timedelta(minutes=1)
    before = clock.now()
    after = clock.advance(timedelta(days=40))
    assert timedelta(days=40) <= after - before < timedelta(days=40, minutes=1)
    assert clock.advance(90) - after >= timedelta(seconds=90)
    with pytest.raises(ValueError, match="forward"):
        clock.advance(timedelta(seconds=-1))
    with pytest.raises(ValueError, match="timezone"):
        clock.set(datetime(2031, 1, 1))


def test_the_clock_is_read_the_same_from_another_thread():
    clock = OffsetClock()
    clock.advance(timedelta(days=400))
    seen = []
    thread = threading.Thread(target=lambda: seen.append(clock.now()))
    thread.start()
    thread.join()
    assert seen[0] - datetime.now(UTC) > timedelta(days=399)


async def test_a_sleep_on_the_clock_ends_when_an_advance_reaches_it():
    clock = OffsetClock()
    woke = trio.Event()

    async def sleeper():
        await clock.sleep(3 * 86400)
        woke.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(sleeper)
        await trio.testing.wait_all_tasks_blocked()
        clock.advance(timedelta(days=1))
        await trio.testing.wait_all_tasks_blocked()
        assert not woke.is_set()  # two days still to go
        clock.advance(timedelta(days=2))
        with trio.fail_after(5):
            await woke.wait()


async def test_tasks_and_the_store_thread_read_the_clock_in_use(tmp_path):
    clock = OffsetClock(datetime(2033, 3, 3, tzinfo=UTC))
    assert clocks.now().year == datetime.now(UTC).year  # nobody installed one: the system's
    seen = {}

    async def child():
        seen["task"] = timefmt.now()

    async def serving():
        clocks.use(clock)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(child)
        seen["thread"] = await trio.to_thread.run_sync(timefmt.now)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(serving)
    store = Store(tmp_path / "clock.db", clock=clock)
    await store.open()
    try:
        seen["store"] = await store.read(lambda conn: timefmt.now())
    finally:
        await store.close()
    assert {name: moment.date() for name, moment in seen.items()} == dict.fromkeys(seen, clock.now().date())
    assert clocks.now().year == datetime.now(UTC).year  # and it stayed with the task that installed it
