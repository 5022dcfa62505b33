"""Read queries for operators: a device with its channels, a device's commands, a command's per-enrollment
status, and the fleet figures behind /metrics. Paging is by keyset cursor (stable while rows are added).
Lists of devices are appliance.store.device_search."""

from __future__ import annotations

import sqlite3

from appliance.store import groups, inventory

# A queue row's state: "pending" (not offered yet), "sent" (offered, no answer yet), "NotNow" (the device
# refused it for now; offered again later), "cancelled" (cancelled after it was sent; goes when the device answers).
_QUEUE_STATUS = """CASE WHEN q.cancelled_at IS NOT NULL THEN 'cancelled' WHEN q.not_now_count > 0 THEN 'NotNow'
    WHEN q.sent_at IS NOT NULL THEN 'sent' ELSE 'pending' END"""

HISTORY_SHOWN = 50  # newest OS and name changes in a device's record

# SQLite allows 32766 bound parameters; stay well below for IN (...) lists.
CHUNK = 5000

# A device's row in listings (appliance.store.device_search) and in its own record.
DEVICE_COLUMNS = """
    d.id, d.serial_number, d.model, d.model_name, d.product_name, d.os_version, d.build_version,
    d.device_name, d.authenticated_at, d.created_at, d.updated_at,
    d.bootstrap_token IS NOT NULL AS has_bootstrap_token, d.unlock_token IS NOT NULL AS has_unlock_token,
    e.id IS NOT NULL AND e.token_update_count > 0 AS enrolled,
    coalesce(e.active, 0) AS active,
    e.enrolled_at, e.checked_out_at,
    e.last_seen_at, e.last_push_at, e.last_push_result, e.last_push_error, e.token_invalid_at
"""
_PENDING = """(SELECT count(*) FROM queue q JOIN enrollments c ON c.id = q.enrollment_id WHERE c.device_id = d.id
    AND q.cancelled_at IS NULL) AS pending_commands"""


def device(conn: sqlite3.Connection, device_id: str) -> dict | None:
    row = conn.execute(
        f"SELECT {DEVICE_COLUMNS}, {_PENDING} FROM devices d LEFT JOIN enrollments e ON e.id = d.id WHERE d.id = ?",
        (device_id,),
    ).fetchone()
    if row is None:
        return None
    found = _device(row)
    found["enrollments"] = [dict(r) | {"active": bool(r["active"]), "token_present": bool(r["token_present"])}
                            for r in conn.execute(
        "SELECT e.id, e.type, e.user_id, e.user_short_name, e.user_long_name, e.topic, e.active,"
        " e.token IS NOT NULL AS token_present, e.token_update_count, e.awaiting_configuration,"
        " e.last_seen_at, e.last_idle_at, e.token_invalid_at, e.last_push_at, e.last_push_result,"
        " e.last_push_error, e.created_at, e.updated_at,"
        " (SELECT count(*) FROM queue q WHERE q.enrollment_id = e.id AND q.cancelled_at IS NULL) AS pending_commands"
        " FROM enrollments e WHERE e.device_id = ? ORDER BY e.id = e.device_id DESC, e.id",
        (device_id,),
    )]
    binding = conn.execute(
        "SELECT sha256, subject, not_after, bound_at FROM cert_bindings WHERE device_id = ?", (device_id,)
    ).fetchone()
    found["identity_certificate"] = dict(binding) if binding else None
    found["groups"] = groups.groups_of(conn, device_id)
    # What inventory answers said (None until the first one), and the dated OS and name changes.
    found["inventory"] = inventory.inventory(conn, device_id)
    found["history"] = inventory.history(conn, device_id, limit=HISTORY_SHOWN)
    return found


def _device(row: sqlite3.Row) -> dict:
    found = dict(row)
    for flag in ("enrolled", "active", "has_bootstrap_token", "has_unlock_token"):
        found[flag] = bool(found[flag])
    return found


