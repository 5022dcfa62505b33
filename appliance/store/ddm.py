"""Declarative Device Management storage: declarations, sets and their assignment, each enrollment's
effective declarations, the enrollments waiting to be notified, and reported status. Every function takes
the connection and runs inside the caller's store.read/.write.

An enrollment's effective declarations: those in the sets assigned to it or to a group its device is a member
of (ddm_assignments), everything they
name (an activation's configurations, a configuration's assets; ddm_references, followed to the end), and
the appliance's own declarations for its channel. Nothing else is ever served to it.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Sequence
from typing import Any

from appliance.protocol import ddm
from appliance.protocol.ddm import Item, StatusReport
from appliance.store import groups
from appliance.store.timefmt import now_text

_CHUNK = 500
_META_GROUP_CURSOR = "ddm_group_change_id"  # the last group membership change the notifier followed


class InUse(Exception):
    """A declaration cannot go or change kind: sets hold it or other declarations name it."""


def channel_of(enrollment_id: str) -> str:
    """A user channel's id holds a colon (UDID:UserID); a device id never does (appliance.protocol.enrollment)."""
    return ddm.USER_CHANNEL if ":" in enrollment_id else ddm.DEVICE_CHANNEL


# --- declarations --------------------------------------------------------------------------------------

def declaration(conn: sqlite3.Connection, identifier: str) -> sqlite3.Row | None:
    return conn.execute(
        "SELECT identifier, type, kind, payload, server_token, touch, builtin, created_at, updated_at "
        "FROM ddm_declarations WHERE identifier = ?", (identifier,)).fetchone()


def declaration_kinds(conn: sqlite3.Connection, identifiers: Iterable[str]) -> dict[str, tuple[str, str]]:
    """{identifier: (type, kind)} of those that exist."""
    ids = list(dict.fromkeys(identifiers))
    found: dict[str, tuple[str, str]] = {}
    for start in range(0, len(ids), _CHUNK):
        chunk = ids[start:start + _CHUNK]
        marks = ",".join("?" * len(chunk))
        for row in conn.execute(f"SELECT identifier, type, kind FROM ddm_declarations WHERE identifier IN ({marks})",
                                chunk):
            found[row[0]] = (row[1], row[2])
    return found


def list_declarations(conn: sqlite3.Connection, *, builtin: bool = False) -> list[dict[str, Any]]:
    where = "" if builtin else "WHERE builtin IS NULL"
    return [dict(row) for row in conn.execute(
        "SELECT identifier, type, kind, server_token, builtin, updated_at, "
        "(SELECT group_concat(set_name, ',') FROM ddm_set_declarations s WHERE s.identifier = d.identifier) AS sets "
        f"FROM ddm_declarations d {where} ORDER BY identifier")]


def put_declaration(conn: sqlite3.Connection, declaration_: ddm.Declaration, builtin: str | None = None) -> bool:
    """Store (insert or replace) a checked declaration whose references exist; True when it changed.

    Its ServerToken is computed over the content and the touch count, so the same content stored twice is
    no change. Raises InUse when it would change manifest kind while other declarations name it."""
    d = declaration_
    row = conn.execute("SELECT server_token, touch, kind FROM ddm_declarations WHERE identifier = ?",
                       (d.identifier,)).fetchone()
    touch = row["touch"] if row else 0
    token = ddm.server_token(d.type, d.identifier, d.payload, touch)
    if row is not None and row["server_token"] == token:
        return False
    if row is not None and row["kind"] != d.kind:
        named_by = _named_by(conn, d.identifier)
        if named_by:
            raise InUse(f"{d.identifier} is named by {', '.join(named_by[:5])} as its {row['kind']}: it cannot "
                        f"become another kind ({d.kind})")
    now = now_text()
    conn.execute(
        "INSERT INTO ddm_declarations (identifier, type, kind, payload, server_token, touch, builtin, created_at, "
        "updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (identifier) DO UPDATE SET type = excluded.type, "
        "kind = excluded.kind, payload = excluded.payload, server_token = excluded.server_token, "
        "builtin = excluded.builtin, updated_at = excluded.updated_at",
        (d.identifier, d.type, d.kind, d.payload_json, token, touch, builtin, now, now),
    )
    conn.execute("DELETE FROM ddm_references WHERE identifier = ?", (d.identifier,))
    targets = dict.fromkeys(ref.identifier for ref in d.references if ref.identifier != d.identifier)
    conn.executemany("INSERT INTO ddm_references (identifier, target) VALUES (?, ?)",
                     [(d.identifier, target) for target in targets])
    return True


