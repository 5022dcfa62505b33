"""Queries for Apple Business Manager: the MDM server entries, their devices and assignments, and what the
ADE endpoint handed out. Each function takes the connection first, to run inside Store.read / Store.write.

A fetch or sync page is stored with its cursor in one transaction (apply_page), so a restart resumes
exactly after the last page that was stored, and a page whose devices could not be stored never moves
the cursor on.
"""

from __future__ import annotations

import json
import re
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from appliance.protocol.dep import DELETED, DepDevice
from appliance.store.timefmt import from_text, now_text, to_text

FETCH, SYNC = "fetch", "sync"
PENDING, ASSIGNED, FAILED, THROTTLED = "pending", "assigned", "failed", "throttled"
NOT_ACCESSIBLE, UNASSIGNED, REMOVED = "not_accessible", "unassigned", "removed"
ASSIGN_STATES = (PENDING, ASSIGNED, FAILED, THROTTLED, NOT_ACCESSIBLE, UNASSIGNED, REMOVED)
_CHUNK = 500
# An ABM server entry's name: the operator's word for it (in CLI commands, API paths and metrics labels).
SERVER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


class ServerExists(Exception):
    pass


class UnknownServer(LookupError):
    pass


# --- servers ------------------------------------------------------------------------------------------

_SERVER_PUBLIC = """name, certificate, created_at, version, token IS NOT NULL AS has_token, token_expires_at,
    token_imported_at, account, phase, cursor IS NOT NULL AS has_cursor, cursor_at, fetch_started_at,
    last_full_fetch_at, last_sync_at, last_error, last_error_at, profile_uuid, profile_hash, profile_defined_at"""


def create_server(conn: sqlite3.Connection, name: str, certificate_pem: bytes, key_pem: bytes, *,
                  replace: bool = False) -> None:
    """A new server entry with its key pair. replace: a new key pair for an existing entry, which drops its
    token (made for the old key) and everything synced with it."""
    now = now_text()
    exists = conn.execute("SELECT 1 FROM abm_servers WHERE name = ?", (name,)).fetchone()
    if exists and not replace:
        raise ServerExists(name)
    if exists:
        conn.execute("DELETE FROM abm_servers WHERE name = ?", (name,))
    version = (conn.execute("SELECT max(version) FROM abm_servers").fetchone()[0] or 0) + 1
    conn.execute(
        "INSERT INTO abm_servers (name, certificate, private_key, created_at, version) VALUES (?, ?, ?, ?, ?)",
        (name, certificate_pem, key_pem, now, version),
    )


def server(conn: sqlite3.Connection, name: str) -> dict | None:
    """The server's public state (never the key or the token)."""
    row = conn.execute(f"SELECT {_SERVER_PUBLIC} FROM abm_servers WHERE name = ?", (name,)).fetchone()
    return _server(row) if row else None


def servers(conn: sqlite3.Connection) -> list[dict]:
    return [_server(row) for row in conn.execute(f"SELECT {_SERVER_PUBLIC} FROM abm_servers ORDER BY name")]


def _server(row: sqlite3.Row) -> dict:
    found = dict(row)
    found["has_token"], found["has_cursor"] = bool(found["has_token"]), bool(found["has_cursor"])
    found["certificate"] = bytes(found["certificate"]).decode("ascii")
    try:
        found["account"] = json.loads(found["account"]) if found["account"] else None
    except ValueError:
        found["account"] = None
    return found


def secrets(conn: sqlite3.Connection, name: str) -> tuple[bytes, bytes, str | None] | None:
    """(certificate PEM, private key PEM, token JSON) for the worker and the token import."""
    row = conn.execute("SELECT certificate, private_key, token FROM abm_servers WHERE name = ?", (name,)).fetchone()
    return (bytes(row[0]), bytes(row[1]), row[2]) if row else None


def versions(conn: sqlite3.Connection) -> dict[str, int]:
    """Each server's version: what the running service polls to notice keys and tokens changed by the CLI."""
    return {row[0]: row[1] for row in conn.execute("SELECT name, version FROM abm_servers")}


