"""The admin API under /v1: enqueue (NanoMDM's raw form and a JSON form), the command catalog, devices,
commands, queues.

Every route needs the API key (appliance.web.auth); errors are JSON {"error": {"code", "message"}}.
Lists page by an opaque cursor: pass the answer's next_cursor back as ?cursor= until it is null.
"""

from __future__ import annotations

import base64
import binascii
import json

from quart import Blueprint, Response, jsonify, request

from appliance.config import parse_duration
from appliance.protocol import catalog, plist
from appliance.protocol import commands as command_rules
from appliance.protocol.errors import MessageError
from appliance.protocol.plistjson import JsonPlistError, to_json
from appliance.service import commands
from appliance.store import abm as abm_store
from appliance.store import device_filter, device_search, fleet, groups, queue
from appliance.web.app import runtime
from appliance.web.auth import require_api_key
from appliance.web.errors import ApiError

blueprint = Blueprint("api", __name__)

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
MAX_TTL = 3650 * 86400.0
MAX_SEARCH_TEXT = 200


# --- enqueue ---------------------------------------------------------------------------------------

@blueprint.route("/v1/enqueue/<ids>", methods=["PUT"])
@require_api_key
async def enqueue_raw(ids: str):
    """NanoMDM's enqueue: a raw command plist for one or many comma-separated enrollment ids."""
    rt = runtime()
    try:
        enrollment_ids = commands.split_ids(ids)
        command = command_rules.parse_command(await request.get_data(), max_size=rt.config.server.max_body_size)
    except (commands.BadCommand, MessageError) as exc:
        raise ApiError(400, "bad_command", str(exc)) from None
    return await _enqueue(command, enrollment_ids, _flag("nopush"))


@blueprint.route("/v1/commands", methods=["POST"])
@require_api_key
async def enqueue_json():
    """{"enrollment_ids": [...], "command": {"RequestType": ..., ...}, "command_uuid"?, "no_push"?}."""
    document = await json_object()
    unknown = set(document) - {"enrollment_ids", "command", "command_uuid", "no_push"}
    if unknown:
        raise ApiError(400, "bad_request", f"unknown field(s): {', '.join(sorted(unknown))}")
    ids, no_push, command_uuid = document.get("enrollment_ids"), document.get("no_push", False), document.get("command_uuid")
    if not isinstance(ids, list):
        raise ApiError(400, "bad_request", "\"enrollment_ids\" must be an array of enrollment ids")
    if not isinstance(no_push, bool):
        raise ApiError(400, "bad_request", "\"no_push\" must be true or false")
    if command_uuid is not None and (not isinstance(command_uuid, str) or not command_uuid.strip()):
        raise ApiError(400, "bad_request", "\"command_uuid\" must be a non-empty string (or left out)")
    try:
        enrollment_ids = commands.check_ids(ids)
        command = command_rules.build_command(document.get("command"), command_uuid)
    except (commands.BadCommand, MessageError) as exc:
        raise ApiError(400, "bad_command", str(exc)) from None
    return await _enqueue(command, enrollment_ids, no_push)


async def _enqueue(command: command_rules.Command, enrollment_ids: list[str], no_push: bool):
    ttl = _ttl()
    if _flag("strict"):
        # Opt-in: any raw command stays accepted without it (NanoMDM compatibility).
        try:
            catalog.check(command.command)
        except catalog.CatalogError as exc:
            raise ApiError(400, "bad_command", str(exc)) from None
    try:
        code, answer = await commands.enqueue(runtime(), command, enrollment_ids, no_push=no_push, ttl=ttl)
    except commands.DuplicateCommand as exc:
        raise ApiError(409, "command_exists", str(exc)) from None
    return jsonify(answer), code


@blueprint.get("/v1/catalog")
@require_api_key
async def get_catalog():
    """The commands the appliance knows, with their keys, platforms and whether they are destructive."""
    return jsonify(catalog.to_json())


# --- devices ---------------------------------------------------------------------------------------

