"""Signing in and out, and the pages that read: overview, devices, one device, the audit log."""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import replace

from quart import g, redirect, request

from appliance.logs import get_logger
from appliance.store import abm as abm_store
from appliance.store import accounts as account_store
from appliance.store import audit, ddm, device_filter, fleet, groups, overview
from appliance.store import queue as queue_store
from appliance.store.timefmt import from_text, now
from appliance.store.device_search import SORTS, STATES, DeviceQuery, search
from appliance.web.app import runtime
from appliance.web.console import results
from appliance.web.console.base import PREFIX, blueprint, page_error, render, requires, safe_next, sign_in, sign_out, who

log = get_logger("console")

PAGE_SIZE = 50
HISTORY = 50


@blueprint.get("/")
async def root():
    return redirect(PREFIX + "/", 302)


# --- signing in ------------------------------------------------------------------------------------

@blueprint.get(PREFIX + "/login")
async def login_form():
    if g.user is not None:
        return redirect(safe_next(request.args.get("next")), 303)
    return await render("login.html", next=safe_next(request.args.get("next")))


@blueprint.post(PREFIX + "/login")
async def login():
    rt = runtime()
    form = await request.form
    name, password = form.get("name", "").strip()[:64], form.get("password", "")
    target = safe_next(form.get("next"))
    address = request.remote_addr
    if rt.sign_ins.blocked(address, name):
        log.warning("console_sign_in_limited", user=name, remote=address)
        return await render("login.html", status=429, next=target, name=name,
                            error="Too many failed sign-ins from this address or for this account. "
                                  "Wait 15 minutes and try again.")
    found = await rt.store.read(account_store.get, name) if name else None
    if not await rt.sign_ins.verify(found["password_hash"] if found else None, password):
        if rt.sign_ins.wrong(address, name):
            log.warning("console_sign_in_guessing_limited", user=name, remote=address)
        log.info("console_sign_in_failed", user=name, remote=address)
        return await render("login.html", status=401, next=target, name=name, error="Wrong name or password.")
    sign_in(found["name"], found["password_hash"])
    g.user = {"name": found["name"], "role": found["role"]}
    stamp = who()

    def signed_in(conn):
        account_store.logged_in(conn, found["name"])
        audit.record(conn, **stamp, action="sign_in", target=found["name"])

    await rt.store.write(signed_in)
    return redirect(target, 303)


@blueprint.post(PREFIX + "/logout")
async def logout():
    if g.user is not None:
        stamp = who()
        await runtime().store.write(lambda conn: audit.record(conn, **stamp, action="sign_out"))
    sign_out()
    return redirect(PREFIX + "/login", 303)


# --- reading ---------------------------------------------------------------------------------------

@blueprint.get(PREFIX + "/")
@requires("viewer")
async def overview_page():
    rt = runtime()
    figures = await rt.store.read(overview.overview)
    for failure in figures["recent_failures"]:
        failure["error_chain"] = results.error_chain(failure["error_chain"])
    push = rt.push.status() if rt.push is not None else None
    return await render("overview.html", figures=figures, push=push)


def device_query(args, *, with_filter: bool = True) -> DeviceQuery:
    """The devices page's query from its URL (?q=&filter=&group=&state=&sort=&dir=&after=). Bad choices
    fall back; a filter that does not parse raises device_filter.FilterError (shown with its position)."""
    state = args.get("state", "all")
    sort = args.get("sort", "name")
    filter_text = (args.get("filter") or "").strip()
    return DeviceQuery(
        text=(args.get("q") or "").strip()[:200] or None,
        state=state if state in STATES else "all",
        filter=device_filter.parse(filter_text) if filter_text and with_filter else None,
        group=(args.get("group") or "").strip() or None,
        sort=sort if sort in SORTS else "name",
        descending=args.get("dir") == "desc",
        after=decode_after(args.get("after")),
        limit=PAGE_SIZE,
    )


def query_args(query: DeviceQuery, **changes) -> dict:
    """The URL arguments that ask for this query again (for sort links, paging and "send to all")."""
    found = {"q": query.text or "", "filter": query.filter.text if query.filter else "", "group": query.group or "",
             "state": query.state, "sort": query.sort, "dir": "desc" if query.descending else "asc"}
    found.update(changes)
    return {key: value for key, value in found.items() if value not in ("", None)}