def set_token(conn: sqlite3.Connection, name: str, token_json: str, expires_at: datetime | None) -> None:
    now = now_text()
    updated = conn.execute(
        "UPDATE abm_servers SET token = ?, token_expires_at = ?, token_imported_at = ?, last_error = NULL, "
        "last_error_at = NULL, version = (SELECT max(version) FROM abm_servers) + 1 WHERE name = ?",
        (token_json, to_text(expires_at) if expires_at else None, now, name),
    ).rowcount
    if not updated:
        raise UnknownServer(name)


def delete_server(conn: sqlite3.Connection, name: str) -> int:
    """Forget a server entry and the devices synced from it; returns how many devices went."""
    if conn.execute("DELETE FROM abm_servers WHERE name = ?", (name,)).rowcount == 0:
        raise UnknownServer(name)
    return conn.execute("DELETE FROM abm_devices WHERE server = ?", (name,)).rowcount


def record_account(conn: sqlite3.Connection, name: str, account: dict) -> None:
    conn.execute("UPDATE abm_servers SET account = ? WHERE name = ?", (json.dumps(account), name))


def record_error(conn: sqlite3.Connection, name: str, error: str | None) -> None:
    conn.execute("UPDATE abm_servers SET last_error = ?, last_error_at = ? WHERE name = ?",
                 (error, now_text() if error else None, name))


def sync_position(conn: sqlite3.Connection, name: str) -> dict | None:
    row = conn.execute(
        "SELECT phase, cursor, cursor_at, fetch_started_at, last_full_fetch_at, last_sync_at, profile_uuid, "
        "profile_hash FROM abm_servers WHERE name = ?", (name,)).fetchone()
    return dict(row) if row else None


def start_full_fetch(conn: sqlite3.Connection, name: str) -> None:
    """Forget the cursor: the next round fetches every device again (devices it does not name are gone)."""
    conn.execute("UPDATE abm_servers SET phase = ?, cursor = NULL, cursor_at = NULL, fetch_started_at = NULL "
                 "WHERE name = ?", (FETCH, name))


def record_profile(conn: sqlite3.Connection, name: str, profile_uuid: str, profile_hash: str) -> int:
    """The profile was (re)defined: every device that should have it and has another is pending again.
    Returns how many."""
    conn.execute("UPDATE abm_servers SET profile_uuid = ?, profile_hash = ?, profile_defined_at = ? "
                 "WHERE name = ?", (profile_uuid, profile_hash, now_text(), name))
    return conn.execute(
        "UPDATE abm_devices SET assign_state = ?, assign_attempts = 0, assign_next_at = NULL, assign_reason = "
        "'the profile was defined again' WHERE server = ? AND assign_state IN (?, ?, ?) "
        "AND coalesce(assigned_profile_uuid, '') != ?",
        (PENDING, name, ASSIGNED, FAILED, THROTTLED, profile_uuid),
    ).rowcount


# --- fetch and sync pages ------------------------------------------------------------------------------

_DEVICE_FACTS = ("model", "description", "color", "asset_tag", "os", "device_family")
_APPLE_STATE = ("profile_status", "profile_uuid", "profile_assign_time", "profile_push_time",
                "device_assigned_date", "device_assigned_by", "op_type", "op_date")


@dataclass
class PageOutcome:
    added: list[str] = field(default_factory=list)
    modified: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    fetch_completed: bool = False
    gone: list[str] = field(default_factory=list)  # not named by a completed full fetch
    events: list[tuple[str, dict]] = field(default_factory=list)  # (kind, device) for webhooks


