"""Inventory answers into the device record, the dated history of OS and name, and the inventory schedule.

Every function runs inside the caller's transaction. Name, model, OS and serial are the core devices
table's columns, so everything that shows a device shows the newest values; a fact an answer leaves out
keeps its previous value (from Authenticate or an earlier answer).
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import astuple, dataclass

from appliance.protocol.inventory import Application, DeviceFacts, Profile, SecurityFacts

# Facts whose changes are kept with a date (inventory_history.fact), as named in the devices table.
HISTORY_FACTS = ("os_version", "build_version", "device_name")
_CHUNK = 500  # well under SQLite's bound-parameter limit


@dataclass(frozen=True, slots=True)
class CertificateRow:
    """A certificate from CertificateList with what could be read from its DER (None when unreadable)."""

    common_name: str | None
    is_identity: bool | None
    sha256: str
    subject: str | None
    issuer: str | None
    not_after: str | None


def history_facts(conn: sqlite3.Connection, device_id: str) -> dict[str, str | None] | None:
    """The device's current OS version, build and name (None: no such device yet)."""
    row = conn.execute(f"SELECT {', '.join(HISTORY_FACTS)} FROM devices WHERE id = ?", (device_id,)).fetchone()
    return dict(row) if row else None


def record_history(conn: sqlite3.Connection, device_id: str, before: dict | None, after: dict | None,
                   source: str, now: str) -> list[tuple[str, str | None, str | None]]:
    """Write a dated history row per fact that changed between `before` and `after`; returns the changes.
    A device's first values (no `before`) are its starting point, not a change."""
    if before is None or after is None:
        return []
    changes = [(fact, before[fact], after[fact]) for fact in HISTORY_FACTS
               if after[fact] is not None and after[fact] != before[fact]]
    conn.executemany(
        "INSERT INTO inventory_history (device_id, fact, old_value, new_value, source, changed_at) "
        "VALUES (?, ?, ?, ?, ?, ?)",
        [(device_id, fact, old, new, source, now) for fact, old, new in changes],
    )
    return changes


def _row(conn: sqlite3.Connection, device_id: str, now: str) -> None:
    conn.execute("INSERT INTO device_inventory (device_id) VALUES (?) ON CONFLICT (device_id) DO NOTHING", (device_id,))
    conn.execute("UPDATE device_inventory SET inventory_at = ? WHERE device_id = ?", (now, device_id))


def record_device_information(conn: sqlite3.Connection, device_id: str, facts: DeviceFacts, now: str) -> None:
    conn.execute(
        """
        UPDATE devices SET
            device_name = coalesce(:name, device_name), os_version = coalesce(:os, os_version),
            build_version = coalesce(:build, build_version), product_name = coalesce(:product, product_name),
            model = coalesce(:model, model), model_name = coalesce(:model_name, model_name),
            serial_number = coalesce(:serial, serial_number), imei = coalesce(:imei, imei),
            meid = coalesce(:meid, meid), updated_at = :now
        WHERE id = :id
        """,
        {"id": device_id, "name": facts.device_name, "os": facts.os_version, "build": facts.build_version,
         "product": facts.product_name, "model": facts.model, "model_name": facts.model_name,
         "serial": facts.serial_number, "imei": facts.imei, "meid": facts.meid, "now": now},
    )
    _row(conn, device_id, now)
    conn.execute(
        """
        UPDATE device_inventory SET
            model_number = coalesce(:number, model_number),
            device_capacity = coalesce(:capacity, device_capacity),
            available_capacity = coalesce(:available, available_capacity),
            battery_level = coalesce(:battery, battery_level),
            supervised = coalesce(:supervised, supervised),
            activation_lock = coalesce(:lock, activation_lock),
            device_information_json = :json, device_information_at = :now
        WHERE device_id = :id
        """,
        {"id": device_id, "number": facts.model_number, "capacity": facts.device_capacity,
         "available": facts.available_capacity, "battery": facts.battery_level, "supervised": facts.supervised,
         "lock": facts.activation_lock, "json": _json(facts.responses), "now": now},
    )


