"""appliance.web.early_answer without a socket: an app's request channel once the app has returned."""

from __future__ import annotations

import trio
from hypercorn.config import Config
from hypercorn.trio.task_group import TaskGroup

from appliance.web.early_answer import AppTaskGroup


async def _answer_at_once(scope, receive, send, sync_spawn, call_soon) -> None:
    await send({"type": "http.response.start", "status": 404, "headers": []})
    await send({"type": "http.response.body", "body": b""})


async def _feed_after_return(task_group_class) -> list:
    sent: list = []

    async def send(message) -> None:
        sent.append(message)

    async with task_group_class() as task_group:
        put = await task_group.spawn_app(_answer_at_once, Config(), {"type": "http"}, send)
        while None not in sent:  # hypercorn's _handle sends None once the app has returned
            await trio.sleep(0)
        # The client keeps sending its body: more messages than the channel holds (10), then a disconnect.
        for _ in range(25):
            await put({"type": "http.request", "body": b"x" * 16384, "more_body": True})
        await put({"type": "http.disconnect"})
    return sent


async def test_data_for_an_app_that_has_returned_is_dropped_at_once():
    with trio.fail_after(5):
        sent = await _feed_after_return(AppTaskGroup)
    assert [m and m["type"] for m in sent] == ["http.response.start", "http.response.body", None]


async def test_hypercorns_own_task_group_blocks_there():
    # The bug AppTaskGroup fixes: the eleventh message waits for a reader that is gone, for good.
    with trio.move_on_after(1) as waited:
        await _feed_after_return(TaskGroup)
    assert waited.cancelled_caught
