"""Live inventory: the worker that queues the inventory commands, and the steps that read their answers
into the device record where reports arrive.

- The worker (run_inventory, in the root nursery) queues the configured inventory commands for every
  enrolled device when it enrolls (its first TokenUpdate wakes the worker) and again every
  [inventory] interval, jittered so a fleet enrolled in one morning does not answer in one minute.
  A command of a type still pending for a device (queued, sent or NotNow'd) is not queued again:
  a device that stays away for months finds one of each, not one a day.
- answer_step wraps the report transaction's core: an Acknowledged answer to DeviceInformation,
  SecurityInfo, ProfileList, CertificateList or InstalledApplicationList (whoever enqueued it) updates
  the device record in the same transaction as the result is stored.
- authenticate_step wraps the check-in core: an Authenticate that changes OS version, build or name
  leaves a dated history row, as an inventory answer does.
Either step also moves the device in and out of dynamic groups when its facts change.
"""

from __future__ import annotations

import functools
import random
import sqlite3
import uuid
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from functools import partial
from typing import TypeVar

import trio

from appliance.identity.certificate import describe
from appliance.logs import get_logger
from appliance.protocol import inventory
from appliance.protocol.commands import Command, build_command
from appliance.protocol.messages import ACKNOWLEDGED, Authenticate, CheckIn, Report
from appliance.store import groups, queue
from appliance.store import inventory as inventory_store
from appliance.store.db import StoreClosed
from appliance.store.faults import StoreUnavailable
from appliance.store.timefmt import from_text, now, to_text

log = get_logger("inventory")
T = TypeVar("T")

# While many devices are due at once (the first run on an existing fleet), queue them a batch at a time:
# 200 devices every 5 s is ~250 device requests a second, well within what one core answers.
BATCH = 200
BATCH_PAUSE = 5.0
RETRY_SECONDS = 30.0   # after a storage fault
LONGEST_SLEEP = 3600.0  # look again at least this often, whatever the schedule says


# --- where answers arrive (on the db thread, inside the request's transaction) ------------------------

def answer_step(core: Callable[..., tuple[T, str]]) -> Callable[..., tuple[T, str]]:
    """Wrap the report core `(conn, message, options) -> (answer, outcome)`: after it stored an
    Acknowledged result, read an inventory answer into the device record."""

    @functools.wraps(core)
    def step(conn: sqlite3.Connection, message: Report, options) -> tuple[T, str]:
        answer, outcome = core(conn, message, options)
        if outcome == "stored" and message.status == ACKNOWLEDGED and not message.enrollment.is_user_channel:
            if record_answer(conn, message):
                options.groups_changed = True
        return answer, outcome

    return step


def authenticate_step(core: Callable[..., T]) -> Callable[..., T]:
    """Wrap the check-in core: an Authenticate's OS, build and name changes are dated, and dynamic groups
    follow the device's facts (a new device joins the groups it matches)."""

    @functools.wraps(core)
    def step(conn: sqlite3.Connection, message: CheckIn, options) -> T:
        if not isinstance(message, Authenticate):
            return core(conn, message, options)
        device_id = message.enrollment.device_id
        before = inventory_store.history_facts(conn, device_id)
        result = core(conn, message, options)
        moment = to_text(now())
        inventory_store.record_history(conn, device_id, before, inventory_store.history_facts(conn, device_id),
                                       "Authenticate", moment)
        if groups.refresh_device(conn, device_id, moment):
            options.groups_changed = True
        return result

    return step


def record_answer(conn: sqlite3.Connection, message: Report) -> int:
    """Read the answer into the device record if its command was an inventory command; returns how many
    group memberships changed."""
    row = conn.execute("SELECT request_type FROM commands WHERE uuid = ?", (message.command_uuid,)).fetchone()
    if row is None or row[0] not in inventory.REQUEST_TYPES:
        return 0
    device_id = message.enrollment.device_id
    try:
        answer = inventory.read_answer(row[0], message.message)
    except inventory.InventoryError as exc:
        # The result itself is stored; only the device record stays as it was.
        log.warning("inventory_answer_unreadable", enrollment_id=device_id, command_uuid=message.command_uuid,
                    request_type=row[0], reason=str(exc))
        return 0
    moment = to_text(now())
    if answer.device is not None:
        before = inventory_store.history_facts(conn, device_id)
        inventory_store.record_device_information(conn, device_id, answer.device, moment)
        changes = inventory_store.record_history(conn, device_id, before,
                                                 inventory_store.history_facts(conn, device_id),
                                                 inventory.DEVICE_INFORMATION, moment)
        for fact, old, new in changes:
            log.info("device_fact_changed", enrollment_id=device_id, fact=fact, old=old, new=new)
    elif answer.security is not None:
        inventory_store.record_security_info(conn, device_id, answer.security, moment)
    elif answer.profiles is not None:
        inventory_store.record_profiles(conn, device_id, answer.profiles, moment)
    elif answer.certificates is not None:
        inventory_store.record_certificates(conn, device_id, [_certificate_row(c) for c in answer.certificates],
                                            moment)
    elif answer.applications is not None:
        inventory_store.record_applications(conn, device_id, answer.applications, moment)
    if answer.problems:
        log.info("inventory_answer_partly_read", enrollment_id=device_id, request_type=row[0],
                 skipped="; ".join(answer.problems[:5]), skipped_count=len(answer.problems))
    return groups.refresh_device(conn, device_id, moment)


