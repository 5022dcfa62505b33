"""The command queue: stored commands, pending rows per enrollment, and the results devices report.

Every function takes the sqlite3 connection; run it through `runtime.store.write` (or `.read` for the
listing functions) so it shares the caller's transaction. Rules (Apple, "Sending MDM commands to a
device"): a command stays queued until Acknowledged, Error or CommandFormatError arrives with its UUID;
the same status may come twice and is stored once; FIFO per enrollment.

NotNow: the device drops a command it answers NotNow to and polls again by itself only if NotNow was
its last status, so after a NotNow we offer only commands not NotNow'd in this session (sessions are
counted by the device's Idle reports in enrollments.idle_session) and otherwise end the session.

Expiry: a queue row may carry expires_at. Past it the row is never offered again (next_command checks),
and `expire` turns it into a result of status Expired; a device's own late answer still replaces that.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Sequence
from datetime import timedelta
from typing import Any

from appliance.store import timefmt
from appliance.store.timefmt import now_text

FINAL_STATUSES = frozenset({"Acknowledged", "Error", "CommandFormatError"})
# Our own final status: nobody took the command to a final status before its queue row expired.
EXPIRED = "Expired"
UNKNOWN_ENROLLMENT = "unknown enrollment"
_CHUNK = 500  # well under SQLite's bound-parameter limit
# Stray reports kept per enrollment (the newest): enough to see what a confused device or script sent,
# too few for a device to use the table as storage.
STRAY_REPORTS_KEPT = 20


class CommandExists(Exception):
    """The CommandUUID was used before: a UUID names one command forever."""


def enqueue(conn: sqlite3.Connection, command_uuid: str, request_type: str, body: bytes,
            enrollment_ids: Sequence[str], *, ttl: float | None = None) -> dict[str, str | None]:
    """Store the command once and queue it to every known enrollment; per id None (queued) or an error.
    ttl: seconds from now until the queue rows expire (None: never).

    When no id is known nothing is stored, so the UUID can be used again with the right ids."""
    if conn.execute("SELECT 1 FROM commands WHERE uuid = ?", (command_uuid,)).fetchone():
        raise CommandExists(f"command {command_uuid} already exists")
    ids = list(dict.fromkeys(enrollment_ids))
    known = existing_enrollments(conn, ids)
    outcome = {eid: (None if eid in known else UNKNOWN_ENROLLMENT) for eid in ids}
    if not known:
        return outcome
    moment = timefmt.now()
    queued_at = timefmt.to_text(moment)
    expires_at = None if ttl is None else timefmt.to_text(moment + timedelta(seconds=ttl))
    conn.execute(
        "INSERT INTO commands (uuid, request_type, body, created_at) VALUES (?, ?, ?, ?)",
        (command_uuid, request_type, bytes(body), queued_at),
    )
    conn.executemany(
        "INSERT INTO queue (enrollment_id, command_uuid, created_at, expires_at) VALUES (?, ?, ?, ?)",
        ((eid, command_uuid, queued_at, expires_at) for eid in ids if eid in known),
    )
    return outcome


def existing_enrollments(conn: sqlite3.Connection, ids: Sequence[str]) -> set[str]:
    found: set[str] = set()
    for start in range(0, len(ids), _CHUNK):
        chunk = ids[start:start + _CHUNK]
        marks = ",".join("?" * len(chunk))
        found.update(row[0] for row in conn.execute(f"SELECT id FROM enrollments WHERE id IN ({marks})", chunk))
    return found


def start_session(conn: sqlite3.Connection, enrollment_id: str) -> None:
    """The device reported Idle: a new session begins, commands NotNow'd before are offered again."""
    now = now_text()
    conn.execute(
        "UPDATE enrollments SET idle_session = idle_session + 1, last_idle_at = ?, last_seen_at = ? WHERE id = ?",
        (now, now, enrollment_id),
    )


_NEXT = """
SELECT q.id, q.command_uuid, c.body
FROM queue AS q JOIN commands AS c ON c.uuid = q.command_uuid
WHERE q.enrollment_id = :enrollment AND q.cancelled_at IS NULL
  AND (q.expires_at IS NULL OR q.expires_at > :now) {not_now}
ORDER BY q.id LIMIT 1
"""
_NEXT_ANY = _NEXT.format(not_now="")
_NEXT_AFTER_NOT_NOW = _NEXT.format(
    not_now="AND q.not_now_session IS NOT (SELECT idle_session FROM enrollments WHERE id = :enrollment)"
)