def touch_declaration(conn: sqlite3.Connection, identifier: str) -> bool:
    """A new ServerToken for unchanged content; False when there is no such declaration."""
    row = declaration(conn, identifier)
    if row is None:
        return False
    touch = row["touch"] + 1
    token = ddm.server_token(row["type"], identifier, json.loads(row["payload"]), touch)
    conn.execute("UPDATE ddm_declarations SET touch = ?, server_token = ?, updated_at = ? WHERE identifier = ?",
                 (touch, token, now_text(), identifier))
    return True


def delete_declaration(conn: sqlite3.Connection, identifier: str) -> bool:
    """False when there was none; InUse while a set holds it or another declaration names it."""
    sets = declaration_sets(conn, identifier)
    if sets:
        raise InUse(f"{identifier} is in set(s) {', '.join(sets[:5])}: take it out of them first")
    named_by = _named_by(conn, identifier)
    if named_by:
        raise InUse(f"{identifier} is named by {', '.join(named_by[:5])}: change or delete those first")
    conn.execute("DELETE FROM ddm_assets WHERE identifier = ?", (identifier,))
    return conn.execute("DELETE FROM ddm_declarations WHERE identifier = ?", (identifier,)).rowcount > 0


def _named_by(conn: sqlite3.Connection, identifier: str) -> list[str]:
    return [row[0] for row in conn.execute(
        "SELECT identifier FROM ddm_references WHERE target = ? ORDER BY identifier", (identifier,))]


def builtin_identifiers(conn: sqlite3.Connection) -> set[str]:
    return {row[0] for row in conn.execute("SELECT identifier FROM ddm_declarations WHERE builtin IS NOT NULL")}


# --- sets and assignment -------------------------------------------------------------------------------

def list_sets(conn: sqlite3.Connection) -> list[str]:
    return [row[0] for row in conn.execute(
        "SELECT set_name FROM ddm_set_declarations UNION SELECT set_name FROM ddm_enrollment_sets "
        "UNION SELECT set_name FROM ddm_group_sets ORDER BY 1")]


def set_declarations(conn: sqlite3.Connection, set_name: str) -> list[str]:
    return [row[0] for row in conn.execute(
        "SELECT identifier FROM ddm_set_declarations WHERE set_name = ? ORDER BY identifier", (set_name,))]


def declaration_sets(conn: sqlite3.Connection, identifier: str) -> list[str]:
    return [row[0] for row in conn.execute(
        "SELECT set_name FROM ddm_set_declarations WHERE identifier = ? ORDER BY set_name", (identifier,))]


def set_enrollments(conn: sqlite3.Connection, set_name: str) -> list[str]:
    return [row[0] for row in conn.execute(
        "SELECT DISTINCT enrollment_id FROM ddm_assignments WHERE set_name = ? ORDER BY enrollment_id", (set_name,))]


def add_to_set(conn: sqlite3.Connection, set_name: str, identifier: str) -> bool:
    return conn.execute(
        "INSERT INTO ddm_set_declarations (set_name, identifier, created_at) VALUES (?, ?, ?) "
        "ON CONFLICT DO NOTHING", (set_name, identifier, now_text())).rowcount > 0


def remove_from_set(conn: sqlite3.Connection, set_name: str, identifier: str) -> bool:
    return conn.execute("DELETE FROM ddm_set_declarations WHERE set_name = ? AND identifier = ?",
                        (set_name, identifier)).rowcount > 0


def enrollment_sets(conn: sqlite3.Connection, enrollment_id: str) -> list[str]:
    return [row[0] for row in conn.execute(
        "SELECT DISTINCT set_name FROM ddm_assignments WHERE enrollment_id = ? ORDER BY set_name", (enrollment_id,))]


def assign(conn: sqlite3.Connection, enrollment_ids: Sequence[str], set_name: str) -> list[str]:
    """Assign the set to each id; returns the ids it was new for."""
    now = now_text()
    return [eid for eid in dict.fromkeys(enrollment_ids) if conn.execute(
        "INSERT INTO ddm_enrollment_sets (enrollment_id, set_name, created_at) VALUES (?, ?, ?) "
        "ON CONFLICT DO NOTHING", (eid, set_name, now)).rowcount]


def unassign(conn: sqlite3.Connection, enrollment_ids: Sequence[str], set_name: str | None) -> list[str]:
    """Take the set (None: every set) off each id; returns the ids that lost one."""
    if set_name is None:
        return [eid for eid in dict.fromkeys(enrollment_ids) if conn.execute(
            "DELETE FROM ddm_enrollment_sets WHERE enrollment_id = ?", (eid,)).rowcount]
    return [eid for eid in dict.fromkeys(enrollment_ids) if conn.execute(
        "DELETE FROM ddm_enrollment_sets WHERE enrollment_id = ? AND set_name = ?", (eid, set_name)).rowcount]