def enrollment_exists(conn: sqlite3.Connection, enrollment_id: str) -> bool:
    return conn.execute("SELECT 1 FROM enrollments WHERE id = ?", (enrollment_id,)).fetchone() is not None


def device_or_enrollment_exists(conn: sqlite3.Connection, some_id: str) -> bool:
    return (conn.execute("SELECT 1 FROM devices WHERE id = ?", (some_id,)).fetchone() is not None
            or enrollment_exists(conn, some_id))


def enrollment_commands(conn: sqlite3.Connection, some_id: str, *, after: tuple[str, str, str] | None = None,
                        limit: int = 100) -> list[dict]:
    """Pending and finished commands of a device (all its channels) or of one user channel, newest first.

    Keyset: (queued_at, enrollment_id, command_uuid) descending; `after` is the last row's key.
    """
    channels = "(SELECT id FROM enrollments WHERE device_id = :id UNION SELECT :id)"
    sql = f"""
        SELECT * FROM (
            SELECT q.enrollment_id, q.command_uuid, c.request_type,
                   {_QUEUE_STATUS} AS status,
                   q.cancelled_at IS NULL AS pending, q.created_at AS queued_at, q.sent_at, q.not_now_count, q.not_now_at,
                   q.expires_at, NULL AS received_at, NULL AS error_chain
            FROM queue q JOIN commands c ON c.uuid = q.command_uuid
            WHERE q.enrollment_id IN {channels}
            UNION ALL
            SELECT r.enrollment_id, r.command_uuid, c.request_type, r.status, 0 AS pending,
                   coalesce(r.queued_at, r.received_at) AS queued_at, NULL, NULL, NULL, NULL,
                   r.received_at, r.error_chain
            FROM results r LEFT JOIN commands c ON c.uuid = r.command_uuid
            WHERE r.enrollment_id IN {channels}
              AND NOT EXISTS (SELECT 1 FROM queue q2 WHERE q2.enrollment_id = r.enrollment_id
                                                      AND q2.command_uuid = r.command_uuid)
        )
    """
    params: dict = {"id": some_id, "limit": limit}
    if after is not None:
        sql += " WHERE (queued_at, enrollment_id, command_uuid) < (:q, :e, :u)"
        params.update(q=after[0], e=after[1], u=after[2])
    sql += " ORDER BY queued_at DESC, enrollment_id DESC, command_uuid DESC LIMIT :limit"
    return [dict(row) | {"pending": bool(row["pending"])} for row in conn.execute(sql, params)]


def command(conn: sqlite3.Connection, command_uuid: str) -> sqlite3.Row | None:
    return conn.execute(
        "SELECT uuid, request_type, body, created_at FROM commands WHERE uuid = ?", (command_uuid,)
    ).fetchone()


def command_counts(conn: sqlite3.Connection, command_uuid: str) -> dict[str, int]:
    counts = {"pending": conn.execute(
        "SELECT count(*) FROM queue WHERE command_uuid = ? AND cancelled_at IS NULL", (command_uuid,)).fetchone()[0]}
    for row in conn.execute(
        "SELECT status, count(*) AS n FROM results WHERE command_uuid = ? GROUP BY status", (command_uuid,)
    ):
        counts[row["status"]] = row["n"]
    return counts