def record_security_info(conn: sqlite3.Connection, device_id: str, facts: SecurityFacts, now: str) -> None:
    _row(conn, device_id, now)
    conn.execute(
        """
        UPDATE device_inventory SET
            passcode_present = coalesce(:present, passcode_present),
            passcode_compliant = coalesce(:compliant, passcode_compliant),
            filevault = coalesce(:filevault, filevault),
            enrolled_via_dep = coalesce(:dep, enrolled_via_dep),
            user_approved_enrollment = coalesce(:approved, user_approved_enrollment),
            security_info_json = :json, security_info_at = :now
        WHERE device_id = :id
        """,
        {"id": device_id, "present": facts.passcode_present, "compliant": facts.passcode_compliant,
         "filevault": facts.filevault, "dep": facts.enrolled_via_dep, "approved": facts.user_approved_enrollment,
         "json": _json(facts.info), "now": now},
    )


def record_profiles(conn: sqlite3.Connection, device_id: str, profiles: Sequence[Profile], now: str) -> bool:
    rows = [(device_id, p.identifier, p.uuid, p.display_name, p.organization, p.version, p.managed, p.encrypted,
             p.removal_disallowed, json.dumps(list(p.payload_types))) for p in profiles]
    return _replace_list(conn, device_id, "profiles", rows, now)


def record_certificates(conn: sqlite3.Connection, device_id: str, certificates: Sequence[CertificateRow],
                        now: str) -> bool:
    return _replace_list(conn, device_id, "certificates", [(device_id, *astuple(c)) for c in certificates], now)


def record_applications(conn: sqlite3.Connection, device_id: str, applications: Sequence[Application],
                        now: str) -> bool:
    return _replace_list(conn, device_id, "applications", [(device_id, *astuple(a)) for a in applications], now)


_LISTS = {
    "profiles": ("device_profiles", "device_id, identifier, uuid, display_name, organization, version, managed, "
                 "encrypted, removal_disallowed, payload_types"),
    "certificates": ("device_certificates", "device_id, common_name, is_identity, sha256, subject, issuer, not_after"),
    "applications": ("device_applications", "device_id, identifier, name, short_version, version, bundle_size, "
                     "installing"),
}


def _replace_list(conn: sqlite3.Connection, device_id: str, kind: str, rows: list[tuple], now: str) -> bool:
    """Replace the device's list when it differs from the stored one; returns whether it did."""
    table, columns = _LISTS[kind]
    list_hash = hashlib.sha256(json.dumps(rows, default=str).encode()).hexdigest()
    _row(conn, device_id, now)
    stored = conn.execute(f"SELECT {kind}_sha256 FROM device_inventory WHERE device_id = ?", (device_id,)).fetchone()
    conn.execute(f"UPDATE device_inventory SET {kind}_at = ?, {kind}_sha256 = ? WHERE device_id = ?",
                 (now, list_hash, device_id))
    if stored[0] == list_hash:
        return False
    conn.execute(f"DELETE FROM {table} WHERE device_id = ?", (device_id,))
    marks = ", ".join("?" * len(columns.split(",")))
    conn.executemany(f"INSERT INTO {table} ({columns}) VALUES ({marks})", rows)
    return True


def _json(value: dict) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


# --- reading ------------------------------------------------------------------------------------------

_FACT_COLUMNS = ("model_number", "device_capacity", "available_capacity", "battery_level", "supervised",
                 "activation_lock", "passcode_present", "passcode_compliant", "filevault", "enrolled_via_dep",
                 "user_approved_enrollment")
_FLAGS = {"supervised", "activation_lock", "passcode_present", "passcode_compliant", "filevault",
          "enrolled_via_dep", "user_approved_enrollment"}