@blueprint.get("/v1/devices")
@require_api_key
async def list_devices():
    """Devices matching ?q= (text), ?filter= (the device filter language), ?group=, ?serial=, ?udid=,
    ?active=, sorted by ?sort= (?order=asc|desc), a page of ?limit= at a time. A plain listing by id goes on
    with the devices Apple Business Manager assigned to us that have not enrolled yet (id null, by serial
    number): its cursor is then {"abm": last serial number}."""
    active = _bool_arg("active")
    sort = _arg("sort") or "id"
    if sort not in device_search.SORTS:
        raise ApiError(400, "bad_parameter", f"?sort= must be one of {', '.join(device_search.SORTS)}")
    order = _arg("order") or "asc"
    if order not in ("asc", "desc"):
        raise ApiError(400, "bad_parameter", "?order= must be asc or desc")
    text = _arg("q")
    if text is not None and len(text) > MAX_SEARCH_TEXT:
        raise ApiError(400, "bad_parameter", f"?q= is longer than {MAX_SEARCH_TEXT} characters")
    cursor = _cursor((list, str, dict))
    abm_after = _abm_cursor(cursor)
    query = device_search.DeviceQuery(
        text=text, state="all" if active is None else "active" if active else "inactive",
        filter=_device_filter(_arg("filter")), group=_arg("group"), serial=_arg("serial"), udid=_arg("udid"),
        sort=sort, descending=order == "desc", after=None if abm_after is not None else _sort_cursor(sort, cursor),
        limit=_limit())
    if query.group is not None and await runtime().store.read(groups.get, query.group) is None:
        raise ApiError(404, "group_not_found", f"no group named {query.group!r}")
    # Devices not enrolled yet have no facts to filter, group or sort on: only a plain listing shows them.
    with_abm = (query.filter is None and query.group is None and sort == "id" and order == "asc"
                and query.udid is None and active is not True)

    def read(conn) -> tuple[list[dict], int, list | dict | None]:
        if abm_after is None:
            page = device_search.search(conn, query)
            devices, total = page.devices, page.total
            next_cursor: list | dict | None = list(page.next_after) if page.next_after else None
        else:
            devices, total, next_cursor = [], device_search.count(conn, query), None
        if not with_abm:
            return devices, total, next_cursor
        total += abm_store.count_unenrolled(conn, text=text, serial=query.serial)
        if next_cursor is None:  # the enrolled devices are done: fill the page with the ABM ones
            room = query.limit - len(devices)
            rows = abm_store.unenrolled_devices(conn, text=text, serial=query.serial, after=abm_after,
                                                limit=room + 1)
            devices += rows[:room]
            if len(rows) > room:  # "" when the enrolled devices filled this page: the ABM part from its start
                next_cursor = {"abm": rows[room - 1]["serial_number"] if room else ""}
        return devices, total, next_cursor

    devices, total, next_cursor = await runtime().store.read(read)
    identities = await runtime().renewals.describe([row["id"] for row in devices if row["id"] is not None])
    for row in devices:
        row.pop("sort_key", None)
        identity = identities.get(row["id"]) if row["id"] is not None else None
        row["identity_not_after"] = identity["not_after"] if identity else None
        row["identity_renewal"] = identity["renewal"]["state"] if identity else None
    return jsonify({"devices": devices, "total": total,
                    "next_cursor": _encode_cursor(next_cursor) if next_cursor else None})


def _abm_cursor(cursor) -> str | None:
    if not isinstance(cursor, dict):
        return None
    if list(cursor) != ["abm"] or not isinstance(cursor["abm"], str):
        raise ApiError(400, "bad_cursor", "cursor is not one this API handed out")
    return cursor["abm"]

def _device_filter(text: str | None):
    if text is None:
        return None
    try:
        return device_filter.parse(text)
    except device_filter.FilterError as exc:
        raise ApiError(400, "bad_filter", f"?filter= {exc}", position=exc.position) from None


def _sort_cursor(sort: str, after) -> tuple[str, str] | None:
    """[sort key, id] as handed out; a plain id is what this API handed out before sorting existed."""
    if isinstance(after, str) and sort == "id":
        return after, after
    if isinstance(after, list) and len(after) == 2 and all(isinstance(part, str) for part in after):
        return after[0], after[1]
    if after is not None:
        raise ApiError(400, "bad_cursor", "cursor is not one this API handed out for this sort")
    return None


@blueprint.get("/v1/devices/<device_id>")
@require_api_key
async def get_device(device_id: str):
    def read(conn):
        found = fleet.device(conn, device_id)
        if found is not None:
            # Joined by serial number: what Apple Business Manager says of it, and its ADE setup.
            found["abm"] = abm_store.abm_summary(conn, found["serial_number"])
        return found

    found = await runtime().store.read(read)
    if found is None:
        raise ApiError(404, "device_not_found", f"no device with id {device_id!r}")
    # The bound identity with its issuer, lifetime and renewal (service/renewal.py).
    found["identity_certificate"] = (await runtime().renewals.describe([device_id])).get(device_id)
    return jsonify(found)


