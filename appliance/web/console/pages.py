"""Signing in and out, and the pages that read: overview, devices, one device, the audit log."""

from __future__ import annotations

import base64
import binascii
import json

from quart import g, redirect, request

from appliance.logs import get_logger
from appliance.store import accounts as account_store
from appliance.store import audit, fleet, overview
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


def device_query(args) -> DeviceQuery:
    """The devices page's query from its URL (?q=&state=&sort=&dir=&after=); bad values fall back."""
    state = args.get("state", "all")
    sort = args.get("sort", "name")
    return DeviceQuery(
        text=(args.get("q") or "").strip()[:200] or None,
        state=state if state in STATES else "all",
        sort=sort if sort in SORTS else "name",
        descending=args.get("dir") == "desc",
        after=decode_after(args.get("after")),
        limit=PAGE_SIZE,
    )


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
    query = device_query(request.args)
    page = await runtime().store.read(search, query)
    return await render("devices.html", query=query, page=page, sorts=SORTS, states=STATES,
                        next_after=encode_after(page.next_after) if page.next_after else None)


@blueprint.get(PREFIX + "/devices/<device_id>")
@requires("viewer")
async def device_page(device_id: str):
    def read(conn):
        found = fleet.device(conn, device_id)
        if found is None:
            return None
        pending = {e["id"]: queue_store.pending(conn, e["id"], limit=200) for e in found["enrollments"]}
        history = fleet.enrollment_commands(conn, device_id, limit=HISTORY)
        for row in history:
            if not row["pending"]:
                stored = queue_store.result(conn, row["enrollment_id"], row["command_uuid"])
                row["raw"] = stored["raw"] if stored else None
        return found, pending, history

    got = await runtime().store.read(read)
    if got is None:
        return await page_error(404, f"No device with id {device_id}.")
    found, pending, history = got
    for row in history:
        row["view"] = results.view(row.get("request_type"), row.get("raw"))
    return await render("device.html", device=found, pending=pending, history=history,
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