def next_command(conn: sqlite3.Connection, enrollment_id: str, *, after_not_now: bool = False
                 ) -> tuple[str, bytes] | None:
    """The oldest pending command (uuid, body) of the enrollment: one indexed statement; then marked sent.

    after_not_now: the device's last status was NotNow, so skip what it NotNow'd in this session."""
    sql = _NEXT_AFTER_NOT_NOW if after_not_now else _NEXT_ANY
    moment = now_text()
    # Expired rows are skipped even before the expiry worker has taken them off.
    row = conn.execute(sql, {"enrollment": enrollment_id, "now": moment}).fetchone()
    if row is None:
        return None
    # sent_at tells cancel_command that the device may hold this command (its report must still count).
    conn.execute("UPDATE queue SET sent_at = ? WHERE id = ?", (moment, row[0]))
    return row[1], row[2]


def store_report(conn: sqlite3.Connection, enrollment_id: str, command_uuid: str, status: str, raw: bytes,
                 error_chain: list[Any] | None = None) -> str:
    """Record the device's report on a command. Returns what happened:

    "stored"    a final status, result kept and the command taken off this enrollment's queue
    "duplicate" a final status already stored for (enrollment, command): nothing changes
    "not_now"   NotNow recorded (count, time, session); the command stays queued
    "unknown"   this enrollment was never given this command (unknown UUID, or another device's): kept in
                stray_reports only, against no command, queue row or result (the same status twice: once)
    """
    now = now_text()
    if status in FINAL_STATUSES:
        # Select, then delete by rowid: ~5x cheaper here than a DELETE keyed on the two columns.
        taken = conn.execute(
            "SELECT id, created_at FROM queue WHERE enrollment_id = ? AND command_uuid = ?",
            (enrollment_id, command_uuid),
        ).fetchone()
        if taken is None:
            seen = conn.execute(
                "SELECT status FROM results WHERE enrollment_id = ? AND command_uuid = ?", (enrollment_id, command_uuid)
            ).fetchone()
            if seen and seen[0] == EXPIRED:
                # The device took the command before it expired and answers only now: its answer is the
                # truth and replaces ours.
                conn.execute(
                    "UPDATE results SET status = ?, raw = ?, error_chain = ?, received_at = ? "
                    "WHERE enrollment_id = ? AND command_uuid = ?",
                    (status, bytes(raw), _chain(error_chain), now, enrollment_id, command_uuid),
                )
                return "stored"
            if seen:
                return "duplicate"
            _keep_stray(conn, enrollment_id, command_uuid, status, raw, now)
            return "unknown"
        conn.execute(
            "INSERT INTO results (enrollment_id, command_uuid, status, raw, error_chain, queued_at, received_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (enrollment_id, command_uuid) DO NOTHING",
            (enrollment_id, command_uuid, status, bytes(raw), _chain(error_chain), taken[1], now),
        )
        conn.execute("DELETE FROM queue WHERE id = ?", (taken[0],))
        return "stored"
    if status == "NotNow":
        updated = conn.execute(
            "UPDATE queue SET not_now_count = not_now_count + 1, not_now_at = ?, "
            "not_now_session = (SELECT idle_session FROM enrollments WHERE id = ?) "
            "WHERE enrollment_id = ? AND command_uuid = ? AND cancelled_at IS NULL",
            (now, enrollment_id, enrollment_id, command_uuid),
        ).rowcount
        if updated:
            return "not_now"
        # Cancelled after it was sent: the device NotNow'd it, so it no longer holds it either.
        if conn.execute(
            "DELETE FROM queue WHERE enrollment_id = ? AND command_uuid = ? AND cancelled_at IS NOT NULL",
            (enrollment_id, command_uuid),
        ).rowcount:
            return "not_now"
        _keep_stray(conn, enrollment_id, command_uuid, status, raw, now)
        return "unknown"
    raise ValueError(f"not a command status: {status!r}")


def _chain(error_chain: list[Any] | None) -> str | None:
    return json.dumps(error_chain, default=str) if error_chain else None


def _keep_stray(conn: sqlite3.Connection, enrollment_id: str, command_uuid: str, status: str, raw: bytes,
                now: str) -> None:
    inserted = conn.execute(
        "INSERT INTO stray_reports (enrollment_id, command_uuid, status, raw, received_at) VALUES (?, ?, ?, ?, ?) "
        "ON CONFLICT (enrollment_id, command_uuid, status) DO NOTHING",
        (enrollment_id, command_uuid, status, bytes(raw), now),
    ).rowcount
    if inserted:
        conn.execute(
            "DELETE FROM stray_reports WHERE enrollment_id = ? AND id <= (SELECT id FROM stray_reports "
            "WHERE enrollment_id = ? ORDER BY id DESC LIMIT 1 OFFSET ?)",
            (enrollment_id, enrollment_id, STRAY_REPORTS_KEPT),
        )


