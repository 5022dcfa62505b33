"""Command expiry: a command still pending on an enrollment when its queue row's expires_at comes is
taken off that queue and recorded as a result of status Expired, with the webhook event
appliance.CommandExpired, in one write transaction per batch.

next_command already skips an expired row, so a device is never sent one even before this worker has
run; the worker only makes the history say so. It wakes at the next expiry (at least every
CHECK_SECONDS, on the appliance's clock, so a test that moves the clock a month on sees it at once).
"""

from __future__ import annotations

import sqlite3

import trio

from appliance.logs import get_logger
from appliance.protocol.enrollment import from_record
from appliance.store import outbox, queue
from appliance.store.db import StoreClosed
from appliance.store.faults import StoreUnavailable
from appliance.store.timefmt import from_text, now, now_text
from appliance.webhook.events import command_expired_event

log = get_logger("expiry")

BATCH = 200
CHECK_SECONDS = 60.0
MIN_WAIT = 1.0  # expiries a second apart share a sweep


def _expire_batch(conn: sqlite3.Connection, moment: str, webhook: bool) -> int:
    expired = queue.expire(conn, moment, BATCH)
    if webhook:
        for row in expired:
            enrollment = from_record(row["enrollment_id"], row["device_id"], row["enrollment_type"])
            topic, body = command_expired_event(
                udid=enrollment.udid, enrollment_id=enrollment.enrollment_id, ids=enrollment.ids(),
                command_uuid=row["command_uuid"], request_type=row["request_type"], queued_at=row["created_at"],
                expires_at=row["expires_at"], sent_at=row["sent_at"], not_now_count=row["not_now_count"])
            outbox.add(conn, enrollment_id=row["enrollment_id"], topic=topic, body=body)
    return len(expired)


async def expire_due(runtime) -> int:
    """Expire every queue row whose time has come, a batch per write job; returns how many. Writes only
    while some are due (an empty write transaction would tell the store its commits work again, hiding a
    storage fault)."""
    webhook = runtime.config.webhook.url is not None
    total = 0
    while _due(await runtime.store.read(queue.next_expiry)):
        count = await runtime.store.write(_expire_batch, now_text(), webhook)
        total += count
        if count and webhook and runtime.webhooks is not None:
            runtime.webhooks.wake()
        if count < BATCH:
            break
    if total:
        log.info("commands_expired", count=total)
    return total


def _due(expires_at: str | None) -> bool:
    return expires_at is not None and expires_at <= now_text()


async def run_expiry(runtime, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
    """A part of the supervisor's workers nursery."""
    task_status.started()
    try:
        while True:
            try:
                await expire_due(runtime)
                following = from_text(await runtime.store.read(queue.next_expiry))
            except StoreUnavailable as exc:
                log.warning("expiry_waiting", reason=exc.reason, retry_in_seconds=exc.retry_after)
                await trio.sleep(exc.retry_after)
                continue
            wait = CHECK_SECONDS
            if following is not None:
                wait = min(wait, max(MIN_WAIT, (following - now()).total_seconds()))
            await runtime.clock.sleep(wait)
    except StoreClosed:
        log.info("expiry_stopped", reason="store closed")