def command_enrollments(conn: sqlite3.Connection, command_uuid: str, *, enrollment_id: str | None = None,
                        after: str | None = None, limit: int = 100) -> list[sqlite3.Row]:
    """Each enrollment the command went to, by enrollment id: pending rows and stored results."""
    sql = f"""
        SELECT * FROM (
            SELECT q.enrollment_id, {_QUEUE_STATUS} AS status,
                   q.created_at AS queued_at, q.sent_at, q.not_now_count, q.expires_at, NULL AS received_at,
                   NULL AS error_chain, NULL AS raw
            FROM queue q WHERE q.command_uuid = :uuid
            UNION ALL
            SELECT r.enrollment_id, r.status, r.queued_at, NULL, NULL, NULL, r.received_at, r.error_chain, r.raw
            FROM results r WHERE r.command_uuid = :uuid
              AND NOT EXISTS (SELECT 1 FROM queue q2 WHERE q2.command_uuid = r.command_uuid
                                                      AND q2.enrollment_id = r.enrollment_id)
        ) WHERE 1
    """
    params: dict = {"uuid": command_uuid, "limit": limit}
    if enrollment_id is not None:
        sql += " AND enrollment_id = :enrollment"
        params["enrollment"] = enrollment_id
    if after is not None:
        sql += " AND enrollment_id > :after"
        params["after"] = after
    sql += " ORDER BY enrollment_id LIMIT :limit"
    return conn.execute(sql, params).fetchall()


def pushability(conn: sqlite3.Connection, enrollment_ids: list[str]) -> dict[str, str | None]:
    """Why a push to each enrollment cannot work, from what we already know (None = it can be tried)."""
    reasons: dict[str, str | None] = {}
    for start in range(0, len(enrollment_ids), CHUNK):
        chunk = enrollment_ids[start:start + CHUNK]
        marks = ",".join("?" * len(chunk))
        for row in conn.execute(
            f"SELECT id, active, token IS NOT NULL AND push_magic IS NOT NULL AS pushable, token_invalid_at "
            f"FROM enrollments WHERE id IN ({marks})", chunk,
        ):
            if not row["pushable"]:
                reasons[row["id"]] = "no push token yet (the enrollment has not sent TokenUpdate)"
            elif row["token_invalid_at"] is not None:
                reasons[row["id"]] = f"push token unregistered by APNs at {row['token_invalid_at']}"
            elif not row["active"]:
                reasons[row["id"]] = "enrollment is not active (checked out or re-enrolling)"
            else:
                reasons[row["id"]] = None
    return reasons


def device_counts(conn: sqlite3.Connection) -> sqlite3.Row:
    """Devices seen (known), that sent a TokenUpdate (enrolled), and active now; for /metrics, /healthz, STATUS=."""
    return conn.execute(
        "SELECT count(*) AS known, coalesce(sum(e.token_update_count > 0), 0) AS enrolled,"
        " coalesce(sum(e.active), 0) AS active FROM devices d LEFT JOIN enrollments e ON e.id = d.id"
    ).fetchone()


def snapshot(conn: sqlite3.Connection) -> dict:
    """The fleet figures for /metrics, read in one go at scrape time."""
    devices = device_counts(conn)
    queue = conn.execute(
        "SELECT count(*) AS depth, min(created_at) AS oldest FROM queue WHERE cancelled_at IS NULL").fetchone()
    return {
        "devices_known": devices["known"],
        "devices_enrolled": devices["enrolled"],
        "devices_active": devices["active"],
        "queue_depth": queue["depth"],
        "queue_oldest": queue["oldest"],
    }


def results_since(conn: sqlite3.Connection, after_rowid: int, step: int) -> tuple[dict[str, int], int, bool]:
    """Final results stored after rowid `after_rowid` and up to `step` rowids further, counted by status;
    the last rowid counted and whether that was all there is.

    Results are only ever appended (retention deletes the oldest), so a scrape counts just the new ones
    instead of the whole table; `step` bounds one job when there are many (the first scrape after a
    start counts every stored result: 2 s of the store thread for 2 million in one job)."""
    top = conn.execute("SELECT max(rowid) FROM results").fetchone()[0] or 0
    upto = min(top, after_rowid + step)
    counts = {}
    for row in conn.execute("SELECT status, count(*) AS n FROM results WHERE rowid > ? AND rowid <= ? "
                            "GROUP BY status", (after_rowid, upto)):
        counts[row["status"]] = row["n"]
    return counts, max(after_rowid, upto), upto >= top
