"""Admin API for groups of devices: static (members added and removed here) and dynamic (a filter over
inventory facts). A group's members are listed, with their facts, by GET /v1/devices?group=NAME; and
group:NAME works wherever enrollment ids are accepted (enqueue, push).

GET    /v1/groups                        every group with its member count
POST   /v1/groups                        {"name", "filter"?, "description"?}: static without a filter
GET    /v1/groups/NAME
PATCH  /v1/groups/NAME                   {"filter"?, "description"?}
DELETE /v1/groups/NAME
PUT    /v1/groups/NAME/members/ID,ID     add devices to a static group
DELETE /v1/groups/NAME/members/ID,ID     take them out
"""

from __future__ import annotations

from quart import Blueprint, jsonify

from appliance.service import groups as group_service
from appliance.store import groups
from appliance.store.device_filter import FilterError
from appliance.web.api import json_object
from appliance.web.app import runtime
from appliance.web.auth import require_api_key
from appliance.web.errors import ApiError

blueprint = Blueprint("groups_api", __name__)

MAX_IDS = 10_000


def _refusal(exc: Exception) -> ApiError:
    if isinstance(exc, FilterError):
        return ApiError(400, "bad_filter", str(exc), position=exc.position)
    return ApiError(exc.status, exc.code, str(exc))


@blueprint.get("/v1/groups")
@require_api_key
async def list_groups():
    return jsonify({"groups": await runtime().store.read(groups.list_groups)})


@blueprint.post("/v1/groups")
@require_api_key
async def create_group():
    document = await json_object()
    _only(document, {"name", "filter", "description"})
    try:
        created = await group_service.create(runtime(), groups.check_name(document.get("name")),
                                             filter_text=document.get("filter"),
                                             description=document.get("description"))
    except (groups.GroupError, FilterError) as exc:
        raise _refusal(exc) from None
    return jsonify(created), 201


@blueprint.get("/v1/groups/<name>")
@require_api_key
async def get_group(name: str):
    found = await runtime().store.read(groups.get, name)
    if found is None:
        raise ApiError(404, "group_not_found", f"no group named {name!r}")
    return jsonify(found)


@blueprint.patch("/v1/groups/<name>")
@require_api_key
async def update_group(name: str):
    document = await json_object()
    _only(document, {"filter", "description"})
    try:
        updated = await group_service.update(runtime(), name, filter_text=document.get("filter"),
                                             description=document.get("description"))
    except (groups.GroupError, FilterError) as exc:
        raise _refusal(exc) from None
    return jsonify(updated)


@blueprint.delete("/v1/groups/<name>")
@require_api_key
async def delete_group(name: str):
    try:
        left = await group_service.delete(runtime(), name)
    except groups.GroupError as exc:
        raise _refusal(exc) from None
    return jsonify({"name": name, "deleted": True, "members_removed": left})


@blueprint.put("/v1/groups/<name>/members/<ids>")
@require_api_key
async def add_members(name: str, ids: str):
    device_ids = _ids(ids)
    try:
        added = await group_service.add_members(runtime(), name, device_ids)
    except groups.GroupError as exc:
        raise _refusal(exc) from None
    return jsonify(await _membership(name, added=added))


@blueprint.delete("/v1/groups/<name>/members/<ids>")
@require_api_key
async def remove_members(name: str, ids: str):
    device_ids = _ids(ids)
    try:
        removed = await group_service.remove_members(runtime(), name, device_ids)
    except groups.GroupError as exc:
        raise _refusal(exc) from None
    return jsonify(await _membership(name, removed=removed))


async def _membership(name: str, **counts) -> dict:
    found = await runtime().store.read(groups.get, name)
    return {"name": found["name"], **counts, "member_count": found["member_count"]}


def _ids(path_ids: str) -> list[str]:
    ids = list(dict.fromkeys(i for i in path_ids.split(",") if i.strip()))
    if not ids:
        raise ApiError(400, "no_ids", "name at least one device id: /v1/groups/NAME/members/ID1,ID2")
    if len(ids) > MAX_IDS:
        raise ApiError(400, "too_many_ids", f"at most {MAX_IDS} ids per request")
    return ids


def _only(document: dict, allowed: set[str]) -> None:
    unknown = set(document) - allowed
    if unknown:
        raise ApiError(400, "bad_request", f"unknown field(s): {', '.join(sorted(unknown))}")
    for key in ("filter", "description"):
        if key in document and not isinstance(document[key], str):
            raise ApiError(400, "bad_request", f"\"{key}\" must be a string")