# --- sets assigned to groups: each member's device channel gets them ----------------------------------

def group_sets(conn: sqlite3.Connection, group: str) -> list[str]:
    return [row[0] for row in conn.execute(
        "SELECT set_name FROM ddm_group_sets WHERE group_name = ? ORDER BY set_name", (group,))]


def set_groups(conn: sqlite3.Connection, set_name: str) -> list[str]:
    return [row[0] for row in conn.execute(
        "SELECT group_name FROM ddm_group_sets WHERE set_name = ? ORDER BY group_name COLLATE NOCASE", (set_name,))]


def enrollment_groups(conn: sqlite3.Connection, enrollment_id: str) -> dict[str, list[str]]:
    """{group: its sets} for the groups this enrollment's device channel gets sets from."""
    found: dict[str, list[str]] = {}
    for group, set_name in conn.execute(
            "SELECT gs.group_name, gs.set_name FROM group_members AS m JOIN ddm_group_sets AS gs "
            "ON gs.group_name = m.group_name WHERE m.device_id = ? ORDER BY 1 COLLATE NOCASE, 2", (enrollment_id,)):
        found.setdefault(group, []).append(set_name)
    return found


def assign_group(conn: sqlite3.Connection, group: str, set_name: str) -> bool:
    """The group must exist (the foreign key refuses it otherwise)."""
    return conn.execute("INSERT INTO ddm_group_sets (group_name, set_name, created_at) VALUES (?, ?, ?) "
                        "ON CONFLICT DO NOTHING", (group, set_name, now_text())).rowcount > 0


def unassign_group(conn: sqlite3.Connection, group: str, set_name: str) -> bool:
    return conn.execute("DELETE FROM ddm_group_sets WHERE group_name = ? AND set_name = ?",
                        (group, set_name)).rowcount > 0


def mark_group(conn: sqlite3.Connection, group: str, *, forced: bool = False) -> int:
    """Every member of the group (its device channel)."""
    return conn.execute(_MARK.format(
        select="SELECT device_id, :forced, :now FROM group_members WHERE group_name = :group AND true"),
        {"forced": int(forced), "now": now_text(), "group": group}).rowcount


def start_following_groups(conn: sqlite3.Connection) -> None:
    """The first start with group assignment follows membership changes from now: none before could matter."""
    conn.execute("INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO NOTHING",
                 (_META_GROUP_CURSOR, str(groups.last_change_id(conn))))


def _group_cursor(conn: sqlite3.Connection) -> int:
    row = conn.execute("SELECT value FROM meta WHERE key = ?", (_META_GROUP_CURSOR,)).fetchone()
    return int(row[0]) if row else 0


def group_changes_waiting(conn: sqlite3.Connection) -> bool:
    return groups.last_change_id(conn) > _group_cursor(conn)


def follow_group_changes(conn: sqlite3.Connection, limit: int) -> tuple[int, bool]:
    """Mark the devices whose group membership changed since the last call (joined or left: a group with
    sets, or a deleted one, changes what they get; the notifier tells only those whose tokens changed).
    The position is kept with the marks, in the same transaction. Returns (changes followed, more waiting)."""
    changes = groups.changes_since(conn, _group_cursor(conn), limit)
    if changes:
        mark(conn, [change.device_id for change in changes])
        conn.execute("INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = "
                     "excluded.value", (_META_GROUP_CURSOR, str(changes[-1].id)))
    return len(changes), len(changes) == limit


# --- what an enrollment sees ---------------------------------------------------------------------------

_EFFECTIVE = """
WITH RECURSIVE effective(identifier) AS (
    SELECT sd.identifier FROM ddm_set_declarations AS sd WHERE sd.set_name IN ({sets})
    UNION
    SELECT identifier FROM ddm_declarations WHERE builtin IN ('any', :channel)
    UNION
    SELECT r.target FROM ddm_references AS r JOIN effective AS e ON r.identifier = e.identifier
)
"""
_OF_ENROLLMENT = _EFFECTIVE.format(sets="SELECT set_name FROM ddm_assignments WHERE enrollment_id = :enrollment")
_OF_SETS = _EFFECTIVE.format(sets="SELECT value FROM json_each(:sets)")
_ITEMS = "SELECT d.kind, d.identifier, d.server_token FROM effective JOIN ddm_declarations AS d USING (identifier)"
_ITEMS_OF_ENROLLMENT = _OF_ENROLLMENT + _ITEMS
_ITEMS_OF_SETS = _OF_SETS + _ITEMS
_ONE_OF_ENROLLMENT = _OF_ENROLLMENT + (
    "SELECT d.type, d.identifier, d.server_token, d.payload FROM ddm_declarations AS d "
    "WHERE d.identifier = :identifier AND d.kind = :kind AND d.identifier IN (SELECT identifier FROM effective)")


