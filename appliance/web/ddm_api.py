"""The DDM admin API under /api/v1/ddm: KMFDDM's routes, answers and status codes (as NanoHUB mounts KMFDDM),
so KMFDDM's and NanoHUB's tools work with a base-URL change, plus our own: a fleet-wide status summary, one
enrollment's overview, sets assigned to groups, hosted assets and OS-update enforcement.

KMFDDM's codes: a change answers 204 when something changed and 304 when it was already so (KMFDDM's
nonotify=1 skips telling the devices). Errors use the one error format of the API ({"error": {"code",
"message"}}) where KMFDDM has {"error": "..."}: the status codes are the same. Checks KMFDDM lacks: a
declaration is checked against Apple's schema (warnings come back as `Warning` headers), a reference to a
declaration that does not exist is refused, and a declaration still in a set or named by another cannot be
deleted (409).
"""

from __future__ import annotations

import json
from email.utils import format_datetime

from quart import Blueprint, Response, jsonify, request

from appliance.logs import get_logger
from appliance.service.ddm import Conflict, NotFound, Refused, Saved
from appliance.store import ddm as store
from appliance.store import groups
from appliance.store.timefmt import from_text
from appliance.web.app import runtime
from appliance.web.auth import require_api_key
from appliance.web.errors import ApiError

blueprint = Blueprint("ddm_api", __name__)
log = get_logger("ddm")

PREFIX = "/api/v1/ddm"
MAX_IDS = 1000  # enrollment ids per status request (comma-separated in the path)


def _service():
    ddm = runtime().ddm
    if ddm is None:
        raise ApiError(503, "ddm_not_running", "the DDM service is not running")
    return ddm


async def _call(coroutine):
    """Run a service call, turning its refusals into the API's error answers."""
    try:
        return await coroutine
    except Refused as exc:
        log.info("ddm_api_refused", path=request.path, reason=str(exc))
        raise ApiError(400, "bad_request", str(exc)) from None
    except NotFound as exc:
        raise ApiError(404, "not_found", str(exc)) from None
    except Conflict as exc:
        raise ApiError(409, "conflict", str(exc)) from None


def _changed(changed: bool, warnings: tuple[str, ...] = ()) -> Response:
    """KMFDDM's answer to a change: 204 it changed, 304 it was already so."""
    response = Response("", status=204 if changed else 304)
    for warning in warnings:
        # RFC 7234's Warning header (299: a persistent warning); header values are ASCII.
        text = warning.encode("ascii", "replace").decode().replace('"', "'")
        response.headers.add("Warning", f'299 mdm-appliance "{text}"')
    return response


def _notify() -> bool:
    """KMFDDM's ?nonotify: true unless it is present with a value other than "", 0, false, no, off."""
    return request.args.get("nonotify", "").strip().lower() in ("", "0", "false", "no", "off")


def _required_arg(name: str) -> str:
    value = request.args.get(name, "")
    if not value:
        raise ApiError(400, "bad_request", f"?{name}= is required")
    return value


def _ids(path_ids: str) -> list[str]:
    ids = list(dict.fromkeys(part for part in path_ids.split(",") if part))
    if not ids:
        raise ApiError(400, "bad_request", "name at least one enrollment id")
    if len(ids) > MAX_IDS:
        raise ApiError(400, "bad_request", f"at most {MAX_IDS} enrollment ids per request")
    return ids


# --- declarations ------------------------------------------------------------------------------------

@blueprint.get(f"{PREFIX}/declarations")
@require_api_key
async def list_declarations():
    """KMFDDM: the identifiers. ?detail=1: objects with type, token, sets; ?builtin=1 adds the appliance's own."""
    rows = await _service().declarations(builtin=request.args.get("builtin") == "1")
    if request.args.get("detail") == "1":
        return jsonify(rows)
    return jsonify([row["identifier"] for row in rows])


@blueprint.put(f"{PREFIX}/declarations")
@require_api_key
async def put_declaration():
    body = await request.get_data()
    saved: Saved = await _call(_service().put_declaration(body, notify=_notify()))
    return _changed(saved.changed, saved.warnings)


@blueprint.get(f"{PREFIX}/declarations/<identifier>")
@require_api_key
async def get_declaration(identifier: str):
    found = await _service().declaration(identifier)
    if found is None:
        raise ApiError(404, "declaration_not_found", f"no declaration {identifier!r}")
    return jsonify(found)


