"""Sending a command (to one device, a selection, a group, or every device a search matches), watching its
results arrive, and cancelling pending commands."""

from __future__ import annotations

import json
from dataclasses import dataclass
from urllib.parse import urlencode

from quart import jsonify, redirect, render_template, request

from appliance.protocol import catalog
from appliance.protocol import commands as command_rules
from appliance.protocol.errors import MessageError
from appliance.service import commands
from appliance.store import audit, fleet, groups
from appliance.store import queue as queue_store
from appliance.store.device_filter import FilterError
from appliance.store.device_search import matching_ids
from appliance.web.app import runtime
from appliance.web.console import forms, results
from appliance.web.console.base import PREFIX, Refused, audit_now, blueprint, can, page_error, render, requires, who
from appliance.web.console.pages import device_query

MAX_TARGETS = 10_000
SHOWN_ENROLLMENTS = 200
SEARCH_ARGS = ("all", "q", "state", "filter", "group")


@dataclass(frozen=True)
class Targets:
    """Where a command goes: what is handed to the enqueue, and how many devices that is now."""

    ids: list[str]  # enrollment ids, or one group:NAME (expanded, and recorded, when it is queued)
    count: int  # devices it stands for as read now; a destructive command's confirmation must match it
    chosen: str  # how they were chosen, in words
    group: str | None = None
    error: str | None = None


async def targets(args) -> Targets:
    """From ?ids=... (repeated or comma-separated), ?group=NAME, or ?all=1 with the devices page's search."""
    ids = [part.strip() for value in args.getlist("ids") for part in value.split(",") if part.strip()]
    if ids:
        ids = list(dict.fromkeys(ids))[:MAX_TARGETS + 1]
        return Targets(ids, len(ids), "selection")
    if args.get("all") == "1":
        try:
            query = device_query(args)
        except FilterError as exc:
            return Targets([], 0, "nothing", error=f"The filter cannot be used: {exc}")
        found = await runtime().store.read(matching_ids, query)
        return Targets(found[:MAX_TARGETS + 1], len(found), describe_search(query))
    name = (args.get("group") or "").strip()
    if name:
        group = await runtime().store.read(groups.get, name)
        if group is None:
            return Targets([], 0, "nothing", error=f"No group named “{name}”.")
        return Targets([groups.PREFIX + group["name"]], group["member_count"], f"group {group['name']}",
                       group=group["name"])
    return Targets([], 0, "nothing")


def describe_search(query) -> str:
    parts = [f"matching “{query.text}”"] if query.text else []
    if query.filter is not None:
        parts.append(f"where {query.filter.text}")
    if query.group:
        parts.append(f"in group {query.group}")
    if query.state != "all":
        parts.append(f"({query.state})")
    return " ".join(["every device", *parts])


RAW = "raw"  # the form's choice for a command the catalog does not know: RequestType + JSON keys


def _spec(request_type: str | None):
    return catalog.find(request_type) if request_type and request_type != RAW else None


async def _send_form(status: int, chosen: Targets, search: dict, request_type: str | None, form,
                     errors: list[str]):
    spec = _spec(request_type)
    all_groups = await runtime().store.read(groups.list_groups)
    return await render("send.html", status=status, targets=chosen, search=search, form=form, groups=all_groups,
                        errors=errors, request_type=request_type, spec=spec,
                        fields=forms.fields(spec) if spec else [], catalog=catalog.commands(),
                        categories=catalog.CATEGORIES, raw=RAW,
                        destructive=catalog.is_destructive(request_type or ""))


@blueprint.get(PREFIX + "/commands/new")
@requires("operator")
async def new_command():
    chosen = await targets(request.args)
    return await _send_form(400 if chosen.error else 200, chosen, _search_args(request.args),
                            request.args.get("type"), request.args, [chosen.error] if chosen.error else [])


def _search_args(args) -> dict:
    return {key: args[key] for key in SEARCH_ARGS if args.get(key)}


@blueprint.post(PREFIX + "/commands")
@requires("operator")
async def send_command():
    form, files = await request.form, await request.files
    chosen = await targets(form)
    request_type = (form.get("type") or "").strip()
    errors = [chosen.error] if chosen.error else []
    if chosen.group and not chosen.count:
        errors.append(f"Group {chosen.group} has no members.")
    elif not chosen.ids and not chosen.error:
        errors.append("Choose at least one device.")
    if chosen.count > MAX_TARGETS:
        errors.append(f"At most {MAX_TARGETS} devices per command.")
    command = None
    try:
        command = command_rules.build_command(_command_from_form(request_type, form, files))
    except (MessageError, ValueError) as exc:
        errors.append(str(exc))
    confirmed = None
    if command is not None and catalog.is_destructive(command.request_type):
        typed = form.get("confirm", "").strip()
        confirmed = int(typed) if typed.isdigit() and len(typed) < 7 else None
        if confirmed != chosen.count:
            errors.append(f"{command.request_type} is destructive: type the number of devices ({chosen.count}) "
                          "to confirm.")
    if errors:
        return await _send_form(400, chosen, _search_args(form), request_type, form, errors)
    try:
        code, answer = await commands.enqueue(runtime(), command, chosen.ids, no_push=False, confirmed=confirmed)
    except commands.CountChanged as exc:
        # The group's members changed since the form was read: nothing was queued; ask again with the number.
        chosen = await targets(form)
        return await _send_form(400, chosen, _search_args(form), request_type, form, [
            f"Not sent: {chosen.chosen} now has {exc.found} devices, not the {exc.confirmed} you confirmed. "
            f"Type {exc.found} to send {command.request_type} to them."])
    queued = [eid for eid, entry in answer["status"].items() if "command_error" not in entry]
    details = {"command_uuid": command.uuid, "request_type": command.request_type, "chosen": chosen.chosen,
               "refused": len(answer["status"]) - len(queued)}
    if chosen.group:
        details["group"] = chosen.group
    if confirmed is not None:
        details["confirmed"] = confirmed
    await audit_now("command.send", queued, details)
    return redirect(f"{PREFIX}/commands/{command.uuid}", 303)


