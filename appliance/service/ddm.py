"""Declarative Device Management in the appliance's own process, read as the protocol:

- A device's DeclarativeManagement check-in (tokens, declaration-items, declaration/KIND/ID, status) is
  answered inside the check-in's one write transaction (appliance.service.mdm), from what is assigned to
  that enrollment only.
- An operator's change (a declaration saved or touched, a set or an assignment to enrollments or to a
  group changed) is one transaction that also marks every enrollment whose effective declarations it may
  change (ddm_dirty, durable). Group membership changes (static, dynamic, a group deleted) are followed
  from the groups' change log, the position kept with the marks (store.follow_group_changes).
- The notifier, a part of the root nursery, then tells each marked enrollment whose DeclarationsToken
  really changed: one DeclarativeManagement command with the tokens as Data, at most one waiting per
  enrollment (a waiting one gets the new Data), then a push. KMFDDM over-notifies; this does not.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import json
import secrets
import sqlite3
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar
from urllib.parse import quote

import trio

from appliance.identity.guesses import GuessLimit
from appliance.logs import get_logger
from appliance.protocol import answers, ddm
from appliance.protocol.answers import EMPTY, Answer
from appliance.protocol.commands import parse_command
from appliance.protocol.ddm import DeclarationError
from appliance.protocol.errors import NotEnrolled
from appliance.protocol.messages import DeclarativeManagement, TokenUpdate
from appliance.store import ddm as store
from appliance.store import groups, outbox, queue
from appliance.store.db import StoreClosed
from appliance.store.faults import StoreUnavailable
from appliance.store.timefmt import now_text
from appliance.webhook.events import declaration_status_event

log = get_logger("ddm")
T = TypeVar("T")

ASSET_PATH = "/ddm/assets/"
# Asset types whose content the appliance can host (those with a Reference the device downloads).
HOSTED_ASSET_TYPES = ("com.apple.asset.data", "com.apple.asset.credential.userpassword",
                      "com.apple.asset.credential.certificate", "com.apple.asset.credential.identity",
                      "com.apple.asset.credential.scep", "com.apple.asset.credential.acme")
_META_ASSET_KEY = "ddm_asset_key"
# Asset tokens are 128-bit HMACs, not guessable; still, every secret gets a guessing limit.
ASSET_GUESS_LIMIT, ASSET_GUESS_WINDOW = 20, 600.0


class Refused(ValueError):
    """The request is wrong (400); the reason names what."""


class NotFound(LookupError):
    """What the request names does not exist (404)."""


class Conflict(ValueError):
    """The change would break something that depends on it (409)."""


@dataclass(frozen=True)
class DdmOptions:
    """What the device side needs from the config, read once at start (not on the db thread)."""

    reports_kept: int
    errors_kept: int
    webhook: bool
    public_url: str
    asset_key: bytes


# --- the device side: inside the check-in's transaction ---------------------------------------------

def declarative_management(conn: sqlite3.Connection, message: DeclarativeManagement, options: DdmOptions) -> Answer:
    """The answer to one DeclarativeManagement check-in (Apple's four endpoints)."""
    enrollment = message.enrollment
    request = message.request
    active = conn.execute("SELECT active FROM enrollments WHERE id = ?", (enrollment.id,)).fetchone()
    if not active or not active[0]:
        log.warning("ddm_not_enrolled", enrollment_id=enrollment.id, endpoint=request.endpoint)
        raise NotEnrolled(f"enrollment {enrollment.id} is not enrolled: TokenUpdate first")
    if request.endpoint in (ddm.TOKENS, ddm.DECLARATION_ITEMS):
        items = store.effective_items(conn, enrollment.id)
        token = ddm.declarations_token((item.identifier, item.server_token) for item in items)
        changed_at = store.record_sync(conn, enrollment.id, token)
        if request.endpoint == ddm.TOKENS:
            return _json(ddm.tokens_json(token, ddm.sync_timestamp(datetime.fromisoformat(changed_at))))
        return _json(ddm.declaration_items_json(items, token))
    if request.endpoint == ddm.DECLARATION:
        row = store.effective_declaration(conn, enrollment.id, request.kind, request.identifier)
        if row is None:
            # Apple: 404 for a declaration the server does not have for this device.
            return answers.refusal(404, f"no {request.kind} {request.identifier[:100]!r} for this enrollment")
        payload = row["payload"]
        if request.kind == "asset" and store.asset(conn, row["identifier"]) is not None:
            payload = _hosted_asset_payload(payload, row["identifier"], enrollment.id, options)
        return _json(ddm.declaration_json(row["type"], row["identifier"], row["server_token"], payload))
    report_id = secrets.token_hex(8)
    changes = store.store_status(conn, enrollment.id, request.status, report_id,
                                 reports_kept=options.reports_kept, errors_kept=options.errors_kept)
    log.info("ddm_status_report", enrollment_id=enrollment.id, status_id=report_id,
             declarations=len(request.status.declarations), values=len(request.status.values),
             errors=len(request.status.errors), changed=len(changes))
    if changes and options.webhook:
        topic, body = declaration_status_event(udid=enrollment.udid, enrollment_id=enrollment.enrollment_id,
                                               ids=enrollment.ids(), status_id=report_id, changes=changes)
        outbox.add(conn, enrollment_id=enrollment.id, topic=topic, body=body)
    return EMPTY  # Apple: the status endpoint is answered 200 with an empty body


def _json(body: bytes) -> Answer:
    return Answer(200, body, ddm.CONTENT_TYPE)


def enrollment_step(core: Callable[..., T]) -> Callable[..., T]:
    """Around the check-in core: a TokenUpdate that (re-)enrolls a channel means a device that holds no
    declarations yet, so what is assigned to it (sets assigned before it enrolled, or before it was wiped)
    must be sent."""

    @functools.wraps(core)
    def step(conn: sqlite3.Connection, message, options) -> T:
        result = core(conn, message, options)
        if isinstance(message, TokenUpdate):
            row = conn.execute("SELECT token_update_count FROM enrollments WHERE id = ?",
                               (message.enrollment.id,)).fetchone()
            if row is not None and row[0] == 1:
                store.forget_sync(conn, message.enrollment.id)
                if store.enrollment_sets(conn, message.enrollment.id):
                    store.mark(conn, [message.enrollment.id])
        return result

    return step


# --- hosted assets -----------------------------------------------------------------------------------

def asset_token(key: bytes, identifier: str, enrollment_id: str) -> str:
    """The per-asset, per-enrollment secret in an asset's DataURL (for devices that fetch without MDM auth)."""
    return hmac.new(key, f"{identifier}\0{enrollment_id}".encode(), hashlib.sha256).hexdigest()[:32]


def asset_url(options: DdmOptions, identifier: str, enrollment_id: str) -> str:
    token = asset_token(options.asset_key, identifier, enrollment_id)
    return (f"{options.public_url}{ASSET_PATH}{quote(identifier, safe='')}?enrollment="
            f"{quote(enrollment_id, safe='')}&token={token}")


def _hosted_asset_payload(payload_json: str, identifier: str, enrollment_id: str, options: DdmOptions) -> str:
    payload = json.loads(payload_json)
    payload.setdefault("Reference", {})["DataURL"] = asset_url(options, identifier, enrollment_id)
    return ddm.dumps(payload)


def asset_key(conn: sqlite3.Connection) -> bytes:
    """The key of asset URL tokens, made once and kept in the database (backups carry it)."""
    row = conn.execute("SELECT value FROM meta WHERE key = ?", (_META_ASSET_KEY,)).fetchone()
    if row is not None:
        return bytes.fromhex(row[0])
    key = secrets.token_bytes(32)
    conn.execute("INSERT INTO meta (key, value) VALUES (?, ?)", (_META_ASSET_KEY, key.hex()))
    return key


# --- the appliance's own declarations ----------------------------------------------------------------

def install_builtins(conn: sqlite3.Connection, organization: dict[str, str]) -> int:
    """Store the appliance's own declarations as the config makes them; when one changed (an organization
    renamed), every DDM enrollment is marked. Returns how many changed."""
    builtins = ddm.builtin_declarations(organization, {})
    wanted = {b.declaration.identifier for b in builtins}
    changed = 0
    for builtin in builtins:
        changed += store.put_declaration(conn, builtin.declaration, builtin=builtin.channel)
    for stale in store.builtin_identifiers(conn) - wanted:
        conn.execute("DELETE FROM ddm_references WHERE identifier = ?", (stale,))
        conn.execute("DELETE FROM ddm_declarations WHERE identifier = ?", (stale,))
        changed += 1
    if changed:
        store.mark_every_ddm_enrollment(conn)
    return changed


def organization_of(config) -> dict[str, str]:
    info = {"Name": config.ddm.organization_name or config.server.organization}
    if config.ddm.organization_email:
        info["Email"] = config.ddm.organization_email
    if config.ddm.organization_url:
        info["URL"] = config.ddm.organization_url
    return info


# --- the operator's side -------------------------------------------------------------------------------

def check_set_name(name: str) -> str:
    if not name or len(name) > 256 or ddm.has_control(name) or "/" in name:
        raise Refused("a set name is 1 to 256 characters, without control characters or '/'")
    return name


def check_enrollment_id(enrollment_id: str) -> str:
    if not enrollment_id or len(enrollment_id) > 600 or ddm.has_control(enrollment_id):
        raise Refused("an enrollment id is 1 to 600 characters, without control characters")
    return enrollment_id


def _not_reserved(identifier: str) -> None:
    if identifier.startswith(ddm.RESERVED_PREFIX):
        raise Conflict(f"{identifier} is one of the appliance's own declarations ({ddm.RESERVED_PREFIX}*): "
                       f"it cannot be changed here")


def _check_references(conn: sqlite3.Connection, declaration: ddm.Declaration) -> None:
    """Every identifier the payload names must exist, as the kind (and type) the key asks for."""
    found = store.declaration_kinds(conn, [ref.identifier for ref in declaration.references])
    for ref in declaration.references:
        if ref.identifier == declaration.identifier:
            raise Refused(f"{ref.path} names the declaration itself")
        if ref.identifier not in found:
            raise Refused(f"{ref.path} names {ref.kind} {ref.identifier!r}, which does not exist: store it first")
        declaration_type, kind = found[ref.identifier]
        if kind != ref.kind:
            raise Refused(f"{ref.path} names {ref.identifier!r}, {_a(kind)}, where {_a(ref.kind)} is expected")
        if ref.types and declaration_type not in ref.types:
            raise Refused(f"{ref.path} names {ref.identifier!r} of type {declaration_type}, expected one of "
                          f"{', '.join(ref.types)}")


def _existing_group(conn: sqlite3.Connection, name: str) -> str:
    """The group's name as stored (names ignore case)."""
    try:
        groups.check_name(name)
    except groups.GroupError as exc:
        raise Refused(str(exc)) from None
    group = groups.get(conn, name)
    if group is None:
        raise NotFound(f"no group named {name!r}")
    return group["name"]


def _os_update_group(conn: sqlite3.Connection, group: str, set_name: str, notify: bool) -> dict[str, Any]:
    """Assign the os-update set to a group, taking an older os-update-* set off it."""
    assigned = store.assign_group(conn, group, set_name)
    replaced = [older for older in store.group_sets(conn, group)
                if older.startswith("os-update-") and older != set_name and store.unassign_group(conn, group, older)]
    if notify and (assigned or replaced):
        store.mark_group(conn, group)
    return {"name": group, "assigned": assigned, "replaced": replaced, "members": len(groups.members(conn, group))}


def _a(kind: str) -> str:
    return f"an {kind}" if kind[0] in "aeiou" else f"a {kind}"


@dataclass(frozen=True)
class Saved:
    changed: bool
    warnings: tuple[str, ...] = ()


class DdmService:
    """The operator's operations (admin API, CLI through it) and the notifier, on runtime.ddm."""

    batch_size = 500       # enrollments per notify transaction (the write lock is held this long)
    poll_seconds = 5.0     # fallback when nobody wakes the notifier

    def __init__(self, runtime, options: DdmOptions) -> None:
        self.runtime = runtime
        self.options = options
        self._wake = trio.Event()
        self.idle = trio.Event()
        self.asset_guesses = GuessLimit(ASSET_GUESS_LIMIT, ASSET_GUESS_WINDOW)  # set whenever the notifier has nothing left to do (tests, benchmarks)

    def wake(self) -> None:
        self._wake.set()

    async def _write(self, fn: Callable[..., Any], *args) -> Any:
        """A change and its marks in one transaction; wake the notifier once it committed."""
        result = await self.runtime.store.write(fn, *args)
        self.wake()
        return result

    # declarations ---------------------------------------------------------------------------------
    async def put_declaration(self, body: bytes, *, notify: bool = True) -> Saved:
        try:
            declaration = ddm.parse_declaration(body)
        except DeclarationError as exc:
            raise Refused(exc.reason) from None
        _not_reserved(declaration.identifier)
        return await self.save(declaration, notify=notify)

    async def save(self, declaration: ddm.Declaration, *, notify: bool = True) -> Saved:
        def txn(conn):
            _check_references(conn, declaration)
            try:
                changed = store.put_declaration(conn, declaration)
            except store.InUse as exc:
                raise Conflict(str(exc)) from None
            if changed and notify:
                store.mark_declarations(conn, [declaration.identifier])
            return changed

        changed = await self._write(txn)
        log.info("ddm_declaration_saved", identifier=declaration.identifier, type=declaration.type,
                 changed=changed, warnings=len(declaration.warnings))
        return Saved(changed, declaration.warnings)

    async def declaration(self, identifier: str) -> dict[str, Any] | None:
        row = await self.runtime.store.read(store.declaration, identifier)
        if row is None:
            return None
        return {"Identifier": row["identifier"], "Type": row["type"], "ServerToken": row["server_token"],
                "Payload": json.loads(row["payload"])}

    async def declarations(self, *, builtin: bool = False) -> list[dict[str, Any]]:
        return await self.runtime.store.read(lambda conn: store.list_declarations(conn, builtin=builtin))

    async def delete_declaration(self, identifier: str) -> bool:
        _not_reserved(identifier)

        def txn(conn):
            try:
                return store.delete_declaration(conn, identifier)
            except store.InUse as exc:
                raise Conflict(str(exc)) from None

        deleted = await self.runtime.store.write(txn)
        log.info("ddm_declaration_deleted", identifier=identifier, deleted=deleted)
        return deleted

    async def touch(self, identifier: str, *, notify: bool = True) -> None:
        _not_reserved(identifier)

        def txn(conn):
            if not store.touch_declaration(conn, identifier):
                raise NotFound(f"no declaration {identifier!r}")
            if notify:
                store.mark_declarations(conn, [identifier])

        await self._write(txn)

    # sets and assignment --------------------------------------------------------------------------
    async def sets(self) -> list[str]:
        return await self.runtime.store.read(store.list_sets)

    async def set_declarations(self, set_name: str) -> list[str]:
        return await self.runtime.store.read(store.set_declarations, set_name)

    async def declaration_sets(self, identifier: str) -> list[str]:
        return await self.runtime.store.read(store.declaration_sets, identifier)

    async def enrollment_sets(self, enrollment_id: str) -> list[str]:
        return await self.runtime.store.read(store.enrollment_sets, enrollment_id)

    async def change_set(self, set_name: str, identifier: str, *, add: bool, notify: bool = True) -> bool:
        check_set_name(set_name)

        def txn(conn):
            if add and store.declaration(conn, identifier) is None:
                raise NotFound(f"no declaration {identifier!r}")
            changed = (store.add_to_set if add else store.remove_from_set)(conn, set_name, identifier)
            if changed and notify:
                store.mark_sets(conn, [set_name])
            return changed

        changed = await self._write(txn)
        log.info("ddm_set_changed", set=set_name, identifier=identifier, added=add, changed=changed)
        return changed

    async def change_assignment(self, enrollment_ids: Sequence[str], set_name: str | None, *, add: bool,
                                notify: bool = True) -> list[str]:
        """Assign the set to (add) or take it (None: every set) off the enrollments; returns the ids changed."""
        for eid in enrollment_ids:
            check_enrollment_id(eid)
        if set_name is not None:
            check_set_name(set_name)

        def txn(conn):
            if add:
                changed = store.assign(conn, enrollment_ids, set_name)
            else:
                changed = store.unassign(conn, enrollment_ids, set_name)
            if changed and notify:
                store.mark(conn, changed)
            return changed

        changed = await self._write(txn)
        log.info("ddm_assignment_changed", set=set_name, ids=len(enrollment_ids), changed=len(changed), added=add)
        return changed

    async def group_sets(self, group: str) -> list[str]:
        def read(conn):
            return store.group_sets(conn, _existing_group(conn, group))

        return await self.runtime.store.read(read)

    async def change_group_assignment(self, group: str, set_name: str, *, add: bool, notify: bool = True) -> bool:
        """Assign the set to (add) or take it off a group: its members now and later get it."""
        check_set_name(set_name)

        def txn(conn):
            name = _existing_group(conn, group)
            changed = (store.assign_group if add else store.unassign_group)(conn, name, set_name)
            if changed and notify:
                store.mark_group(conn, name)
            return changed

        changed = await self._write(txn)
        log.info("ddm_group_assignment_changed", group=group, set=set_name, added=add, changed=changed)
        return changed

    async def notify(self, *, declarations: Sequence[str] = (), sets: Sequence[str] = (),
                     enrollment_ids: Sequence[str] = ()) -> int:
        """Tell these enrollments (and those the sets and declarations reach) even if nothing changed."""
        for eid in enrollment_ids:
            check_enrollment_id(eid)

        def txn(conn):
            marked = store.mark(conn, enrollment_ids, forced=True) if enrollment_ids else 0
            if sets:
                marked += store.mark_sets(conn, sets, forced=True)
            if declarations:
                marked += store.mark_declarations(conn, declarations, forced=True)
            return marked

        return await self._write(txn)

    # status ---------------------------------------------------------------------------------------
    async def summary(self, identifier: str | None = None, group: str | None = None) -> list[dict[str, Any]]:
        """Fleet-wide status per declaration; with `group`, of that group's devices only (NotFound: no group)."""

        def read(conn):
            found = groups.get(conn, group) if group is not None else None
            if group is not None and found is None:
                raise NotFound(f"no group named {group!r}")
            return store.status_summary(conn, identifier, found["name"] if found else None)

        return await self.runtime.store.read(read)

    async def overview(self, enrollment_id: str) -> dict[str, Any]:
        return await self.runtime.store.read(store.enrollment_overview, enrollment_id)

    # hosted assets and OS updates -----------------------------------------------------------------
    async def put_asset(self, identifier: str, data: bytes, content_type: str, asset_type: str, *,
                        notify: bool = True) -> Saved:
        if asset_type not in HOSTED_ASSET_TYPES:
            raise Refused(f"type must be one of {', '.join(HOSTED_ASSET_TYPES)}")
        if not content_type or len(content_type) > 200 or ddm.has_control(content_type):
            raise Refused("a Content-Type is needed (e.g. application/json), at most 200 characters")
        try:
            ddm.check_identifier(identifier)
        except DeclarationError as exc:
            raise Refused(exc.reason) from None
        _not_reserved(identifier)
        digest = hashlib.sha256(data).hexdigest()
        declaration = ddm.check_declaration({"Type": asset_type, "Identifier": identifier, "Payload": {
            "Reference": {"DataURL": f"{self.options.public_url}{ASSET_PATH}{quote(identifier, safe='')}",
                          "ContentType": content_type, "Size": len(data), "Hash-SHA-256": digest},
            "Authentication": {"Type": "MDM"}}})

        def txn(conn):
            existing = store.declaration(conn, identifier)
            if existing is not None and store.asset(conn, identifier) is None:
                raise Conflict(f"{identifier} is a declaration whose content this appliance does not host")
            store.put_asset(conn, identifier, content_type, data, digest)
            try:
                changed = store.put_declaration(conn, declaration)
            except store.InUse as exc:
                raise Conflict(str(exc)) from None
            if changed and notify:
                store.mark_declarations(conn, [identifier])
            return changed

        changed = await self._write(txn)
        log.info("ddm_asset_saved", identifier=identifier, size=len(data), changed=changed)
        return Saved(changed, declaration.warnings)

    async def os_update(self, version: str, deadline: str, *, build: str | None = None,
                        details_url: str | None = None, enrollment_ids: Sequence[str] = (),
                        group_names: Sequence[str] = (), notify: bool = True) -> dict[str, Any]:
        """Enforce an OS version by a deadline: the softwareupdate.enforcement.specific configuration and its
        activation in set os-update-VERSION, assigned to the enrollments and groups; an older os-update-* set
        on them is taken off (one enforcement at a time)."""
        try:
            configuration, activation = ddm.os_update(version, deadline, build, details_url)
        except DeclarationError as exc:
            raise Refused(exc.reason) from None
        for eid in enrollment_ids:
            check_enrollment_id(eid)
        set_name = configuration.identifier

        def txn(conn):
            changed = store.put_declaration(conn, configuration)
            changed = store.put_declaration(conn, activation) or changed
            for identifier in (configuration.identifier, activation.identifier):
                store.add_to_set(conn, set_name, identifier)
            assigned = store.assign(conn, enrollment_ids, set_name)
            replaced = []
            for eid in enrollment_ids:
                for older in store.enrollment_sets(conn, eid):
                    if older.startswith("os-update-") and older != set_name:
                        replaced += store.unassign(conn, [eid], older)
            by_group = [_os_update_group(conn, _existing_group(conn, group), set_name, notify)
                        for group in dict.fromkeys(group_names)]
            if notify:
                if changed:
                    store.mark_sets(conn, [set_name])
                store.mark(conn, set(assigned) | set(replaced))
            return {"set": set_name, "declarations": [configuration.identifier, activation.identifier],
                    "payload": configuration.payload, "assigned": assigned,
                    "replaced": sorted(set(replaced)), "groups": by_group}

        result = await self._write(txn)
        log.info("ddm_os_update", version=version, deadline=configuration.payload["TargetLocalDateTime"],
                 assigned=len(result["assigned"]), groups=len(result["groups"]))
        return result

    # the notifier ---------------------------------------------------------------------------------
    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._hear_group_changes)
            await self._notify_loop(task_status)
            nursery.cancel_scope.cancel()

    async def _hear_group_changes(self) -> None:
        """Wake the notifier after every commit that changed group membership (it reads the change log)."""
        watch = self.runtime.group_changes
        changed = watch.changed()
        while True:
            await changed.wait()
            changed = watch.changed()  # no await since the wait: no notify() slips between
            self.wake()

    async def _notify_loop(self, task_status) -> None:
        task_status.started(self)
        while True:
            self.idle.set()
            with trio.move_on_after(self.poll_seconds):
                await self._wake.wait()
            self._wake = trio.Event()
            self.idle = trio.Event()
            try:
                await self._drain()
            except StoreClosed:
                return
            except StoreUnavailable as exc:
                # Disk full, say: the marks stay in ddm_dirty (nothing of the batch was stored); try again.
                log.warning("ddm_notifier_waiting", reason=exc.reason, retry_in_seconds=exc.retry_after)
                await trio.sleep(exc.retry_after)
                self.wake()

    async def _drain(self) -> None:
        # Read first: a write that changes nothing would still commit (and end a full disk's fault state).
        more = await self.runtime.store.read(store.group_changes_waiting)
        while more:
            _, more = await self.runtime.store.write(store.follow_group_changes, self.batch_size)
        if not await self.runtime.store.read(store.dirty_count):
            return
        while True:
            told, more = await self.runtime.store.write(notify_batch, self.batch_size)
            if told:
                self.runtime.metrics.ddm_notifications.inc(len(told))
                if self.runtime.push is not None:
                    self.runtime.push.request_push(told)
                log.info("ddm_notified", enrollments=len(told))
            if not more:
                return


