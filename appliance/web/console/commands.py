"""Sending a command (to one device, a selection, or every device a search matches), watching its results
arrive, and cancelling pending commands."""

from __future__ import annotations

import json
from urllib.parse import urlencode

from quart import jsonify, redirect, render_template, request

from appliance.protocol import catalog
from appliance.protocol import commands as command_rules
from appliance.protocol.errors import MessageError
from appliance.service import commands
from appliance.store import audit, fleet
from appliance.store import queue as queue_store
from appliance.store.device_search import matching_ids
from appliance.web.app import runtime
from appliance.web.console import forms, results
from appliance.web.console.base import PREFIX, Refused, audit_now, blueprint, can, page_error, render, requires, who
from appliance.web.console.pages import device_query

MAX_TARGETS = 10_000
SHOWN_ENROLLMENTS = 200


async def targets(args) -> tuple[list[str], str]:
    """(enrollment ids, how they were chosen) from ?ids=... (repeated or comma-separated) or a search."""
    ids = [part.strip() for value in args.getlist("ids") for part in value.split(",") if part.strip()]
    if ids:
        return list(dict.fromkeys(ids))[:MAX_TARGETS + 1], "selection"
    if args.get("all") == "1":
        query = device_query(args)
        found = await runtime().store.read(matching_ids, query)
        what = f"every device matching “{query.text}”" if query.text else "every device"
        if query.state != "all":
            what += f" ({query.state})"
        return found[:MAX_TARGETS + 1], what
    return [], "nothing"


RAW = "raw"  # the form's choice for a command the catalog does not know: RequestType + JSON keys


def _spec(request_type: str | None):
    return catalog.find(request_type) if request_type and request_type != RAW else None


async def _send_form(status: int, ids: list[str], chosen: str, search: dict, request_type: str | None,
                     form, errors: list[str]):
    spec = _spec(request_type)
    return await render("send.html", status=status, ids=ids, chosen=chosen, search=search, form=form,
                        errors=errors, request_type=request_type, spec=spec,
                        fields=forms.fields(spec) if spec else [], catalog=catalog.commands(),
                        categories=catalog.CATEGORIES, raw=RAW,
                        destructive=catalog.is_destructive(request_type or ""))


@blueprint.get(PREFIX + "/commands/new")
@requires("operator")
async def new_command():
    ids, chosen = await targets(request.args)
    return await _send_form(200, ids, chosen, _search_args(request.args), request.args.get("type"),
                            request.args, [])


def _search_args(args) -> dict:
    return {key: args[key] for key in ("all", "q", "state") if args.get(key)}


@blueprint.post(PREFIX + "/commands")
@requires("operator")
async def send_command():
    form, files = await request.form, await request.files
    ids, chosen = await targets(form)
    request_type = (form.get("type") or "").strip()
    errors = []
    if not ids:
        errors.append("Choose at least one device.")
    if len(ids) > MAX_TARGETS:
        errors.append(f"At most {MAX_TARGETS} devices per command.")
    command = None
    try:
        command = command_rules.build_command(_command_from_form(request_type, form, files))
    except (MessageError, ValueError) as exc:
        errors.append(str(exc))
    if command is not None and catalog.is_destructive(command.request_type) and form.get("confirm", "").strip() != str(len(ids)):
        errors.append(f"{command.request_type} is destructive: type the number of devices ({len(ids)}) to confirm.")
    if errors:
        return await _send_form(400, ids, chosen, _search_args(form), request_type, form, errors)
    code, answer = await commands.enqueue(runtime(), command, ids, no_push=False)
    queued = [eid for eid, entry in answer["status"].items() if "command_error" not in entry]
    await audit_now("command.send", queued, {"command_uuid": command.uuid, "request_type": command.request_type,
                                             "chosen": chosen, "refused": len(ids) - len(queued)})
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