def inventory(conn: sqlite3.Connection, device_id: str, *, lists: bool = True) -> dict | None:
    """What the device's inventory answers said (None: it has not answered any yet)."""
    row = conn.execute("SELECT * FROM device_inventory WHERE device_id = ?", (device_id,)).fetchone()
    if row is None:
        return None
    found = {column: (bool(row[column]) if column in _FLAGS and row[column] is not None else row[column])
             for column in _FACT_COLUMNS}
    for at in ("inventory_at", "device_information_at", "security_info_at", "profiles_at", "certificates_at",
               "applications_at"):
        found[at] = row[at]
    found["device_information"] = json.loads(row["device_information_json"]) if row["device_information_json"] else None
    found["security_info"] = json.loads(row["security_info_json"]) if row["security_info_json"] else None
    if lists:
        found["profiles"] = [dict(r) | {"payload_types": json.loads(r["payload_types"] or "[]")}
                             | {flag: _flag(r[flag]) for flag in ("managed", "encrypted", "removal_disallowed")}
                             for r in conn.execute(
            "SELECT identifier, uuid, display_name, organization, version, managed, encrypted, removal_disallowed,"
            " payload_types FROM device_profiles WHERE device_id = ? ORDER BY rowid", (device_id,))]
        found["certificates"] = [dict(r) | {"is_identity": _flag(r["is_identity"])} for r in conn.execute(
            "SELECT common_name, is_identity, sha256, subject, issuer, not_after FROM device_certificates"
            " WHERE device_id = ? ORDER BY rowid", (device_id,))]
        found["applications"] = [dict(r) | {"installing": _flag(r["installing"])} for r in conn.execute(
            "SELECT identifier, name, short_version, version, bundle_size, installing FROM device_applications"
            " WHERE device_id = ? ORDER BY rowid", (device_id,))]
    return found


def _flag(value) -> bool | None:
    return None if value is None else bool(value)


def history(conn: sqlite3.Connection, device_id: str, limit: int = 100) -> list[dict]:
    """The device's dated OS and name changes, newest first."""
    return [dict(r) for r in conn.execute(
        "SELECT fact, old_value, new_value, source, changed_at FROM inventory_history WHERE device_id = ?"
        " ORDER BY id DESC LIMIT ?", (device_id, limit))]


# --- schedule -----------------------------------------------------------------------------------------

def due_devices(conn: sqlite3.Connection, now: str, limit: int) -> list[str]:
    """Enrolled, active devices whose inventory is due: never queued, enrolled (again) since it was
    queued, or past due_at. Oldest due first."""
    return [row[0] for row in conn.execute(
        """
        SELECT e.device_id FROM enrollments e LEFT JOIN inventory_schedule s ON s.device_id = e.id
        WHERE e.id = e.device_id AND e.active = 1 AND e.token_update_count > 0
          AND (s.device_id IS NULL OR s.due_at <= :now OR s.queued_at < e.enrolled_at)
        ORDER BY coalesce(s.due_at, '') LIMIT :limit
        """, {"now": now, "limit": limit})]


def next_due(conn: sqlite3.Connection) -> str | None:
    """The earliest due_at of an active device's inventory (None: nothing scheduled)."""
    row = conn.execute(
        "SELECT s.due_at FROM inventory_schedule s JOIN enrollments e ON e.id = s.device_id"
        " WHERE e.active = 1 ORDER BY s.due_at LIMIT 1").fetchone()
    return row[0] if row else None


def schedule(conn: sqlite3.Connection, entries: Iterable[tuple[str, str, str]]) -> None:
    """(device id, queued at, due at) per device."""
    conn.executemany(
        "INSERT INTO inventory_schedule (device_id, queued_at, due_at) VALUES (?, ?, ?) "
        "ON CONFLICT (device_id) DO UPDATE SET queued_at = excluded.queued_at, due_at = excluded.due_at",
        entries,
    )


def pending_request_types(conn: sqlite3.Connection, enrollment_ids: Sequence[str],
                          request_types: Sequence[str]) -> dict[str, set[str]]:
    """The request types among `request_types` still pending (queued, sent or NotNow'd) per enrollment."""
    found: dict[str, set[str]] = {}
    types = list(request_types)
    for start in range(0, len(enrollment_ids), _CHUNK):
        chunk = list(enrollment_ids[start:start + _CHUNK])
        for row in conn.execute(
            f"SELECT q.enrollment_id, c.request_type FROM queue q JOIN commands c ON c.uuid = q.command_uuid "
            f"WHERE q.enrollment_id IN ({', '.join('?' * len(chunk))}) AND q.cancelled_at IS NULL "
            f"AND c.request_type IN ({', '.join('?' * len(types))})", chunk + types,
        ):
            found.setdefault(row[0], set()).add(row[1])
    return found
