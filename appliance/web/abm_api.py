"""Admin API for Apple Business Manager: server entries (key pair, token), sync now, devices and their
profile assignment. Every route needs the API key; errors in the one JSON format.

POST   /v1/abm/servers/NAME             a key pair for a new entry; the certificate to upload in ABM
GET    /v1/abm/servers[/NAME]           entries: token expiry, sync state, last error, device counts
GET    /v1/abm/servers/NAME/certificate the certificate again (PEM)
PUT    /v1/abm/servers/NAME/token       the server_token_*.p7m downloaded from ABM; used at once
POST   /v1/abm/servers/NAME/sync        sync now (?full=1: fetch every device again)
DELETE /v1/abm/servers/NAME             forget the entry and its devices
GET    /v1/abm/devices[/SERIAL]         ABM devices and where each stands
POST   /v1/abm/devices/assign|unassign  {"serials": [...]}: assign the profile now, or take it off for good
"""

from __future__ import annotations

from functools import partial

import trio
from quart import Blueprint, Response, jsonify, request

from appliance.identity import abm_token
from appliance.store import abm as abm_store
from appliance.store.timefmt import now, to_text
from appliance.web.api import _arg, _bool_arg, _cursor, _encode_cursor, _flag, _limit, json_object
from appliance.web.app import runtime
from appliance.web.auth import require_api_key
from appliance.web.errors import ApiError

blueprint = Blueprint("abm_api", __name__)

MAX_SERIALS = 10_000


def _name(name: str) -> str:
    if not abm_store.SERVER_NAME.fullmatch(name):
        raise ApiError(400, "bad_name", "an ABM server name is 1-64 letters, digits, '.', '_' or '-' "
                                        "(starting with a letter or digit)")
    return name


async def _server_or_404(name: str) -> dict:
    found = await runtime().store.read(abm_store.server, _name(name))
    if found is None:
        raise ApiError(404, "abm_server_not_found", f"no ABM server {name!r}: make one with "
                                                     f"POST /v1/abm/servers/{name}")
    return found


def _service():
    service = runtime().abm
    if service is None:
        raise ApiError(503, "abm_unavailable", "the ABM service is not running")
    return service


async def _described(servers: list[dict]) -> list[dict]:
    rt = runtime()
    counts = await rt.store.read(abm_store.counts)
    status = {entry["name"]: entry for entry in rt.abm.status(servers)} if rt.abm is not None else {}
    described = []
    for server in servers:
        name = server["name"]
        entry = {key: server[key] for key in ("name", "created_at", "has_token", "token_expires_at",
                                              "token_imported_at", "account", "phase", "cursor_at",
                                              "last_full_fetch_at", "last_sync_at", "last_error", "last_error_at",
                                              "profile_uuid", "profile_defined_at")}
        state = status.get(name, {})
        entry["token_state"] = state.get("token_state")
        entry["token_days_left"] = state.get("token_days_left")
        entry["devices"] = {device_state: count for (server_name, device_state), count in counts.items()
                            if server_name == name}
        described.append(entry)
    return described


@blueprint.get("/v1/abm/servers")
@require_api_key
async def list_servers():
    rt = runtime()
    servers = await rt.store.read(abm_store.servers)
    return jsonify({"servers": await _described(servers)})


@blueprint.get("/v1/abm/servers/<name>")
@require_api_key
async def get_server(name: str):
    found = await _server_or_404(name)
    return jsonify((await _described([found]))[0])


@blueprint.post("/v1/abm/servers/<name>")
@require_api_key
async def create_server(name: str):
    rt = runtime()
    _name(name)
    replace = _flag("replace")
    keypair = await trio.to_thread.run_sync(abm_token.make_keypair, name, rt.config.server.organization)
    try:
        await rt.store.write(partial(abm_store.create_server, name=name, certificate_pem=keypair.certificate_pem,
                                     key_pem=keypair.private_key_pem, replace=replace))
    except abm_store.ServerExists:
        raise ApiError(409, "abm_server_exists", f"ABM server {name!r} exists: its certificate is at GET "
                       f"/v1/abm/servers/{name}/certificate; ?replace=1 makes a new key pair (its token then "
                       "needs replacing too)") from None
    if rt.abm is not None:
        await rt.abm.refresh()
    return jsonify({"name": name, "certificate": keypair.certificate_pem.decode("ascii"),
                    "next": "upload the certificate in Apple Business Manager (Preferences, your MDM server), "
                            "download its token, then PUT it to /v1/abm/servers/" + name + "/token"}), 201