def _certificate_row(certificate: inventory.Certificate) -> inventory_store.CertificateRow:
    details = describe(certificate.data)
    subject, issuer, not_after = details if details else (None, None, None)
    return inventory_store.CertificateRow(certificate.common_name, certificate.is_identity, certificate.sha256,
                                          subject, issuer, to_text(not_after) if not_after else None)


# --- the worker ---------------------------------------------------------------------------------------

def inventory_commands(request_types: Sequence[str]) -> list[Command]:
    """One fresh command (new CommandUUID) per request type, checked by the one command validator."""
    return [build_command(inventory.command(request_type), str(uuid.uuid4()).upper())
            for request_type in request_types]


def queue_due(conn: sqlite3.Connection, commands: Sequence[Command], moment: str, dues: Sequence[str],
              limit: int) -> tuple[list[str], bool]:
    """Queue the inventory commands for up to `limit` due devices, skipping a type a device still has
    pending, and schedule their next inventory (dues[i] for the i-th device). Returns (the device ids
    something was queued for, whether more may be due)."""
    devices = inventory_store.due_devices(conn, moment, limit)
    if not devices:
        return [], False
    pending = inventory_store.pending_request_types(conn, devices, [c.request_type for c in commands])
    queued: set[str] = set()
    for command in commands:
        targets = [device for device in devices if command.request_type not in pending.get(device, ())]
        if targets:
            queue.enqueue(conn, command.uuid, command.request_type, command.body, targets)
            queued.update(targets)
    inventory_store.schedule(conn, [(device, moment, dues[index]) for index, device in enumerate(devices)])
    return sorted(queued), len(devices) == limit


class InventoryService:
    """runtime.inventory: wake() when a device enrolls; the loop queues what is due."""

    def __init__(self, runtime) -> None:
        cfg = runtime.config.inventory
        self.runtime = runtime
        self.request_types = tuple(cfg.commands)
        self.interval = cfg.interval
        self.jitter = cfg.jitter
        self._wake = trio.Event()

    def wake(self) -> None:
        self._wake.set()

    def _dues(self, moment: datetime, count: int) -> list[str]:
        return [to_text(moment + timedelta(seconds=self.interval + random.uniform(-self.jitter, self.jitter)))
                for _ in range(count)]

    async def queue_once(self) -> tuple[int, bool]:
        """Queue one batch of due devices and push them; returns (devices queued for, more may be due)."""
        moment = now()
        commands = inventory_commands(self.request_types)
        queued, more = await self.runtime.store.write(queue_due, commands, to_text(moment),
                                                      self._dues(moment, BATCH), BATCH)
        if queued:
            log.info("inventory_queued", devices=len(queued), request_types=",".join(self.request_types))
            if self.runtime.push is not None:
                self.runtime.push.request_push(queued)
        return len(queued), more

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        task_status.started(self)
        if not self.request_types:
            return  # [inventory] commands = []: no scheduled inventory
        while True:
            self._wake = trio.Event()
            try:
                while (await self.queue_once())[1]:
                    await trio.sleep(BATCH_PAUSE)
                next_due = await self.runtime.store.read(inventory_store.next_due)
            except StoreUnavailable:
                await self._wait(RETRY_SECONDS)  # the store's health says why
                continue
            except StoreClosed:
                return
            seconds = LONGEST_SLEEP
            if next_due is not None:
                seconds = min(LONGEST_SLEEP, max(1.0, (from_text(next_due) - now()).total_seconds()))
            await self._wait(seconds)

    async def _wait(self, seconds: float) -> None:
        """Until `seconds` have passed on the appliance's clock (a test's clock moves at once), or wake()."""
        async with trio.open_nursery() as racing:
            async def first(wait) -> None:
                await wait()
                racing.cancel_scope.cancel()

            racing.start_soon(first, self._wake.wait)
            racing.start_soon(first, partial(self.runtime.clock.sleep, seconds))


async def run_inventory(runtime, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
    """The supervisor's inventory part; hands out the InventoryService."""
    await InventoryService(runtime).run(task_status=task_status)