def effective_items(conn: sqlite3.Connection, enrollment_id: str) -> list[Item]:
    rows = conn.execute(_ITEMS_OF_ENROLLMENT, {"enrollment": enrollment_id, "channel": channel_of(enrollment_id)})
    return [Item(*row) for row in rows]


def items_of_sets(conn: sqlite3.Connection, set_names: Iterable[str], channel: str) -> list[Item]:
    rows = conn.execute(_ITEMS_OF_SETS, {"sets": json.dumps(sorted(set_names)), "channel": channel})
    return [Item(*row) for row in rows]


def effective_declaration(conn: sqlite3.Connection, enrollment_id: str, kind: str, identifier: str
                          ) -> sqlite3.Row | None:
    """The declaration if it is one of this enrollment's, else None (the device gets a 404)."""
    return conn.execute(_ONE_OF_ENROLLMENT, {"enrollment": enrollment_id, "channel": channel_of(enrollment_id),
                                             "kind": kind, "identifier": identifier}).fetchone()


def record_sync(conn: sqlite3.Connection, enrollment_id: str, token: str) -> str:
    """The enrollment was handed this DeclarationsToken; returns since when it has been its token."""
    now = now_text()
    return conn.execute(
        "INSERT INTO ddm_enrollments (enrollment_id, declarations_token, token_changed_at, last_sync_at) "
        "VALUES (?, ?, ?, ?) ON CONFLICT (enrollment_id) DO UPDATE SET "
        "token_changed_at = CASE WHEN declarations_token IS excluded.declarations_token "
        "    THEN token_changed_at ELSE excluded.token_changed_at END, "
        "declarations_token = excluded.declarations_token, last_sync_at = excluded.last_sync_at "
        "RETURNING token_changed_at", (enrollment_id, token, now, now)).fetchone()[0]


def sync_state(conn: sqlite3.Connection, enrollment_id: str) -> sqlite3.Row | None:
    return conn.execute("SELECT * FROM ddm_enrollments WHERE enrollment_id = ?", (enrollment_id,)).fetchone()


def forget_sync(conn: sqlite3.Connection, enrollment_id: str) -> None:
    """The device starts over (enrolled again): it holds no declarations, whatever it was told before."""
    conn.execute("UPDATE ddm_enrollments SET declarations_token = NULL WHERE enrollment_id = ?", (enrollment_id,))


# --- who must be told ----------------------------------------------------------------------------------

_MARK = ("INSERT INTO ddm_dirty (enrollment_id, forced, marked_at) {select} "
         "ON CONFLICT (enrollment_id) DO UPDATE SET forced = max(forced, excluded.forced)")


def mark(conn: sqlite3.Connection, enrollment_ids: Iterable[str], *, forced: bool = False) -> int:
    now = now_text()
    rows = [(eid, int(forced), now) for eid in dict.fromkeys(enrollment_ids)]
    conn.executemany(_MARK.format(select="VALUES (?, ?, ?)"), rows)
    return len(rows)


def mark_sets(conn: sqlite3.Connection, set_names: Iterable[str], *, forced: bool = False) -> int:
    return conn.execute(_MARK.format(
        select="SELECT DISTINCT enrollment_id, :forced, :now FROM ddm_assignments "
               "WHERE set_name IN (SELECT value FROM json_each(:sets)) AND true"),
        {"forced": int(forced), "now": now_text(), "sets": json.dumps(list(set_names))}).rowcount


def mark_declarations(conn: sqlite3.Connection, identifiers: Iterable[str], *, forced: bool = False) -> int:
    """Every enrollment whose effective declarations hold one of these (or something naming one)."""
    ids = list(identifiers)
    params = {"forced": int(forced), "now": now_text(), "ids": json.dumps(ids)}
    count = conn.execute(_MARK.format(select="""
        WITH RECURSIVE naming(identifier) AS (
            SELECT value FROM json_each(:ids)
            UNION
            SELECT r.identifier FROM ddm_references AS r JOIN naming AS n ON r.target = n.identifier
        )
        SELECT DISTINCT a.enrollment_id, :forced, :now FROM naming
            JOIN ddm_set_declarations AS sd ON sd.identifier = naming.identifier
            JOIN ddm_assignments AS a ON a.set_name = sd.set_name WHERE true"""), params).rowcount
    if conn.execute("SELECT 1 FROM ddm_declarations WHERE builtin IS NOT NULL AND identifier IN "
                    "(SELECT value FROM json_each(:ids))", params).fetchone():
        count += mark_every_ddm_enrollment(conn, forced=forced)
    return count