def apply_page(conn: sqlite3.Connection, name: str, phase: str, devices: list[DepDevice], cursor: str,
               more_to_follow: bool, started_at: str | None = None) -> PageOutcome:
    """Store one fetch/sync page and its cursor. A record with op_type deleted removes the device from
    this server; any other names it assigned (again). `started_at`: when the full fetch began (devices
    not seen since are gone when it completes)."""
    now = now_text()
    position = sync_position(conn, name)
    if position is None:
        raise UnknownServer(name)
    profile_uuid = position["profile_uuid"]
    if phase == FETCH and position["fetch_started_at"] is None:
        conn.execute("UPDATE abm_servers SET fetch_started_at = ? WHERE name = ?", (started_at or now, name))
        position["fetch_started_at"] = started_at or now
    known = _existing(conn, [device.serial_number for device in devices])
    outcome = PageOutcome()
    upserts, removals = [], []
    for device in devices:
        before = known.get(device.serial_number)
        if device.op_type == DELETED:
            if before is not None and before["server"] == name and before["deleted_at"] is None:
                removals.append(device)
                outcome.deleted.append(device.serial_number)
                outcome.events.append(("deleted", _event_fields(device, name)))
            continue
        row = _device_row(device, name, now, profile_uuid, before)
        upserts.append(row)
        if before is None or before["deleted_at"] is not None or before["server"] != name:
            outcome.added.append(device.serial_number)
            outcome.events.append(("added", _event_fields(device, name)))
        elif any(before[key] != row[key] for key in _DEVICE_FACTS) or before["profile_status"] != row["profile_status"]:
            outcome.modified.append(device.serial_number)
            outcome.events.append(("modified", _event_fields(device, name)))
    if upserts:
        conn.executemany(_UPSERT, upserts)
    if removals:
        conn.executemany(
            "UPDATE abm_devices SET deleted_at = :now, op_type = 'deleted', op_date = :op_date, seen_at = :now, "
            "assign_state = 'removed', assign_reason = 'removed from this MDM server in Apple Business Manager', "
            "assign_next_at = NULL WHERE serial_number = :serial AND server = :server",
            [{"now": now, "op_date": _time(d.op_date), "serial": d.serial_number, "server": name} for d in removals],
        )
    # cursor_at: when Apple handed out the cursor we hold (it refuses one older than 7 days).
    fields = {"cursor": cursor, "now": now, "name": name}
    if phase == FETCH and not more_to_follow:
        outcome.fetch_completed = True
        outcome.gone = _sweep_unseen(conn, name, position["fetch_started_at"], now)
        outcome.deleted.extend(outcome.gone)
        conn.execute("UPDATE abm_servers SET phase = 'sync', cursor = :cursor, cursor_at = :now, "
                     "last_full_fetch_at = :now, last_sync_at = :now, fetch_started_at = NULL WHERE name = :name",
                     fields)
    else:
        conn.execute("UPDATE abm_servers SET cursor = :cursor, cursor_at = :now, "
                     "last_sync_at = CASE WHEN :more THEN last_sync_at ELSE :now END WHERE name = :name",
                     {**fields, "more": more_to_follow})
    return outcome


_UPSERT = f"""
INSERT INTO abm_devices (serial_number, server, {", ".join(_DEVICE_FACTS)}, {", ".join(_APPLE_STATE)},
                         added_at, modified_at, deleted_at, seen_at, assign_state, assign_reason, assign_attempts,
                         assign_next_at)
VALUES (:serial_number, :server, {", ".join(":" + k for k in _DEVICE_FACTS)},
        {", ".join(":" + k for k in _APPLE_STATE)}, :now, :now, NULL, :now, :assign_state, :assign_reason, 0, NULL)
ON CONFLICT (serial_number) DO UPDATE SET
    server = excluded.server,
    {", ".join(f"{k} = coalesce(excluded.{k}, {k})" for k in _DEVICE_FACTS)},
    {", ".join(f"{k} = excluded.{k}" for k in _APPLE_STATE)},
    added_at = CASE WHEN deleted_at IS NOT NULL OR server != excluded.server THEN excluded.added_at ELSE added_at END,
    modified_at = :now,
    deleted_at = NULL,
    seen_at = :now,
    assign_state = :assign_state,
    assign_reason = :assign_reason,
    assign_attempts = CASE WHEN :assign_state = assign_state THEN assign_attempts ELSE 0 END,
    assign_next_at = CASE WHEN :assign_state = assign_state THEN assign_next_at ELSE NULL END
"""


def _device_row(device: DepDevice, name: str, now: str, profile_uuid: str | None, before) -> dict:
    row = {"serial_number": device.serial_number, "server": name, "now": now}
    for key in _DEVICE_FACTS + _APPLE_STATE:
        value = getattr(device, key)
        row[key] = _time(value) if isinstance(value, datetime) else value
    row["assign_state"], row["assign_reason"] = _assign_state(device, name, profile_uuid, before)
    return row