def notify_batch(conn: sqlite3.Connection, limit: int) -> tuple[list[str], bool]:
    """Tell up to `limit` marked enrollments whose tokens changed (or that were marked forced): queue their
    DeclarativeManagement command, or bring the waiting one up to date. Returns (ids told, more waiting)."""
    taken = store.take_dirty(conn, limit)
    forced = {eid for eid, is_forced in taken if is_forced}
    targets = store.notify_targets(conn, [eid for eid, _ in taken])
    manifests: dict[tuple[str, tuple[str, ...]], str] = {}  # enrollments with the same sets share a token
    commands = _Commands()
    now = now_text()
    told = []
    for eid, target in targets.items():
        key = (store.channel_of(eid), tuple(sorted(target["sets"])))
        if key not in manifests:
            items = store.items_of_sets(conn, key[1], key[0])
            manifests[key] = ddm.declarations_token((item.identifier, item.server_token) for item in items)
        token = manifests[key]
        changed = token != target["token"]
        # A device never told anything and given nothing but the appliance's own is left alone.
        if eid not in forced and not (changed and (target["token"] is not None or target["sets"])):
            continue
        changed_at = now if changed or target["changed_at"] is None else target["changed_at"]
        data = commands.tokens(token, changed_at)
        command_uuid = target["command_uuid"]
        if store.replaceable_command(conn, eid, command_uuid):
            store.replace_command_body(conn, command_uuid, commands.body(command_uuid, data))
        else:
            command_uuid = str(uuid.uuid4()).upper()
            queue.enqueue(conn, command_uuid, "DeclarativeManagement", commands.body(command_uuid, data), [eid])
        store.record_notified(conn, eid, token, changed_at, command_uuid)
        told.append(eid)
    return told, len(taken) == limit