def mark_every_ddm_enrollment(conn: sqlite3.Connection, *, forced: bool = False) -> int:
    """The appliance's own declarations changed: every enrollment that speaks DDM must hear of it."""
    return conn.execute(_MARK.format(
        select="SELECT enrollment_id, :forced, :now FROM ddm_enrollments WHERE declarations_token IS NOT NULL "
               "UNION SELECT enrollment_id, :forced, :now FROM ddm_assignments WHERE true"),
        {"forced": int(forced), "now": now_text()}).rowcount


def take_dirty(conn: sqlite3.Connection, limit: int) -> list[tuple[str, bool]]:
    rows = conn.execute("SELECT enrollment_id, forced FROM ddm_dirty ORDER BY marked_at, enrollment_id LIMIT ?",
                        (limit,)).fetchall()
    conn.executemany("DELETE FROM ddm_dirty WHERE enrollment_id = ?", [(row[0],) for row in rows])
    return [(row[0], bool(row[1])) for row in rows]


def dirty_count(conn: sqlite3.Connection) -> int:
    return conn.execute("SELECT count(*) FROM ddm_dirty").fetchone()[0]


def notify_targets(conn: sqlite3.Connection, enrollment_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Of these ids, the active enrollments: their assigned sets, last token and last command."""
    found: dict[str, dict[str, Any]] = {}
    for start in range(0, len(enrollment_ids), _CHUNK):
        chunk = list(enrollment_ids[start:start + _CHUNK])
        marks = ",".join("?" * len(chunk))
        for row in conn.execute(
                "SELECT e.id, de.declarations_token, de.token_changed_at, de.command_uuid FROM enrollments AS e "
                f"LEFT JOIN ddm_enrollments AS de ON de.enrollment_id = e.id WHERE e.id IN ({marks}) AND e.active = 1",
                chunk):
            found[row[0]] = {"token": row[1], "changed_at": row[2], "command_uuid": row[3], "sets": []}
        for row in conn.execute(f"SELECT enrollment_id, set_name FROM ddm_assignments WHERE enrollment_id IN ({marks})",
                                chunk):
            if row[0] in found and row[1] not in found[row[0]]["sets"]:
                found[row[0]]["sets"].append(row[1])
    return found


def record_notified(conn: sqlite3.Connection, enrollment_id: str, token: str, changed_at: str,
                    command_uuid: str) -> None:
    conn.execute(
        "INSERT INTO ddm_enrollments (enrollment_id, declarations_token, token_changed_at, command_uuid, notified_at) "
        "VALUES (?, ?, ?, ?, ?) ON CONFLICT (enrollment_id) DO UPDATE SET "
        "declarations_token = excluded.declarations_token, token_changed_at = excluded.token_changed_at, "
        "command_uuid = excluded.command_uuid, notified_at = excluded.notified_at",
        (enrollment_id, token, changed_at, command_uuid, now_text()))


def replaceable_command(conn: sqlite3.Connection, enrollment_id: str, command_uuid: str | None) -> bool:
    """Our earlier DeclarativeManagement command still waits and the device does not hold it (never sent,
    or NotNow'd since): its Data can be brought up to date instead of queueing another."""
    if command_uuid is None:
        return False
    return conn.execute(
        "SELECT 1 FROM queue WHERE enrollment_id = ? AND command_uuid = ? AND cancelled_at IS NULL "
        "AND (sent_at IS NULL OR (not_now_at IS NOT NULL AND not_now_at >= sent_at))",
        (enrollment_id, command_uuid)).fetchone() is not None


def replace_command_body(conn: sqlite3.Connection, command_uuid: str, body: bytes) -> None:
    conn.execute("UPDATE commands SET body = ? WHERE uuid = ?", (body, command_uuid))


# --- status --------------------------------------------------------------------------------------------

def store_status(conn: sqlite3.Connection, enrollment_id: str, report: StatusReport, report_id: str, *,
                 reports_kept: int, errors_kept: int) -> list[dict[str, Any]]:
    """Keep a status report: the raw report (the newest reports_kept), the latest status per declaration,
    the values (a path's values are replaced by the report's), the errors (the newest errors_kept).
    Returns the declarations whose status changed: {identifier, kind, active, valid, server_token,
    reasons, previous} (previous: None, or the former active/valid/server_token)."""
    now = now_text()
    conn.execute("INSERT INTO ddm_status_reports (enrollment_id, report_id, raw, received_at) VALUES (?, ?, ?, ?)",
                 (enrollment_id, report_id, report.raw, now))
    _keep_newest(conn, "ddm_status_reports", enrollment_id, reports_kept)
    changes = []
    for status in report.declarations:
        previous = conn.execute("SELECT active, valid, server_token FROM ddm_status WHERE enrollment_id = ? AND "
                                "identifier = ?", (enrollment_id, status.identifier)).fetchone()
        reasons = json.dumps(list(status.reasons), ensure_ascii=False) if status.reasons else None
        conn.execute(
            "INSERT INTO ddm_status (enrollment_id, identifier, kind, active, valid, server_token, reasons, report_id, "
            "received_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (enrollment_id, identifier) DO UPDATE SET "
            "kind = excluded.kind, active = excluded.active, valid = excluded.valid, "
            "server_token = excluded.server_token, reasons = excluded.reasons, report_id = excluded.report_id, "
            "received_at = excluded.received_at",
            (enrollment_id, status.identifier, status.kind, int(status.active), status.valid, status.server_token,
             reasons, report_id, now))
        before = None if previous is None else {"active": bool(previous[0]), "valid": previous[1],
                                                 "server_token": previous[2]}
        after = {"active": status.active, "valid": status.valid, "server_token": status.server_token}
        if before != after:
            changes.append({"identifier": status.identifier, "kind": status.kind, **after,
                            "reasons": list(status.reasons), "previous": before})
    if report.full_report:
        # The whole state: what it no longer reports is gone from the device.
        reported = json.dumps([status.identifier for status in report.declarations])
        conn.execute("DELETE FROM ddm_status WHERE enrollment_id = ? AND identifier NOT IN "
                     "(SELECT value FROM json_each(?))", (enrollment_id, reported))
        conn.execute("DELETE FROM ddm_status_values WHERE enrollment_id = ?", (enrollment_id,))
    else:
        paths = json.dumps(sorted({value.path for value in report.values}))
        conn.execute("DELETE FROM ddm_status_values WHERE enrollment_id = ? AND path IN "
                     "(SELECT value FROM json_each(?))", (enrollment_id, paths))
    conn.executemany(
        "INSERT INTO ddm_status_values (enrollment_id, path, value, report_id, received_at) VALUES (?, ?, ?, ?, ?)",
        [(enrollment_id, value.path, value.value, report_id, now) for value in report.values])
    conn.executemany(
        "INSERT INTO ddm_status_errors (enrollment_id, path, error, report_id, received_at) VALUES (?, ?, ?, ?, ?)",
        [(enrollment_id, error.path, json.dumps(error.error, ensure_ascii=False), report_id, now)
         for error in report.errors])
    if report.errors:
        _keep_newest(conn, "ddm_status_errors", enrollment_id, errors_kept)
    conn.execute("INSERT INTO ddm_enrollments (enrollment_id, last_status_at) VALUES (?, ?) "
                 "ON CONFLICT (enrollment_id) DO UPDATE SET last_status_at = excluded.last_status_at",
                 (enrollment_id, now))
    return changes


def _keep_newest(conn: sqlite3.Connection, table: str, enrollment_id: str, kept: int) -> None:
    conn.execute(
        f"DELETE FROM {table} WHERE enrollment_id = ? AND id <= (SELECT id FROM {table} WHERE enrollment_id = ? "
        "ORDER BY id DESC LIMIT 1 OFFSET ?)", (enrollment_id, enrollment_id, kept))


def declaration_status(conn: sqlite3.Connection, enrollment_ids: Sequence[str]) -> dict[str, list[dict]]:
    """Per enrollment, the latest status of each declaration it reported (KMFDDM's shape), with `current`:
    whether it reported the declaration's present ServerToken."""
    found: dict[str, list[dict]] = {eid: [] for eid in enrollment_ids}
    for eid in found:
        for row in conn.execute(
                "SELECT s.identifier, s.kind, s.active, s.valid, s.server_token, s.reasons, s.report_id, "
                "s.received_at, d.server_token AS current_token FROM ddm_status AS s "
                "LEFT JOIN ddm_declarations AS d ON d.identifier = s.identifier "
                "WHERE s.enrollment_id = ? ORDER BY s.kind, s.identifier", (eid,)):
            entry = {"identifier": row["identifier"], "active": bool(row["active"]), "valid": row["valid"],
                     "server-token": row["server_token"], "current": row["current_token"] == row["server_token"],
                     "status_received": row["received_at"], "status_id": row["report_id"]}
            if row["reasons"]:
                entry["reasons"] = json.loads(row["reasons"])
            found[eid].append(entry)
    return found


def status_errors(conn: sqlite3.Connection, enrollment_ids: Sequence[str], limit: int = 10) -> dict[str, list[dict]]:
    found: dict[str, list[dict]] = {}
    for eid in dict.fromkeys(enrollment_ids):
        found[eid] = [
            {"path": row[0], "error": json.loads(row[1]), "timestamp": row[2], "status_id": row[3]}
            for row in conn.execute(
                "SELECT path, error, received_at, report_id FROM ddm_status_errors WHERE enrollment_id = ? "
                "ORDER BY id DESC LIMIT ?", (eid, limit))]
    return found


def status_values(conn: sqlite3.Connection, enrollment_ids: Sequence[str], prefix: str | None = None
                  ) -> dict[str, list[dict]]:
    """Values per enrollment; `prefix` is matched as SQL LIKE (KMFDDM: '%' is the wildcard)."""
    found: dict[str, list[dict]] = {}
    for eid in dict.fromkeys(enrollment_ids):
        sql = "SELECT path, value, received_at, report_id FROM ddm_status_values WHERE enrollment_id = ?"
        args: list[Any] = [eid]
        if prefix:
            sql += " AND path LIKE ?"
            args.append(prefix)
        found[eid] = [{"path": row[0], "value": row[1], "timestamp": row[2], "status_id": row[3]}
                      for row in conn.execute(sql + " ORDER BY path, rowid", args)]
    return found


def status_report(conn: sqlite3.Connection, enrollment_id: str, *, index: int | None = None,
                  report_id: str | None = None) -> dict[str, Any] | None:
    """A kept raw report: by report id, or by index (0 = the newest); with its index and time."""
    rows = conn.execute("SELECT id, report_id, raw, received_at FROM ddm_status_reports WHERE enrollment_id = ? "
                        "ORDER BY id DESC", (enrollment_id,)).fetchall()
    for position, row in enumerate(rows):
        if (report_id is not None and row["report_id"] == report_id) or (report_id is None and position == (index or 0)):
            return {"index": position, "report_id": row["report_id"], "raw": row["raw"],
                    "received_at": row["received_at"]}
    return None


# --- fleet-wide status ---------------------------------------------------------------------------------

_TARGETS = """
WITH RECURSIVE reach(root, identifier) AS (
    SELECT identifier, identifier FROM ddm_declarations WHERE builtin IS NULL {only}
    UNION
    SELECT reach.root, r.identifier FROM ddm_references AS r JOIN reach ON r.target = reach.identifier
),
targets(identifier, enrollment_id) AS (
    SELECT DISTINCT reach.root, a.enrollment_id FROM reach
        JOIN ddm_set_declarations AS sd ON sd.identifier = reach.identifier
        JOIN ddm_assignments AS a ON a.set_name = sd.set_name
        JOIN enrollments AS e ON e.id = a.enrollment_id AND e.active = 1 {in_group}
)
"""
# Each targeted (enrollment, declaration) is in exactly one state.
_STATE = """CASE WHEN s.identifier IS NULL THEN 'not_reported'
    WHEN s.server_token IS NOT d.server_token OR s.valid NOT IN ('valid', 'invalid') THEN 'pending'
    WHEN s.valid = 'invalid' THEN 'invalid' WHEN s.active THEN 'applied' ELSE 'inactive' END"""
STATES = ("applied", "invalid", "inactive", "pending", "not_reported")


def status_summary(conn: sqlite3.Connection, identifier: str | None = None,
                   group: str | None = None) -> list[dict[str, Any]]:
    """Per operator declaration: how many active enrollments it reaches (of a group's members' devices, with
    `group`), and how many of those have it applied, invalid (with the reasons' codes counted), inactive,
    pending (an older ServerToken, or not yet judged) or have not reported it at all."""
    only = "AND identifier = :identifier" if identifier is not None else ""
    in_group = ("AND e.device_id IN (SELECT device_id FROM group_members WHERE group_name = :group)"
                if group is not None else "")
    query = _TARGETS.format(only=only, in_group=in_group) + f"""
        SELECT t.identifier, d.type, {_STATE} AS state, s.reasons, count(*) AS n FROM targets AS t
        JOIN ddm_declarations AS d ON d.identifier = t.identifier
        LEFT JOIN ddm_status AS s ON s.enrollment_id = t.enrollment_id AND s.identifier = t.identifier
        GROUP BY t.identifier, state, CASE WHEN {_STATE} = 'invalid' THEN s.reasons END"""
    summary: dict[str, dict[str, Any]] = {}
    declared = conn.execute(f"SELECT identifier, type FROM ddm_declarations WHERE builtin IS NULL {only} "
                            "ORDER BY identifier", {"identifier": identifier}).fetchall()
    for row in declared:
        summary[row[0]] = {"identifier": row[0], "type": row[1], "enrollments": 0, **dict.fromkeys(STATES, 0),
                           "reasons": {}}
    for row in conn.execute(query, {"identifier": identifier, "group": group}):
        entry = summary[row["identifier"]]
        entry[row["state"]] += row["n"]
        entry["enrollments"] += row["n"]
        if row["state"] == "invalid":
            for code in _reason_codes(row["reasons"]):
                entry["reasons"][code] = entry["reasons"].get(code, 0) + row["n"]
    return list(summary.values())


def _reason_codes(reasons: str | None) -> list[str]:
    try:
        parsed = json.loads(reasons) if reasons else []
    except ValueError:
        parsed = []
    codes = [r.get("code") for r in parsed if isinstance(r, dict) and isinstance(r.get("code"), str)]
    return list(dict.fromkeys(codes)) or ["(no reason given)"]


def enrollment_overview(conn: sqlite3.Connection, enrollment_id: str) -> dict[str, Any]:
    """One enrollment's DDM state for people (API, CLI, console): its sets (and the groups some come from),
    what it was last told and when, and each effective declaration with the state of its latest status."""
    state = sync_state(conn, enrollment_id)
    declarations = []
    for item in sorted(effective_items(conn, enrollment_id), key=lambda i: (ddm.KINDS.index(i.kind), i.identifier)):
        row = conn.execute("SELECT active, valid, server_token, reasons, received_at FROM ddm_status "
                           "WHERE enrollment_id = ? AND identifier = ?", (enrollment_id, item.identifier)).fetchone()
        if row is None:
            status = "not_reported"
        elif row["server_token"] != item.server_token or row["valid"] not in ("valid", "invalid"):
            status = "pending"
        else:
            status = "invalid" if row["valid"] == "invalid" else ("applied" if row["active"] else "inactive")
        declarations.append({
            "identifier": item.identifier, "kind": item.kind, "server_token": item.server_token, "state": status,
            # As the device last reported them (for any ServerToken): active true/false, valid/invalid/unknown.
            "active": bool(row["active"]) if row is not None and row["active"] is not None else None,
            "valid": row["valid"] if row is not None else None,
            "reasons": json.loads(row["reasons"]) if row is not None and row["reasons"] else [],
            "status_received": row["received_at"] if row is not None else None,
        })
    return {
        "enrollment_id": enrollment_id,
        "sets": enrollment_sets(conn, enrollment_id),
        "groups": enrollment_groups(conn, enrollment_id),
        "declarations_token": state["declarations_token"] if state else None,
        "token_changed_at": state["token_changed_at"] if state else None,
        "last_sync_at": state["last_sync_at"] if state else None,
        "last_status_at": state["last_status_at"] if state else None,
        "notified_at": state["notified_at"] if state else None,
        "declarations": declarations,
    }


# --- hosted assets -------------------------------------------------------------------------------------

def put_asset(conn: sqlite3.Connection, identifier: str, content_type: str, data: bytes, sha256: str) -> None:
    conn.execute(
        "INSERT INTO ddm_assets (identifier, content_type, data, sha256, updated_at) VALUES (?, ?, ?, ?, ?) "
        "ON CONFLICT (identifier) DO UPDATE SET content_type = excluded.content_type, data = excluded.data, "
        "sha256 = excluded.sha256, updated_at = excluded.updated_at",
        (identifier, content_type, bytes(data), sha256, now_text()))


def asset(conn: sqlite3.Connection, identifier: str) -> sqlite3.Row | None:
    return conn.execute("SELECT identifier, content_type, data, sha256 FROM ddm_assets WHERE identifier = ?",
                        (identifier,)).fetchone()


def hosted_assets(conn: sqlite3.Connection) -> set[str]:
    return {row[0] for row in conn.execute("SELECT identifier FROM ddm_assets")}


def is_effective(conn: sqlite3.Connection, enrollment_id: str, identifier: str) -> bool:
    return conn.execute(_OF_ENROLLMENT + "SELECT 1 FROM effective WHERE identifier = :identifier",
                        {"enrollment": enrollment_id, "channel": channel_of(enrollment_id),
                         "identifier": identifier}).fetchone() is not None


def device_enrollments(conn: sqlite3.Connection, device_id: str) -> list[str]:
    return [row[0] for row in conn.execute("SELECT id FROM enrollments WHERE device_id = ? AND active = 1",
                                           (device_id,))]