def _command_from_form(request_type: str, form, files) -> dict:
    """The Command dictionary: typed by the catalog, or (raw) RequestType and keys as JSON."""
    if request_type != RAW:
        if not request_type:
            raise ValueError("Choose a command.")
        spec = catalog.get(request_type)
        return catalog.build(spec.request_type, forms.pairs(spec, form, files))
    keys_text = (form.get("keys") or "").strip()
    keys = {}
    if keys_text:
        try:
            keys = json.loads(keys_text)
        except ValueError:
            raise ValueError("The command's keys must be a JSON object, e.g. {\"Queries\": [\"OSVersion\"]}") from None
        if not isinstance(keys, dict):
            raise ValueError("The command's keys must be a JSON object")
    return {**keys, "RequestType": (form.get("request_type") or "").strip()}


async def _command_state(command_uuid: str):
    def read(conn):
        found = fleet.command(conn, command_uuid)
        if found is None:
            return None
        rows = [dict(row) for row in fleet.command_enrollments(conn, command_uuid, limit=SHOWN_ENROLLMENTS)]
        return dict(found), rows, fleet.command_counts(conn, command_uuid)

    got = await runtime().store.read(read)
    if got is None:
        return None
    found, rows, counts = got
    for row in rows:
        row["view"] = results.view(found["request_type"], row["raw"])
    return found, rows, counts


@blueprint.get(PREFIX + "/commands/<command_uuid>")
@requires("viewer")
async def command_page(command_uuid: str):
    state = await _command_state(command_uuid)
    if state is None:
        return await page_error(404, f"No command {command_uuid}.")
    found, rows, counts = state
    return await render("command.html", command=found, rows=rows, counts=counts,
                        sent=results.sent(found["body"]))


@blueprint.get(PREFIX + "/commands/<command_uuid>/status.json")
@requires("viewer")
async def command_status(command_uuid: str):
    """For the page's script: the status table as HTML, and whether anything is still pending."""
    from quart import g

    g.refresh_session = False  # a page left open and polling must not keep a session alive forever
    state = await _command_state(command_uuid)
    if state is None:
        return jsonify({"error": "no such command"}), 404
    found, rows, counts = state
    html = await render_template("_command_rows.html", command=found, rows=rows, counts=counts, can=can,
                                 csrf_token="")
    return jsonify({"pending": counts.get("pending", 0), "html": html})


@blueprint.post(PREFIX + "/devices/<device_id>/cancel")
@requires("operator")
async def cancel_pending(device_id: str):
    form = await request.form
    enrollment_id, command_uuid = form.get("enrollment_id", ""), form.get("command_uuid", "")
    stamp = who()

    def cancel(conn):
        if not fleet.enrollment_exists(conn, enrollment_id):
            return None
        cancelled = queue_store.cancel_pending(conn, enrollment_id, command_uuid)
        if cancelled:
            audit.record(conn, **stamp, action="command.cancel", target=enrollment_id,
                         details={"command_uuid": command_uuid})
        return cancelled

    cancelled = await runtime().store.write(cancel)
    if cancelled is None:
        raise Refused(404, f"No enrollment {enrollment_id}.")
    notice = "Command cancelled." if cancelled else "That command was no longer pending."
    return redirect(f"{PREFIX}/devices/{device_id}?" + urlencode({"notice": notice}), 303)


@blueprint.post(PREFIX + "/commands/<command_uuid>/cancel")
@requires("operator")
async def cancel_everywhere(command_uuid: str):
    stamp = who()

    def cancel(conn):
        if fleet.command(conn, command_uuid) is None:
            return None
        cancelled = queue_store.cancel_command(conn, command_uuid)
        audit.record(conn, **stamp, action="command.cancel", target=command_uuid, details={"rows": cancelled})
        return cancelled

    cancelled = await runtime().store.write(cancel)
    if cancelled is None:
        raise Refused(404, f"No command {command_uuid}.")
    return redirect(f"{PREFIX}/commands/{command_uuid}", 303)