class _Commands:
    """DeclarativeManagement command bodies: one per distinct Data, checked once by the one command validator
    (with a placeholder CommandUUID, which is then replaced: a UUID needs no XML escaping)."""

    _PLACEHOLDER = "00000000-0000-0000-0000-PLACEHOLDER0"

    def __init__(self) -> None:
        self._templates: dict[bytes, bytes] = {}
        self._tokens: dict[tuple[str, str], bytes] = {}

    def tokens(self, token: str, changed_at: str) -> bytes:
        """The SyncTokens (Data): enrollments told of the same change share them."""
        key = (token, changed_at)
        if key not in self._tokens:
            self._tokens[key] = ddm.tokens_json(token, ddm.sync_timestamp(datetime.fromisoformat(changed_at)))
        return self._tokens[key]

    def body(self, command_uuid: str, tokens: bytes) -> bytes:
        template = self._templates.get(tokens)
        if template is None:
            template = parse_command(ddm.command(self._PLACEHOLDER, tokens)).body
            assert template.count(self._PLACEHOLDER.encode()) == 1
            self._templates[tokens] = template
        return template.replace(self._PLACEHOLDER.encode(), command_uuid.encode())


async def run_ddm(runtime, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
    """The supervisor's DDM part: installs the appliance's own declarations, then runs the notifier (which
    also picks up enrollments marked before a restart)."""
    config = runtime.config
    organization = organization_of(config)

    def prepare(conn):
        install_builtins(conn, organization)
        store.start_following_groups(conn)
        return asset_key(conn)

    key = await runtime.store.write(prepare)
    options = DdmOptions(config.ddm.status_reports_kept, config.ddm.status_errors_kept,
                         config.webhook.url is not None, config.server.public_url, key)
    service = DdmService(runtime, options)
    runtime.ddm = service
    service.wake()
    await service.run(task_status=task_status)