def _take_off(conn: sqlite3.Connection, where: str, args: tuple) -> int:
    """Remove pending rows; rows the device may be holding (sent, not NotNow'd since) are only marked
    cancelled, so its late report is still stored and the row then goes."""
    removed = conn.execute(
        f"DELETE FROM queue WHERE {where} AND (sent_at IS NULL OR (not_now_at IS NOT NULL AND not_now_at >= sent_at))",
        args,
    ).rowcount
    marked = conn.execute(
        f"UPDATE queue SET cancelled_at = ? WHERE {where} AND cancelled_at IS NULL", (now_text(), *args)
    ).rowcount
    return removed + marked


def clear_queue(conn: sqlite3.Connection, enrollment_id: str) -> int:
    """Take every pending command off one enrollment's queue; returns how many."""
    return _take_off(conn, "enrollment_id = ?", (enrollment_id,))


def clear_device(conn: sqlite3.Connection, device_id: str) -> int:
    """Drop every pending command of the device, on all its channels, at a re-enrollment; returns how many.

    Unlike clear_queue nothing stays marked cancelled: the new identity must not be able to report on what
    the old one was given (such a report is kept as a stray one). Results are history and stay."""
    return conn.execute(
        "DELETE FROM queue WHERE enrollment_id IN (SELECT id FROM enrollments WHERE device_id = ?)", (device_id,)
    ).rowcount


def cancel_pending(conn: sqlite3.Connection, enrollment_id: str, command_uuid: str) -> int:
    """Take one command off one enrollment's queue; returns 1, or 0 when it was not pending there."""
    return _take_off(conn, "enrollment_id = ? AND command_uuid = ?", (enrollment_id, command_uuid))


def cancel_command(conn: sqlite3.Connection, command_uuid: str) -> int:
    """Take one command off every queue it is pending on; returns how many rows."""
    return _take_off(conn, "command_uuid = ?", (command_uuid,))


def expire(conn: sqlite3.Connection, moment: str, limit: int) -> list[dict[str, Any]]:
    """Take up to `limit` queue rows whose expiry has come (expires_at <= moment) off their queues, oldest
    expiry first. Each becomes a result of status Expired, unless it was cancelled (then it just goes).
    Returns the Expired ones with what an event about them needs; fewer than `limit` means none are left."""
    rows = conn.execute(
        "SELECT q.id, q.enrollment_id, q.command_uuid, q.created_at, q.sent_at, q.not_now_count, q.expires_at, "
        "q.cancelled_at, c.request_type, e.device_id, e.type AS enrollment_type "
        "FROM queue q JOIN commands c ON c.uuid = q.command_uuid JOIN enrollments e ON e.id = q.enrollment_id "
        "WHERE q.expires_at <= ? ORDER BY q.expires_at LIMIT ?",
        (moment, limit),
    ).fetchall()
    conn.executemany("DELETE FROM queue WHERE id = ?", [(row["id"],) for row in rows])
    expired = [dict(row) for row in rows if row["cancelled_at"] is None]
    conn.executemany(
        "INSERT INTO results (enrollment_id, command_uuid, status, raw, error_chain, queued_at, received_at) "
        "VALUES (?, ?, ?, x'', NULL, ?, ?) ON CONFLICT (enrollment_id, command_uuid) DO NOTHING",
        [(row["enrollment_id"], row["command_uuid"], EXPIRED, row["created_at"], moment) for row in expired],
    )
    return expired


def next_expiry(conn: sqlite3.Connection) -> str | None:
    return conn.execute("SELECT min(expires_at) FROM queue WHERE expires_at IS NOT NULL").fetchone()[0]


# --- listings (read) -------------------------------------------------------------------------------

def pending(conn: sqlite3.Connection, enrollment_id: str, limit: int = 1000) -> list[dict[str, Any]]:
    """The enrollment's queue in the order it will be offered."""
    rows = conn.execute(
        "SELECT q.command_uuid, c.request_type, q.created_at, q.sent_at, q.not_now_count, q.not_now_at, "
        "q.expires_at FROM queue q JOIN commands c ON c.uuid = q.command_uuid "
        "WHERE q.enrollment_id = ? AND q.cancelled_at IS NULL ORDER BY q.id LIMIT ?",
        (enrollment_id, limit),
    ).fetchall()
    return [dict(row) for row in rows]


def command(conn: sqlite3.Connection, command_uuid: str) -> dict[str, Any] | None:
    """A stored command with its body and, per enrollment, whether it is pending or what was reported."""
    row = conn.execute(
        "SELECT uuid, request_type, body, created_at FROM commands WHERE uuid = ?", (command_uuid,)
    ).fetchone()
    if row is None:
        return None
    found = dict(row)
    found["pending"] = [dict(r) for r in conn.execute(
        "SELECT enrollment_id, created_at, sent_at, not_now_count, not_now_at, cancelled_at "
        "FROM queue WHERE command_uuid = ? ORDER BY id", (command_uuid,))]
    found["results"] = [dict(r) for r in conn.execute(
        "SELECT enrollment_id, status, error_chain, queued_at, received_at "
        "FROM results WHERE command_uuid = ? ORDER BY received_at", (command_uuid,))]
    return found