@blueprint.get("/v1/devices/<device_id>/commands")
@require_api_key
async def device_commands(device_id: str):
    limit = _limit()
    after = _cursor(list)
    if after is not None and (len(after) != 3 or not all(isinstance(part, str) for part in after)):
        raise ApiError(400, "bad_cursor", "cursor is not one this API handed out")

    def read(conn):
        if not fleet.device_or_enrollment_exists(conn, device_id):
            return None
        return fleet.enrollment_commands(conn, device_id, after=tuple(after) if after else None, limit=limit + 1)

    rows = await runtime().store.read(read)
    if rows is None:
        raise ApiError(404, "device_not_found", f"no device or enrollment with id {device_id!r}")
    page, more = rows[:limit], len(rows) > limit
    for row in page:
        row["error_chain"] = _chain(row["error_chain"])
    cursor = None
    if more:
        last = page[-1]
        cursor = _encode_cursor([last["queued_at"], last["enrollment_id"], last["command_uuid"]])
    return jsonify({"commands": page, "next_cursor": cursor})


@blueprint.delete("/v1/devices/<enrollment_id>/queue")
@require_api_key
async def clear_queue(enrollment_id: str):
    def clear(conn):
        if not fleet.enrollment_exists(conn, enrollment_id):
            return None
        return queue.clear_queue(conn, enrollment_id)

    cleared = await runtime().store.write(clear)
    if cleared is None:
        raise ApiError(404, "enrollment_not_found", f"no enrollment with id {enrollment_id!r}")
    return jsonify({"enrollment_id": enrollment_id, "cleared": cleared})


@blueprint.delete("/v1/devices/<enrollment_id>/queue/<command_uuid>")
@require_api_key
async def cancel_pending(enrollment_id: str, command_uuid: str):
    """One command off one enrollment's queue (DELETE /v1/commands/UUID cancels it everywhere)."""
    def cancel(conn):
        if not fleet.enrollment_exists(conn, enrollment_id):
            return None
        return queue.cancel_pending(conn, enrollment_id, command_uuid)

    cancelled = await runtime().store.write(cancel)
    if cancelled is None:
        raise ApiError(404, "enrollment_not_found", f"no enrollment with id {enrollment_id!r}")
    if not cancelled:
        raise ApiError(404, "command_not_pending",
                       f"command {command_uuid!r} is not pending on {enrollment_id!r} (answered, cancelled or never queued)")
    return jsonify({"enrollment_id": enrollment_id, "command_uuid": command_uuid, "cancelled": cancelled})


# --- commands --------------------------------------------------------------------------------------

@blueprint.get("/v1/commands/<command_uuid>")
@require_api_key
async def get_command(command_uuid: str):
    limit = _limit()
    after = _cursor(str)
    only = _arg("enrollment_id")
    as_plist = _format()

    def read(conn):
        found = fleet.command(conn, command_uuid)
        if found is None:
            return None
        rows = fleet.command_enrollments(conn, command_uuid, enrollment_id=only, after=after,
                                         limit=2 if as_plist else limit + 1)
        counts = None if as_plist else fleet.command_counts(conn, command_uuid)
        targeted = None if as_plist else groups.command_groups(conn, command_uuid)
        return found, rows, counts, targeted

    got = await runtime().store.read(read)
    if got is None:
        raise ApiError(404, "command_not_found", f"no command with uuid {command_uuid!r}")
    found, rows, counts, targeted = got
    if as_plist:
        return _raw_result(command_uuid, rows, only)
    page, more = rows[:limit], len(rows) > limit
    return jsonify({
        "command_uuid": found["uuid"],
        "request_type": found["request_type"],
        "created_at": found["created_at"],
        "command": _plist_json(found["body"]),
        "counts": counts,
        # Groups it was enqueued to (group:NAME), with their members at that moment.
        "groups": targeted,
        "enrollments": [_enrollment_status(row) for row in page],
        "next_cursor": _encode_cursor(page[-1]["enrollment_id"]) if more else None,
    })


@blueprint.delete("/v1/commands/<command_uuid>")
@require_api_key
async def cancel_command(command_uuid: str):
    def cancel(conn):
        if fleet.command(conn, command_uuid) is None:
            return None
        return queue.cancel_command(conn, command_uuid)

    cancelled = await runtime().store.write(cancel)
    if cancelled is None:
        raise ApiError(404, "command_not_found", f"no command with uuid {command_uuid!r}")
    return jsonify({"command_uuid": command_uuid, "cancelled": cancelled})


@blueprint.get("/v1/queue/stuck")
@require_api_key
async def stuck_devices():
    """Devices with a pending command NotNow'd more than ?threshold= times ([queue] not_now_threshold)."""
    rt = runtime()
    limit, after = _limit(), _cursor(str)
    value = _arg("threshold")
    if value is None:
        threshold = rt.config.queue.not_now_threshold
    elif value.isdigit() and 0 <= int(value) <= 1_000_000:
        threshold = int(value)
    else:
        raise ApiError(400, "bad_parameter", "?threshold= must be a whole number from 0 to 1000000")
    rows = await rt.store.read(lambda conn: queue.stuck(conn, threshold, after=after, limit=limit + 1))
    page, more = rows[:limit], len(rows) > limit
    return jsonify({"threshold": threshold, "devices": page,
                    "next_cursor": _encode_cursor(page[-1]["device_id"]) if more else None})