def _assign_state(device: DepDevice, name: str, profile_uuid: str | None, before) -> tuple[str, str | None]:
    """What a device named by fetch or sync needs: every device of the server gets our profile, unless an
    operator unassigned it or Apple already shows ours on it."""
    moved = before is None or before["server"] != name or before["deleted_at"] is not None
    if not moved and before["assign_state"] == UNASSIGNED:
        return UNASSIGNED, before["assign_reason"]
    if profile_uuid and device.profile_uuid == profile_uuid and device.profile_status in ("assigned", "pushed"):
        return ASSIGNED, None
    if not moved and before["assign_state"] in (FAILED, THROTTLED):
        return before["assign_state"], before["assign_reason"]  # keeps waiting out its backoff
    if not moved and before["assign_state"] == ASSIGNED and before["assigned_profile_uuid"] == profile_uuid \
            and device.profile_status not in ("empty", "removed"):
        return ASSIGNED, None
    return PENDING, None


def _event_fields(device: DepDevice, name: str) -> dict:
    fields = {"serial_number": device.serial_number, "abm_server": name}
    for key in _DEVICE_FACTS + ("profile_status", "profile_uuid", "op_type"):
        value = getattr(device, key)
        if value is not None:
            fields[key] = value
    if device.op_date is not None:
        fields["op_date"] = _time(device.op_date)
    return fields


def _sweep_unseen(conn: sqlite3.Connection, name: str, started: str | None, now: str) -> list[str]:
    """A completed full fetch names every device of the server: those it did not name are no longer the
    server's (their removal may have been hidden from the syncs, as during Apple's cooldown)."""
    if started is None:
        return []
    gone = [row[0] for row in conn.execute(
        "SELECT serial_number FROM abm_devices WHERE server = ? AND deleted_at IS NULL AND seen_at < ?",
        (name, started))]
    conn.executemany(
        "UPDATE abm_devices SET deleted_at = ?, assign_state = 'removed', assign_next_at = NULL, "
        "assign_reason = 'not listed by a full fetch: no longer assigned to this MDM server' WHERE serial_number = ?",
        [(now, serial) for serial in gone])
    return gone


def _existing(conn: sqlite3.Connection, serials: list[str]) -> dict[str, sqlite3.Row]:
    found: dict[str, sqlite3.Row] = {}
    for start in range(0, len(serials), _CHUNK):
        chunk = serials[start:start + _CHUNK]
        marks = ",".join("?" * len(chunk))
        for row in conn.execute(
            "SELECT serial_number, server, deleted_at, assign_state, assign_reason, assigned_profile_uuid, "
            f"profile_status, {', '.join(_DEVICE_FACTS)} FROM abm_devices WHERE serial_number IN ({marks})", chunk,
        ):
            found[row["serial_number"]] = row
    return found


def _time(moment: datetime | None) -> str | None:
    return to_text(moment) if moment is not None else None


# --- assignment ---------------------------------------------------------------------------------------

def due_assignments(conn: sqlite3.Connection, name: str, now: str, limit: int) -> list[str]:
    """Serial numbers that should get the profile now: pending ones, and failed or throttled ones whose
    wait is over."""
    return [row[0] for row in conn.execute(
        "SELECT serial_number FROM abm_devices WHERE server = ? AND assign_state IN ('pending', 'failed', "
        "'throttled') AND (assign_next_at IS NULL OR assign_next_at <= ?) ORDER BY assign_next_at, serial_number "
        "LIMIT ?", (name, now, limit))]


def next_assignment_at(conn: sqlite3.Connection, name: str) -> str | None:
    row = conn.execute(
        "SELECT min(coalesce(assign_next_at, '')) FROM abm_devices WHERE server = ? "
        "AND assign_state IN ('pending', 'failed', 'throttled')", (name,)).fetchone()
    return row[0]


@dataclass(frozen=True)
class RetryPolicy:
    """When a device whose assignment failed is tried again: `initial` doubling per attempt up to `cap`;
    THROTTLED (Apple's cooldown: stop asking for a day) after `throttled`."""

    initial: float
    cap: float
    throttled: float

    def next_at(self, state: str, attempts: int, now: datetime) -> str:
        delay = self.throttled if state == THROTTLED else min(self.cap, self.initial * 2 ** max(0, attempts - 1))
        return to_text(now + timedelta(seconds=delay))