@blueprint.delete(f"{PREFIX}/declarations/<identifier>")
@require_api_key
async def delete_declaration(identifier: str):
    return _changed(await _call(_service().delete_declaration(identifier)))


@blueprint.post(f"{PREFIX}/declarations/<identifier>/touch")
@require_api_key
async def touch_declaration(identifier: str):
    await request.get_data()
    await _call(_service().touch(identifier, notify=_notify()))
    return Response("", status=204)


# --- sets --------------------------------------------------------------------------------------------

@blueprint.get(f"{PREFIX}/sets")
@require_api_key
async def list_sets():
    return jsonify(await _service().sets())


@blueprint.get(f"{PREFIX}/set-declarations/<set_name>")
@require_api_key
async def get_set_declarations(set_name: str):
    return jsonify(await _service().set_declarations(set_name))


@blueprint.route(f"{PREFIX}/set-declarations/<set_name>", methods=["PUT", "DELETE"])
@require_api_key
async def change_set_declarations(set_name: str):
    await request.get_data()
    identifier = _required_arg("declaration")
    changed = await _call(_service().change_set(set_name, identifier, add=request.method == "PUT",
                                                notify=_notify()))
    return _changed(changed)


@blueprint.get(f"{PREFIX}/declaration-sets/<identifier>")
@require_api_key
async def get_declaration_sets(identifier: str):
    return jsonify(await _service().declaration_sets(identifier))


# --- enrollments -------------------------------------------------------------------------------------

@blueprint.get(f"{PREFIX}/enrollment-sets/<enrollment_id>")
@require_api_key
async def get_enrollment_sets(enrollment_id: str):
    return jsonify(await _service().enrollment_sets(enrollment_id))


@blueprint.route(f"{PREFIX}/enrollment-sets/<enrollment_id>", methods=["PUT", "DELETE"])
@require_api_key
async def change_enrollment_sets(enrollment_id: str):
    await request.get_data()
    set_name = _required_arg("set")
    changed = await _call(_service().change_assignment([enrollment_id], set_name, add=request.method == "PUT",
                                                       notify=_notify()))
    return _changed(bool(changed))


# KMFDDM's tools call the first path; its server registers the second.
@blueprint.delete(f"{PREFIX}/enrollment-sets-all/<enrollment_id>")
@blueprint.delete(f"{PREFIX}/enrollment-sets-all/sets/<enrollment_id>")
@require_api_key
async def delete_all_enrollment_sets(enrollment_id: str):
    changed = await _call(_service().change_assignment([enrollment_id], None, add=False, notify=_notify()))
    return _changed(bool(changed))


# --- ours: sets assigned to groups ------------------------------------------------------------------

@blueprint.get(f"{PREFIX}/group-sets/<group>")
@require_api_key
async def get_group_sets(group: str):
    return jsonify(await _call(_service().group_sets(group)))


@blueprint.route(f"{PREFIX}/group-sets/<group>", methods=["PUT", "DELETE"])
@require_api_key
async def change_group_sets(group: str):
    """As enrollment-sets, for a group of devices: its members' device channels get the set while members."""
    await request.get_data()
    set_name = _required_arg("set")
    changed = await _call(_service().change_group_assignment(group, set_name, add=request.method == "PUT",
                                                             notify=_notify()))
    return _changed(changed)


# --- status ------------------------------------------------------------------------------------------

async def _read(fn, *args):
    return await runtime().store.read(fn, *args)


@blueprint.get(f"{PREFIX}/declaration-status/<ids>")
@require_api_key
async def declaration_status(ids: str):
    return jsonify(await _read(store.declaration_status, _ids(ids)))


@blueprint.get(f"{PREFIX}/status-errors/<ids>")
@require_api_key
async def status_errors(ids: str):
    return jsonify(await _read(store.status_errors, _ids(ids)))


@blueprint.get(f"{PREFIX}/status-values/<ids>")
@require_api_key
async def status_values(ids: str):
    prefix = request.args.get("prefix") or None
    return jsonify(await _read(store.status_values, _ids(ids), prefix))