def _raw_result(command_uuid: str, rows, only: str | None) -> Response:
    finished = [row for row in rows if row["raw"]]  # Expired has no answer of the device (empty raw)
    if not finished:
        raise ApiError(404, "result_not_found",
                       f"no result for command {command_uuid!r}" + (f" from {only!r}" if only else "") + " yet")
    if len(rows) > 1 and only is None:
        raise ApiError(400, "enrollment_required",
                       "the command went to several enrollments: add ?enrollment_id= to pick one result")
    raw = bytes(finished[0]["raw"])
    xml = raw.lstrip().startswith((b"<?xml", b"<plist", b"<!DOCTYPE"))
    return Response(raw, status=200, content_type=plist.CONTENT_TYPE if xml else "application/octet-stream")


def _enrollment_status(row) -> dict:
    entry = {
        "enrollment_id": row["enrollment_id"],
        "status": row["status"],
        "queued_at": row["queued_at"],
        "sent_at": row["sent_at"],
        "not_now_count": row["not_now_count"],
        "expires_at": row["expires_at"],
        "received_at": row["received_at"],
        "error_chain": _chain(row["error_chain"]),
        "result": _plist_json(row["raw"]) if row["raw"] else None,  # none while pending, or Expired
    }
    return entry


def _plist_json(raw) -> object:
    """A stored command or result as JSON; bytes no JSON mapping can show (not a plist, absurdly nested)
    as {"$data": base64} of the raw bytes (?format=plist gives them as they are)."""
    try:
        return to_json(plist.load(bytes(raw)))
    except (plist.PlistError, JsonPlistError):
        return {"$data": base64.b64encode(bytes(raw)).decode("ascii")}


def _chain(text: str | None):
    if text is None:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return text


# --- request helpers -------------------------------------------------------------------------------

def _arg(name: str) -> str | None:
    value = request.args.get(name)
    return value if value not in (None, "") else None


def _flag(name: str) -> bool:
    """NanoMDM's ?nopush=1: any value but empty, 0 or false means yes."""
    value = request.args.get(name)
    return value is not None and value.strip().lower() not in ("", "0", "false", "no")


def _bool_arg(name: str) -> bool | None:
    value = _arg(name)
    if value is None:
        return None
    lowered = value.lower()
    if lowered in ("1", "true", "yes"):
        return True
    if lowered in ("0", "false", "no"):
        return False
    raise ApiError(400, "bad_parameter", f"?{name}= must be true or false")


def _ttl() -> float | None:
    """?ttl=: how long the command may wait for a final status before it expires ("3600", "12h", "7d";
    0: never). None when absent: [queue] command_ttl applies."""
    value = _arg("ttl")
    if value is None:
        return None
    try:
        seconds = parse_duration(value)
    except ValueError:
        seconds = -1.0
    if not 0 <= seconds <= MAX_TTL:
        raise ApiError(400, "bad_parameter", "?ttl= must be a duration from 0 (never expires) to 3650d, in seconds "
                       "or like \"12h\", \"7d\"")
    return seconds


def _format() -> bool:
    value = _arg("format")
    if value is None or value == "json":
        return False
    if value == "plist":
        return True
    raise ApiError(400, "bad_parameter", "?format= must be json or plist")


def _limit() -> int:
    value = _arg("limit")
    if value is None:
        return DEFAULT_LIMIT
    if not value.isdigit() or not 1 <= int(value) <= MAX_LIMIT:
        raise ApiError(400, "bad_parameter", f"?limit= must be a whole number from 1 to {MAX_LIMIT}")
    return int(value)


def _encode_cursor(value) -> str:
    return base64.urlsafe_b64encode(json.dumps(value, separators=(",", ":")).encode()).decode().rstrip("=")


def _cursor(kind: type):
    text = _arg("cursor")
    if text is None:
        return None
    try:
        value = json.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
    except (binascii.Error, ValueError):
        value = None
    if not isinstance(value, kind):
        raise ApiError(400, "bad_cursor", "cursor is not one this API handed out")
    return value


async def json_object() -> dict:
    data = await request.get_data()
    try:
        document = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        raise ApiError(400, "bad_json", "body is not JSON") from None
    except RecursionError:  # json's decoder recurses per nesting level
        raise ApiError(400, "bad_json", "body is nested too deeply") from None
    if not isinstance(document, dict):
        raise ApiError(400, "bad_json", "body must be a JSON object")
    return document