def record_assignments(conn: sqlite3.Connection, name: str, profile_uuid: str | None,
                       outcomes: Iterable[tuple[str, str, str | None]], policy: RetryPolicy) -> None:
    """The outcome of an assign call per device: (serial, state, reason). A failed or throttled one counts
    its attempts and waits as `policy` says; not_accessible ones wait for ABM to name them again."""
    now = now_text()
    moment = from_text(now)
    for serial, state, reason in outcomes:
        if state == ASSIGNED:
            conn.execute(
                "UPDATE abm_devices SET assign_state = 'assigned', assign_reason = NULL, assign_attempts = 0, "
                "assign_next_at = NULL, assigned_profile_uuid = ?, assigned_at = ?, profile_uuid = ?, "
                "profile_status = CASE WHEN profile_status = 'pushed' AND profile_uuid = ? THEN 'pushed' "
                "ELSE 'assigned' END WHERE serial_number = ? AND server = ?",
                (profile_uuid, now, profile_uuid, profile_uuid, serial, name))
            continue
        row = conn.execute("SELECT assign_attempts FROM abm_devices WHERE serial_number = ? AND server = ?",
                           (serial, name)).fetchone()
        if row is None:
            continue
        attempts = row[0] + 1
        retry = policy.next_at(state, attempts, moment) if state in (FAILED, THROTTLED) else None
        conn.execute("UPDATE abm_devices SET assign_state = ?, assign_reason = ?, assign_next_at = ?, "
                     "assign_attempts = ? WHERE serial_number = ? AND server = ?",
                     (state, reason, retry, attempts, serial, name))


def set_wanted(conn: sqlite3.Connection, serials: list[str], state: str, reason: str | None) -> dict[str, str | None]:
    """An operator's assign (state pending) or unassign (state unassigned): per serial, its server, or None
    when ABM never named it."""
    servers_of: dict[str, str | None] = {}
    for serial in serials:
        row = conn.execute(
            "UPDATE abm_devices SET assign_state = ?, assign_reason = ?, assign_attempts = 0, assign_next_at = NULL "
            "WHERE serial_number = ? AND deleted_at IS NULL RETURNING server", (state, reason, serial)).fetchone()
        servers_of[serial] = row[0] if row else None
    return servers_of


# --- reading -----------------------------------------------------------------------------------------

_DEVICE_LIST = """a.serial_number, a.server AS abm_server, a.model, a.description, a.color, a.asset_tag, a.os,
    a.device_family, a.profile_status, a.profile_uuid, a.profile_assign_time, a.profile_push_time,
    a.device_assigned_date, a.device_assigned_by, a.added_at, a.modified_at, a.deleted_at, a.seen_at,
    a.assign_state, a.assign_reason, a.assign_attempts, a.assign_next_at, a.assigned_profile_uuid, a.assigned_at,
    (SELECT d.id FROM devices d WHERE d.serial_number = a.serial_number ORDER BY d.updated_at DESC LIMIT 1)
        AS device_id"""


def list_devices(conn: sqlite3.Connection, *, server: str | None = None, state: str | None = None,
                 serial: str | None = None, enrolled: bool | None = None, after: str | None = None,
                 limit: int = 100) -> list[dict]:
    """ABM devices by serial number; device_id is the enrolled device (joined by serial number), or None."""
    where, args = [], []
    for column, value in (("a.server", server), ("a.assign_state", state), ("a.serial_number", serial)):
        if value is not None:
            where.append(f"{column} = ?")
            args.append(value)
    if enrolled is not None:
        where.append(("" if enrolled else "NOT ") + "EXISTS (SELECT 1 FROM devices d WHERE d.serial_number = "
                     "a.serial_number)")
    if after is not None:
        where.append("a.serial_number > ?")
        args.append(after)
    sql = f"SELECT {_DEVICE_LIST} FROM abm_devices a"
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += " ORDER BY a.serial_number LIMIT ?"
    return [_abm_device(row) for row in conn.execute(sql, (*args, limit))]


def device(conn: sqlite3.Connection, serial: str) -> dict | None:
    row = conn.execute(f"SELECT {_DEVICE_LIST} FROM abm_devices a WHERE a.serial_number = ?", (serial,)).fetchone()
    if row is None:
        return None
    found = _abm_device(row)
    found["ade"] = ade_enrollment(conn, serial)
    return found


def _abm_device(row: sqlite3.Row) -> dict:
    found = dict(row)
    found["status"] = status_phrase(found)
    return found


