"""Enqueueing a command for many enrollments, and the NanoMDM-compatible answer.

One write transaction stores the command body once and a queue row per known enrollment (10,000 ids in
one call stay one transaction). Then, like NanoMDM, the answer carries each push's outcome: the APNs id
in push_result, or push_error. For up to PUSH_ANSWER_MAX_IDS ids the request waits for APNs (at most
PUSH_ANSWER_SECONDS; one multiplexed HTTP/2 batch, typically a few ms); for more ids, or past the
deadline, push_result is "scheduled" and the pushes go on in the background, so a fleet-wide enqueue
stays fast. The answer keeps NanoMDM's shape and status codes (200 all ok, 207 some failed, 500 all
failed) but gives every id its entry, also with nopush, so callers can tell an unknown id from a queued
one (PROTOCOL.md section 9). An id may be group:NAME: it stands for the group's members at that moment
(each gets its own entry; the group's membership is recorded with the command).
"""

from __future__ import annotations

import json
from typing import Any

from appliance.logs import get_logger
from appliance.protocol.commands import Command
from appliance.store import fleet, groups, queue
from appliance.store.timefmt import now_text

log = get_logger("commands")

# push_result of a push not answered within the request (too many ids, or APNs slower than the deadline).
PUSH_SCHEDULED = "scheduled"
PUSH_ANSWER_MAX_IDS = 1000
PUSH_ANSWER_SECONDS = 3.0
UNKNOWN_GROUP = "unknown group"
EMPTY_GROUP = "group has no members"


class BadCommand(ValueError):
    """The enrollment ids of the request are wrong as a whole (a 400 with this reason). What is wrong with
    the command itself is appliance.protocol.commands' MessageError."""


class DuplicateCommand(ValueError):
    """The CommandUUID was used before (a 409)."""


class CountChanged(ValueError):
    """A person confirmed a destructive command for `confirmed` enrollments, but the ids (a group's members)
    stand for `found` when it is queued: nothing was queued."""

    def __init__(self, confirmed: int, found: int) -> None:
        super().__init__(f"confirmed for {confirmed} devices, but it goes to {found} now")
        self.confirmed, self.found = confirmed, found


def split_ids(path_ids: str) -> list[str]:
    """'id1,id2,...' from the URL -> unique ids in the order given. Empty entries (a trailing comma from a
    script joining ids) are skipped, as NanoMDM's push endpoint does."""
    ids = [eid for eid in path_ids.split(",") if eid.strip()]
    if not ids:
        raise BadCommand("no enrollment ids given: /v1/enqueue/ID1,ID2")
    return list(dict.fromkeys(ids))


def check_ids(ids: list[Any]) -> list[str]:
    if not ids:
        raise BadCommand("no enrollment ids given")
    for eid in ids:
        if not isinstance(eid, str) or not eid.strip():
            raise BadCommand(f"every enrollment id must be a non-empty string, not {json.dumps(eid)[:40]}")
    return list(dict.fromkeys(ids))


def _enqueue_and_check(conn, command: Command, ids: list[str], with_push: bool, ttl: float | None, now: str,
                       confirmed: int | None = None):
    # group:NAME stands for the group's members as they are in this transaction, recorded with the command.
    targets, snapshots, unknown = groups.expand(conn, ids)
    if confirmed is not None and len(targets) != confirmed:
        raise CountChanged(confirmed, len(targets))  # counted in the same transaction that would queue it
    outcome = queue.enqueue(conn, command.uuid, command.request_type, command.body, targets, ttl=ttl)
    queued = [eid for eid, error in outcome.items() if error is None]
    if queued and snapshots:
        groups.record_for_command(conn, command.uuid, snapshots, now)
    outcome.update(group_errors(unknown, snapshots))
    reasons = fleet.pushability(conn, queued) if with_push else {}
    return outcome, reasons


def group_errors(unknown: list[str], snapshots: list[groups.Snapshot]) -> dict[str, str]:
    """An entry for each group:NAME that stood for nobody, so the caller sees why nothing went there."""
    errors = {entry: UNKNOWN_GROUP for entry in unknown}
    errors.update({groups.PREFIX + s.name: EMPTY_GROUP for s in snapshots if not s.members})
    return errors


async def enqueue(runtime, command: Command, ids: list[str], *, no_push: bool, ttl: float | None = None,
                  confirmed: int | None = None) -> tuple[int, dict]:
    """Queue the command to every id and push them; returns (HTTP status, NanoMDM-shaped answer).
    ttl: seconds until it expires where still pending (0: never; None: [queue] command_ttl).
    confirmed: the number of devices a person typed to confirm it; CountChanged (nothing queued) when the
    ids, groups expanded, stand for another number at the moment of queueing."""
    push = None if no_push else runtime.push
    seconds = runtime.config.queue.command_ttl if ttl is None else ttl
    try:
        outcome, reasons = await runtime.store.write(_enqueue_and_check, command, ids, push is not None,
                                                     seconds or None, now_text(), confirmed)
    except queue.CommandExists:
        raise DuplicateCommand(
            f"CommandUUID {command.uuid} was already used; every command needs a new UUID"
        ) from None
    status: dict[str, dict] = {}
    to_push: list[str] = []
    for eid, error in outcome.items():
        entry: dict[str, str] = {}
        if error is not None:
            entry["command_error"] = error
        elif push is not None:
            reason = reasons.get(eid)
            if reason is None:
                to_push.append(eid)
            else:
                entry["push_error"] = reason
        status[eid] = entry
    pushed = await _push(push, to_push)
    for eid in to_push:
        result = pushed.get(eid)
        if result is None:
            status[eid]["push_result"] = PUSH_SCHEDULED
        elif result.ok:
            status[eid]["push_result"] = result.apns_id or ""
        else:
            status[eid]["push_error"] = result.error
    answer: dict[str, Any] = {
        "status": status,
        "no_push": no_push,
        "command_uuid": command.uuid,
        "request_type": command.request_type,
    }
    if not no_push and runtime.push is None:
        answer["push_error"] = "the push service is not running; devices get the command at their next check-in"
    failed = sum(1 for entry in status.values() if "command_error" in entry or "push_error" in entry)
    queued = sum(1 for error in outcome.values() if error is None)
    log.info("command_enqueued", command_uuid=command.uuid, request_type=command.request_type,
             ids=len(status), queued=queued, pushes=len(to_push), failed=failed)
    return answer_code(len(status), failed), answer


async def _push(push, ids: list[str]) -> dict:
    """{id: PushOutcome} when APNs answered in time; {} when the pushes were only scheduled."""
    if not ids:
        return {}
    if len(ids) <= PUSH_ANSWER_MAX_IDS:
        outcomes = await push.push_answered(ids, PUSH_ANSWER_SECONDS)
        if outcomes is not None:
            return outcomes
        log.info("push_answer_deadline", ids=len(ids), seconds=PUSH_ANSWER_SECONDS)
    else:
        push.request_push(ids)
    return {}


def answer_code(total: int, failed: int) -> int:
    """NanoMDM's meaning: 200 every id succeeded, 207 some failed, 500 all failed."""
    if failed == 0:
        return 200
    return 500 if failed >= total else 207