@blueprint.get("/v1/abm/servers/<name>/certificate")
@require_api_key
async def get_certificate(name: str):
    found = await _server_or_404(name)
    return Response(found["certificate"], status=200, content_type="application/x-pem-file")


@blueprint.put("/v1/abm/servers/<name>/token")
@require_api_key
async def put_token(name: str):
    rt = runtime()
    _name(name)
    body = await request.get_data()
    secrets = await rt.store.read(abm_store.secrets, name)
    if secrets is None:
        raise ApiError(404, "abm_server_not_found", f"no ABM server {name!r}: make its key pair first")
    certificate_pem, key_pem, _ = secrets
    keypair = abm_token.KeyPair(certificate_pem, key_pem)
    try:
        token = await trio.to_thread.run_sync(abm_token.decrypt_server_token, body, keypair, now())
    except abm_token.TokenError as exc:
        raise ApiError(400, "invalid_server_token", str(exc)) from None
    try:
        await rt.store.write(abm_store.set_token, name, token.as_json(), token.expires_at)
    except abm_store.UnknownServer:
        raise ApiError(404, "abm_server_not_found", f"no ABM server {name!r}") from None
    if rt.abm is not None:
        await rt.abm.refresh()  # the worker starts with it now
    days = int((token.expires_at - now()).total_seconds() // 86400) if token.expires_at else None
    return jsonify({"name": name, "token_expires_at": to_text(token.expires_at) if token.expires_at else None,
                    "token_days_left": days})


@blueprint.post("/v1/abm/servers/<name>/sync")
@require_api_key
async def sync_now(name: str):
    found = await _server_or_404(name)
    if not found["has_token"]:
        raise ApiError(409, "no_server_token", f"ABM server {name!r} has no token yet: PUT it to "
                                               f"/v1/abm/servers/{name}/token")
    full = _flag("full")
    if not _service().sync_now(name, full=full):
        raise ApiError(503, "abm_unavailable", f"no worker runs for ABM server {name!r} yet; try again")
    return jsonify({"name": name, "full": full, "started": True}), 202


@blueprint.delete("/v1/abm/servers/<name>")
@require_api_key
async def delete_server(name: str):
    rt = runtime()
    _name(name)
    try:
        removed = await rt.store.write(abm_store.delete_server, name)
    except abm_store.UnknownServer:
        raise ApiError(404, "abm_server_not_found", f"no ABM server {name!r}") from None
    if rt.abm is not None:
        await rt.abm.refresh()
    return jsonify({"name": name, "devices_forgotten": removed})


# --- devices -----------------------------------------------------------------------------------------

@blueprint.get("/v1/abm/devices")
@require_api_key
async def list_devices():
    limit = _limit()
    state = _arg("state")
    if state is not None and state not in abm_store.ASSIGN_STATES:
        raise ApiError(400, "bad_parameter", f"?state= must be one of {', '.join(abm_store.ASSIGN_STATES)}")
    filters = {"server": _arg("server"), "state": state, "serial": _arg("serial"), "enrolled": _bool_arg("enrolled"),
               "after": _cursor(str), "limit": limit + 1}
    rows = await runtime().store.read(lambda conn: abm_store.list_devices(conn, **filters))
    page, more = rows[:limit], len(rows) > limit
    return jsonify({"devices": page, "next_cursor": _encode_cursor(page[-1]["serial_number"]) if more else None})


@blueprint.get("/v1/abm/devices/<serial>")
@require_api_key
async def get_device(serial: str):
    found = await runtime().store.read(abm_store.device, serial)
    if found is None:
        raise ApiError(404, "abm_device_not_found", f"no ABM device with serial number {serial!r}")
    return jsonify(found)


async def _serials() -> list[str]:
    document = await json_object()
    serials = document.get("serials")
    unknown = set(document) - {"serials"}
    if unknown:
        raise ApiError(400, "bad_request", f"unknown field(s): {', '.join(sorted(unknown))}")
    if (not isinstance(serials, list) or not serials or len(serials) > MAX_SERIALS
            or not all(isinstance(s, str) and s.strip() and len(s) <= 128 for s in serials)):
        raise ApiError(400, "bad_request", f"\"serials\" must be an array of 1 to {MAX_SERIALS} serial numbers")
    return list(dict.fromkeys(s.strip() for s in serials))


@blueprint.post("/v1/abm/devices/assign")
@require_api_key
async def assign():
    serials = await _serials()
    return jsonify({"devices": await _service().assign(serials)})


@blueprint.post("/v1/abm/devices/unassign")
@require_api_key
async def unassign():
    serials = await _serials()
    return jsonify({"devices": await _service().unassign(serials)})