def encode_after(after: tuple[str, str]) -> str:
    return base64.urlsafe_b64encode(json.dumps(after).encode()).decode().rstrip("=")


def decode_after(text: str | None) -> tuple[str, str] | None:
    if not text:
        return None
    try:
        value = json.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
    except (binascii.Error, ValueError):
        return None
    if isinstance(value, list) and len(value) == 2 and all(isinstance(part, str) for part in value):
        return value[0], value[1]
    return None


@blueprint.get(PREFIX + "/devices")
@requires("viewer")
async def devices_page():
    rt = runtime()
    shown = {"groups": await rt.store.read(groups.list_groups), "filter_text": request.args.get("filter", "").strip(),
             "sorts": SORTS, "states": STATES, "query_args": query_args}
    try:
        query = device_query(request.args)
    except device_filter.FilterError as exc:
        # Shown in the page with the filter kept in its field to correct: a refusal, never a 5xx.
        return await render("devices.html", status=400, query=device_query(request.args, with_filter=False),
                            page=None, error=f"The filter cannot be used: {exc.reason} (at character {exc.position}).",
                            error_position=exc.position, **shown)
    if query.group is not None:
        named = [g["name"] for g in shown["groups"] if g["name"].casefold() == query.group.casefold()]
        if not named:
            return await render("devices.html", status=404, query=query, page=None,
                                error=f"No group named “{query.group}”.", **shown)
        query = replace(query, group=named[0])
    page = await rt.store.read(search, query)
    return await render("devices.html", query=query, page=page, error=None,
                        next_after=encode_after(page.next_after) if page.next_after else None, **shown)


@blueprint.get(PREFIX + "/devices/<device_id>")
@requires("viewer")
async def device_page(device_id: str):
    def read(conn):
        found = fleet.device(conn, device_id)  # facts, groups, inventory and its dated changes: as the API's
        if found is None:
            return None
        pending = {e["id"]: queue_store.pending(conn, e["id"], limit=200) for e in found["enrollments"]}
        history = fleet.enrollment_commands(conn, device_id, limit=HISTORY)
        for row in history:
            if not row["pending"]:
                stored = queue_store.result(conn, row["enrollment_id"], row["command_uuid"])
                row["raw"] = stored["raw"] if stored else None
        declarative = [ddm.enrollment_overview(conn, e["id"]) for e in found["enrollments"]]
        # Joined by serial number, as GET /v1/devices/ID does: what ABM says of it, and its ADE setup.
        found["abm"] = abm_store.abm_summary(conn, found["serial_number"])
        return found, pending, history, declarative

    rt = runtime()
    got = await rt.store.read(read)
    if got is None:
        return await page_error(404, f"No device with id {device_id}.")
    found, pending, history, declarative = got
    for row in history:
        row["view"] = results.view(row.get("request_type"), row.get("raw"))
    # The bound identity with its renewal, described as GET /v1/devices/ID describes it.
    identity = (await rt.renewals.describe([device_id])).get(device_id) if rt.renewals is not None else None
    return await render("device.html", device=found, pending=pending, history=history, identity=identity,
                        declarative=[d for d in declarative if d["declarations"] or d["sets"]],
                        identity_days=_days_left((found["identity_certificate"] or {}).get("not_after")))


def _days_left(moment: str | None) -> int | None:
    try:
        expires = from_text(moment)
    except ValueError:
        return None
    return None if expires is None else int((expires - now()).total_seconds() // 86400)


@blueprint.get(PREFIX + "/audit")
@requires("viewer")
async def audit_page():
    before = request.args.get("before", "")
    actor = request.args.get("actor") or None
    limit = 100
    rows = await runtime().store.read(lambda conn: audit.entries(
        conn, before=int(before) if before.isdigit() else None, limit=limit + 1, actor=actor))
    more = len(rows) > limit
    rows = rows[:limit]
    return await render("audit.html", entries=rows, actor=actor,
                        next_before=rows[-1]["id"] if more else None)