def status_phrase(device: dict) -> str:
    """One phrase for people: where the device stands between ABM and enrollment."""
    if device.get("deleted_at"):
        return "removed from this MDM server in Apple Business Manager"
    state = device.get("assign_state")
    if state == NOT_ACCESSIBLE:
        return "not accessible: unassigned from this MDM server or disowned in Apple Business Manager"
    if state == UNASSIGNED:
        return "profile unassigned by an operator"
    if device.get("device_id"):
        return "enrolled"
    if state == ASSIGNED:
        return "not enrolled yet (profile assigned)"
    if state in (FAILED, THROTTLED):
        return f"not enrolled yet (profile assignment {state}, next try {device.get('assign_next_at')})"
    return "not enrolled yet (profile assignment pending)"


def abm_summary(conn: sqlite3.Connection, serial: str | None) -> dict | None:
    """The ABM side of an enrolled device, for GET /v1/devices/ID."""
    if not serial:
        return None
    found = device(conn, serial)
    if found is None:
        return None
    return {key: found[key] for key in ("abm_server", "model", "description", "color", "os", "profile_status",
                                        "assign_state", "assign_reason", "added_at", "deleted_at", "status", "ade")}


def unenrolled_devices(conn: sqlite3.Connection, *, text: str | None = None, serial: str | None = None,
                       after: str | None = None, limit: int = 100) -> list[dict]:
    """ABM devices no enrolled device matches by serial number yet, for the device list ("not enrolled yet")."""
    where, args = _unenrolled(text, serial)
    if after is not None:
        where.append("a.serial_number > ?")
        args.append(after)
    rows = conn.execute(
        f"SELECT a.serial_number, a.server, a.model, a.description, a.os, a.device_family, a.assign_state, "
        f"a.assign_next_at, a.added_at FROM abm_devices a WHERE {' AND '.join(where)} "
        "ORDER BY a.serial_number LIMIT ?", (*args, limit))
    return [{
        "id": None, "serial_number": row["serial_number"], "model": row["model"],
        "model_name": row["description"], "product_name": None, "os_version": None, "device_name": None,
        "enrolled": False, "active": False, "pending_commands": 0, "status": status_phrase(dict(row)),
        "abm": {"server": row["server"], "assign_state": row["assign_state"], "os": row["os"],
                "device_family": row["device_family"], "added_at": row["added_at"]},
    } for row in rows]


def count_unenrolled(conn: sqlite3.Connection, *, text: str | None = None, serial: str | None = None) -> int:
    where, args = _unenrolled(text, serial)
    return conn.execute(f"SELECT count(*) FROM abm_devices a WHERE {' AND '.join(where)}", args).fetchone()[0]


def _unenrolled(text: str | None, serial: str | None) -> tuple[list[str], list]:
    where = ["a.deleted_at IS NULL", "NOT EXISTS (SELECT 1 FROM devices d WHERE d.serial_number = a.serial_number)"]
    args: list = []
    if text:
        where.append("instr(lower(a.serial_number || ' ' || coalesce(a.model, '') || ' ' || "
                     "coalesce(a.description, '')), lower(?)) > 0")
        args.append(text)
    if serial is not None:
        where.append("a.serial_number = ?")
        args.append(serial)
    return where, args


def counts(conn: sqlite3.Connection) -> dict[tuple[str, str], int]:
    """(server, assign_state) -> devices, removed ones under "removed"; for /metrics and /healthz."""
    return {(row[0], row[1]): row[2] for row in conn.execute(
        "SELECT server, CASE WHEN deleted_at IS NOT NULL THEN 'removed' ELSE assign_state END, count(*) "
        "FROM abm_devices GROUP BY 1, 2")}


# --- the ADE endpoint ---------------------------------------------------------------------------------

def assigned_server(conn: sqlite3.Connection, serial: str) -> str | None:
    """The server an ABM device belongs to now (None: not known from ABM, or removed)."""
    row = conn.execute("SELECT server FROM abm_devices WHERE serial_number = ? AND deleted_at IS NULL",
                       (serial,)).fetchone()
    return row[0] if row else None