@blueprint.get(f"{PREFIX}/status-report/<enrollment_id>")
@require_api_key
async def status_report(enrollment_id: str):
    index_text, status_id = request.args.get("index"), request.args.get("status_id") or None
    index = None
    if index_text is not None:
        if not index_text.isdigit() or int(index_text) > 100_000:
            raise ApiError(400, "bad_parameter", "?index= must be a whole number (0 = the newest report)")
        index = int(index_text)
    found = await runtime().store.read(lambda conn: store.status_report(conn, enrollment_id, index=index,
                                                                        report_id=status_id))
    if found is None:
        raise ApiError(404, "status_report_not_found", f"no such status report for {enrollment_id!r}")
    response = Response(bytes(found["raw"]), status=200, content_type="application/json")
    response.headers["Last-Modified"] = format_datetime(from_text(found["received_at"]), usegmt=True)
    response.headers["X-Status-Report-Index"] = str(found["index"])
    response.headers["X-Status-Report-ID"] = found["report_id"]
    return response


@blueprint.post(f"{PREFIX}/notify")
@require_api_key
async def notify():
    await request.get_data()
    args = request.args
    ids = [eid for eid in args.getlist("id") if eid]
    if any(eid.startswith(groups.PREFIX) for eid in ids):  # group:NAME: its members now, as in enqueue
        ids, _, unknown = await runtime().store.read(groups.expand, ids)
        if unknown:
            raise ApiError(404, "group_not_found", f"no group named {unknown[0][len(groups.PREFIX):]!r}")
    await _call(_service().notify(declarations=[d for d in args.getlist("declaration") if d],
                                  sets=[s for s in args.getlist("set") if s], enrollment_ids=ids))
    return Response("", status=204)


# --- ours: fleet status, one enrollment, assets, OS updates -----------------------------------------

@blueprint.get(f"{PREFIX}/status-summary")
@require_api_key
async def status_summary():
    identifier, group = request.args.get("declaration") or None, request.args.get("group") or None
    return jsonify({"declarations": await _call(_service().summary(identifier, group))})


@blueprint.get(f"{PREFIX}/enrollments/<enrollment_id>")
@require_api_key
async def enrollment_overview(enrollment_id: str):
    return jsonify(await _service().overview(enrollment_id))


@blueprint.put(f"{PREFIX}/assets/<identifier>")
@require_api_key
async def put_asset(identifier: str):
    data = await request.get_data()
    asset_type = request.args.get("type") or "com.apple.asset.data"
    content_type = request.headers.get("Content-Type", "application/octet-stream")
    saved: Saved = await _call(_service().put_asset(identifier, data, content_type, asset_type, notify=_notify()))
    return _changed(saved.changed, saved.warnings)


@blueprint.post(f"{PREFIX}/os-update")
@require_api_key
async def os_update():
    data = await request.get_data()
    try:
        document = json.loads(data)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise ApiError(400, "bad_json", "body is not JSON") from None
    if not isinstance(document, dict):
        raise ApiError(400, "bad_json", "body must be a JSON object")
    unknown = set(document) - {"version", "deadline", "build", "details_url", "enrollment_ids", "groups"}
    if unknown:
        raise ApiError(400, "bad_request", f"unknown field(s): {', '.join(sorted(unknown))}")
    ids, group_names = document.get("enrollment_ids", []), document.get("groups", [])
    if not isinstance(ids, list) or not all(isinstance(eid, str) and eid for eid in ids):
        raise ApiError(400, "bad_request", "\"enrollment_ids\" must be an array of enrollment ids")
    if not isinstance(group_names, list) or not all(isinstance(name, str) for name in group_names):
        raise ApiError(400, "bad_request", "\"groups\" must be an array of group names")
    for name in ("version", "deadline"):
        if not isinstance(document.get(name), str):
            raise ApiError(400, "bad_request", f"\"{name}\" is required, as a string")
    for name in ("build", "details_url"):
        if document.get(name) is not None and not isinstance(document[name], str):
            raise ApiError(400, "bad_request", f"\"{name}\" must be a string")
    service = _service()
    result = await _call(service.os_update(document["version"], document["deadline"], build=document.get("build"),
                                           details_url=document.get("details_url"),
                                           enrollment_ids=list(dict.fromkeys(ids)), group_names=group_names,
                                           notify=_notify()))
    [progress] = await service.summary(result["set"])
    return jsonify({**result, "progress": progress})