def results(conn: sqlite3.Connection, enrollment_id: str, *, limit: int = 100, before: str | None = None,
            request_type: str | None = None) -> list[dict[str, Any]]:
    """Reports of one enrollment, newest first (raw plist included); page with before=received_at."""
    clauses, args = ["r.enrollment_id = ?"], [enrollment_id]
    if before is not None:
        clauses.append("r.received_at < ?")
        args.append(before)
    if request_type is not None:
        clauses.append("c.request_type = ?")
        args.append(request_type)
    rows = conn.execute(
        "SELECT r.command_uuid, c.request_type, r.status, r.error_chain, r.queued_at, r.received_at, r.raw "
        "FROM results r LEFT JOIN commands c ON c.uuid = r.command_uuid "
        f"WHERE {' AND '.join(clauses)} ORDER BY r.received_at DESC LIMIT ?",
        (*args, limit),
    ).fetchall()
    return [dict(row) for row in rows]


def result(conn: sqlite3.Connection, enrollment_id: str, command_uuid: str) -> dict[str, Any] | None:
    row = conn.execute(
        "SELECT r.enrollment_id, r.command_uuid, c.request_type, r.status, r.error_chain, r.queued_at, "
        "r.received_at, r.raw FROM results r LEFT JOIN commands c ON c.uuid = r.command_uuid "
        "WHERE r.enrollment_id = ? AND r.command_uuid = ?",
        (enrollment_id, command_uuid),
    ).fetchone()
    return dict(row) if row else None


def stray_reports(conn: sqlite3.Connection, enrollment_id: str, limit: int = STRAY_REPORTS_KEPT
                  ) -> list[dict[str, Any]]:
    """Reports this enrollment sent about commands it was never given, newest first (raw plist included)."""
    rows = conn.execute(
        "SELECT command_uuid, status, received_at, raw FROM stray_reports WHERE enrollment_id = ? "
        "ORDER BY id DESC LIMIT ?",
        (enrollment_id, limit),
    ).fetchall()
    return [dict(row) for row in rows]


def queue_depths(conn: sqlite3.Connection, enrollment_ids: Iterable[str]) -> dict[str, int]:
    ids = list(enrollment_ids)
    depths = dict.fromkeys(ids, 0)
    for start in range(0, len(ids), _CHUNK):
        chunk = ids[start:start + _CHUNK]
        marks = ",".join("?" * len(chunk))
        for row in conn.execute(
            f"SELECT enrollment_id, count(*) FROM queue WHERE enrollment_id IN ({marks}) AND cancelled_at IS NULL "
            "GROUP BY enrollment_id", chunk,
        ):
            depths[row[0]] = row[1]
    return depths


def stuck(conn: sqlite3.Connection, threshold: int, *, after: str | None = None, limit: int = 100
          ) -> list[dict[str, Any]]:
    """Devices with a pending command NotNow'd more than `threshold` times, by device id (`after`: the
    last device id of the previous page), each with those commands, most NotNow'd first."""
    rows = conn.execute(
        "SELECT e.device_id, q.enrollment_id, q.command_uuid, c.request_type, q.not_now_count, q.not_now_at, "
        "q.created_at AS queued_at, q.expires_at "
        "FROM queue q JOIN enrollments e ON e.id = q.enrollment_id JOIN commands c ON c.uuid = q.command_uuid "
        "WHERE q.not_now_count > :threshold AND q.cancelled_at IS NULL AND e.device_id IN ("
        "  SELECT DISTINCT e2.device_id FROM queue q2 JOIN enrollments e2 ON e2.id = q2.enrollment_id"
        "  WHERE q2.not_now_count > :threshold AND q2.cancelled_at IS NULL AND e2.device_id > :after"
        "  ORDER BY e2.device_id LIMIT :limit) "
        "ORDER BY e.device_id, q.not_now_count DESC, q.id",
        {"threshold": threshold, "after": after or "", "limit": limit},
    ).fetchall()
    devices: dict[str, dict[str, Any]] = {}
    for row in rows:
        entry = devices.setdefault(row["device_id"], {"device_id": row["device_id"], "commands": []})
        command_row = dict(row)
        del command_row["device_id"]
        entry["commands"].append(command_row)
    return list(devices.values())


def stuck_count(conn: sqlite3.Connection, threshold: int) -> int:
    """How many devices stuck() would list (for /metrics)."""
    return conn.execute(
        "SELECT count(DISTINCT e.device_id) FROM queue q JOIN enrollments e ON e.id = q.enrollment_id "
        "WHERE q.not_now_count > ? AND q.cancelled_at IS NULL", (threshold,)
    ).fetchone()[0]