def record_profile_served(conn: sqlite3.Connection, *, serial: str, udid: str, server: str | None, info: dict,
                          signed: bool, awaits_configuration: bool) -> None:
    now = now_text()
    conn.execute(
        """
        INSERT INTO ade_enrollments (serial_number, udid, server, product, version, os_version, language, imei, meid,
                                     signed, profile_served_at, setup_state, updated_at)
        VALUES (:serial, :udid, :server, :product, :version, :os_version, :language, :imei, :meid, :signed, :now,
                :setup, :now)
        ON CONFLICT (serial_number) DO UPDATE SET
            udid = excluded.udid, server = excluded.server, product = excluded.product, version = excluded.version,
            os_version = excluded.os_version, language = excluded.language, imei = excluded.imei,
            meid = excluded.meid, signed = excluded.signed, profile_served_at = excluded.profile_served_at,
            profiles_served = profiles_served + 1, setup_state = excluded.setup_state, setup_commands = NULL,
            device_configured_uuid = NULL, setup_started_at = NULL, configured_at = NULL,
            updated_at = excluded.updated_at
        """,
        {"serial": serial, "udid": udid, "server": server, "signed": int(signed), "now": now,
         "setup": "awaiting" if awaits_configuration else None, **info},
    )


def tie_challenge(conn: sqlite3.Connection, challenge_sha256: bytes, serial: str) -> None:
    now = now_text()
    # Challenges expire (scep_challenges drops them); their ties go with them.
    conn.execute("DELETE FROM ade_challenges WHERE challenge_sha256 NOT IN (SELECT challenge_sha256 FROM "
                 "scep_challenges)")
    conn.execute("INSERT OR REPLACE INTO ade_challenges (challenge_sha256, serial_number, created_at) VALUES (?, ?, ?)",
                 (challenge_sha256, serial, now))


def challenge_serial(conn: sqlite3.Connection, challenge_sha256: bytes) -> str | None:
    row = conn.execute("SELECT serial_number FROM ade_challenges WHERE challenge_sha256 = ?",
                       (challenge_sha256,)).fetchone()
    return row[0] if row else None


def tie_identity(conn: sqlite3.Connection, sha256: str, serial: str) -> None:
    conn.execute("INSERT OR REPLACE INTO ade_identities (sha256, serial_number, issued_at) VALUES (?, ?, ?)",
                 (sha256, serial, now_text()))


def identity_serial(conn: sqlite3.Connection, sha256: str) -> str | None:
    row = conn.execute("SELECT serial_number FROM ade_identities WHERE sha256 = ?", (sha256,)).fetchone()
    return row[0] if row else None


def ade_enrollment(conn: sqlite3.Connection, serial: str) -> dict | None:
    row = conn.execute(
        "SELECT udid, server, signed, profile_served_at, profiles_served, setup_state, setup_commands, "
        "device_configured_uuid, setup_started_at, configured_at FROM ade_enrollments WHERE serial_number = ?",
        (serial,)).fetchone()
    if row is None:
        return None
    found = dict(row)
    found["signed"] = bool(found["signed"])
    found["setup_commands"] = json.loads(found["setup_commands"]) if found["setup_commands"] else []
    return found


def setup_of(conn: sqlite3.Connection, udid: str) -> sqlite3.Row | None:
    """The ADE record of a device (by its UDID): its setup_state, the setup commands and DeviceConfigured."""
    return conn.execute(
        "SELECT serial_number, setup_state, setup_commands, device_configured_uuid FROM ade_enrollments "
        "WHERE udid = ? ORDER BY profile_served_at DESC LIMIT 1", (udid,)).fetchone()


def set_setup(conn: sqlite3.Connection, serial: str, state: str, *, commands: list[str] | None = None,
              device_configured_uuid: str | None = None) -> None:
    now = now_text()
    conn.execute(
        "UPDATE ade_enrollments SET setup_state = ?, updated_at = ?, "
        "setup_commands = coalesce(?, setup_commands), device_configured_uuid = coalesce(?, device_configured_uuid), "
        "setup_started_at = CASE WHEN ? = 'setup_commands' OR setup_started_at IS NULL THEN ? "
        "ELSE setup_started_at END, "
        "configured_at = CASE WHEN ? = 'configured' THEN ? ELSE configured_at END WHERE serial_number = ?",
        (state, now, json.dumps(commands) if commands is not None else None, device_configured_uuid,
         state, now, state, now, serial))
