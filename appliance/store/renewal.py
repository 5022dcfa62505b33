"""Queries for identity renewal (service/renewal.py decides): which bound certificates are due, each
device's renewal row, and the renewal state of devices as operators see it.

A renewal's state comes from its row and from its current InstallProfile command's queue row or result,
so it is always as fresh as the queue: `scheduled` (not begun), `pending` (queued, or NotNow'd), `sent` (the
device took it, or acknowledged it, and has not presented the new certificate yet), `failed` (the attempt
ended in Error, its command went, or the certificate expired first: the next attempt's time is in the row),
`done` (the device uses the renewed certificate), and `not_renewable` (issued by another CA).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable

from appliance.protocol import plist
from appliance.store import queue
from appliance.store.timefmt import now_text

# The bound certificate of each device. Bindings made before the appliance recorded issuer and not_before
# are recognized as our CA's by the issuing record (subject and expiry), which also dates them; CASE keeps
# that lookup to those rows.
_LEGACY = "FROM scep_certificates s WHERE s.not_after = b.not_after AND s.subject = b.subject"
_BOUND = f"""
    SELECT b.device_id, b.sha256, b.subject, b.not_after, b.bound_at,
           CASE WHEN b.not_before IS NOT NULL THEN b.not_before
                ELSE (SELECT s.issued_at {_LEGACY} LIMIT 1) END AS not_before,
           CASE WHEN b.issuer IS NOT NULL THEN b.issuer
                WHEN EXISTS (SELECT 1 {_LEGACY}) THEN :ca END AS issuer
    FROM cert_bindings b
"""

# Only a renewal under way looks at its command's queue row and result (most devices have none under way).
_STATE = """
    CASE
        WHEN c.issuer IS NULL OR c.issuer != :ca THEN 'not_renewable'
        WHEN r.sha256 IS c.sha256 THEN (
            SELECT CASE
                WHEN r.given_up_at IS NOT NULL OR r.command_uuid IS NULL THEN 'failed'
                WHEN res.status = 'Acknowledged' THEN 'sent'
                WHEN res.status IS NOT NULL THEN 'failed'
                WHEN q.id IS NULL OR q.cancelled_at IS NOT NULL THEN 'failed'
                WHEN q.sent_at IS NOT NULL AND q.not_now_count = 0 THEN 'sent'
                ELSE 'pending' END
            FROM (SELECT 1)
            LEFT JOIN queue q ON q.enrollment_id = c.device_id AND q.command_uuid = r.command_uuid
            LEFT JOIN results res ON res.enrollment_id = c.device_id AND res.command_uuid = r.command_uuid)
        WHEN r.successor IS c.sha256 THEN 'done'
        ELSE 'scheduled'
    END
"""

_FACTS = f"""
    SELECT c.device_id, c.sha256, c.subject, c.not_before, c.not_after, c.issuer, c.bound_at,
           {_STATE} AS state,
           r.sha256 AS renewing, r.started_at, r.attempts, r.command_uuid, r.attempted_at, r.next_attempt_at,
           r.last_failure, r.completed_at, r.successor, r.given_up_at,
           q.sent_at, q.not_now_count, q.not_now_at, q.cancelled_at, res.status AS result, res.error_chain, res.received_at
    FROM ({_BOUND}) c
    LEFT JOIN identity_renewals r ON r.device_id = c.device_id
    LEFT JOIN queue q ON q.enrollment_id = c.device_id AND q.command_uuid = r.command_uuid
    LEFT JOIN results res ON res.enrollment_id = c.device_id AND res.command_uuid = r.command_uuid
"""

_CHUNK = 500


def facts(conn: sqlite3.Connection, ca: str, device_ids: Iterable[str]) -> dict[str, dict]:
    """Per device with a bound certificate: the certificate, its renewal row and state, and the current
    attempt's queue row or result. `ca`: the appliance CA's subject (RFC 4514)."""
    ids = list(device_ids)
    found: dict[str, dict] = {}
    for start in range(0, len(ids), _CHUNK):
        chunk = {f"d{i}": device_id for i, device_id in enumerate(ids[start:start + _CHUNK])}
        marks = ",".join(f":{name}" for name in chunk)
        for fact in conn.execute(f"{_FACTS} WHERE c.device_id IN ({marks})", {"ca": ca, **chunk}):
            found[fact["device_id"]] = dict(fact)
    return found


def due(conn: sqlite3.Connection, ca: str, horizon: str, now: str) -> list[dict]:
    """Active devices holding an identity of our CA that ends before `horizon` (now + renew_before), whose
    renewal has not begun or whose attempt's time is up; soonest to expire first."""
    sql = f"""
        SELECT c.device_id, c.sha256, c.not_before, c.not_after,
               r.sha256 AS renewing, r.attempts, r.command_uuid, r.successor, r.given_up_at
        FROM ({_BOUND}) c
        JOIN enrollments e ON e.id = c.device_id AND e.active = 1
        LEFT JOIN identity_renewals r ON r.device_id = c.device_id
        WHERE c.issuer = :ca AND c.not_after <= :horizon AND c.not_before IS NOT NULL
          AND (r.sha256 IS NOT c.sha256 OR (r.given_up_at IS NULL AND r.next_attempt_at <= :now))
        ORDER BY c.not_after
    """
    return [dict(row) for row in conn.execute(sql, {"ca": ca, "horizon": horizon, "now": now})]


def state_counts(conn: sqlite3.Connection, ca: str) -> dict[str, int]:
    """Active devices by renewal state, for /metrics and /healthz."""
    sql = f"""
        SELECT {_STATE} AS state, count(*) AS n FROM ({_BOUND}) c
        JOIN enrollments e ON e.id = c.device_id AND e.active = 1
        LEFT JOIN identity_renewals r ON r.device_id = c.device_id
        GROUP BY state
    """
    return {row["state"]: row["n"] for row in conn.execute(sql, {"ca": ca})}


def expiring(conn: sqlite3.Connection, before: str, limit: int = 10) -> tuple[int, list[dict]]:
    """Active devices whose bound identity ends before `before`, whatever its CA (a completed renewal
    would have moved the binding to a later one): how many, and the first few, soonest first."""
    where = ("FROM cert_bindings b JOIN enrollments e ON e.id = b.device_id AND e.active = 1 "
             "WHERE b.not_after <= ?")
    count = conn.execute(f"SELECT count(*) {where}", (before,)).fetchone()[0]
    first = [dict(row) for row in conn.execute(
        f"SELECT b.device_id, b.not_after {where} ORDER BY b.not_after LIMIT ?", (before, limit))]
    return count, first


# --- changes ------------------------------------------------------------------------------------------

def row(conn: sqlite3.Connection, device_id: str) -> dict | None:
    found = conn.execute("SELECT * FROM identity_renewals WHERE device_id = ?", (device_id,)).fetchone()
    return dict(found) if found else None


def begin(conn: sqlite3.Connection, device_id: str, sha256: str, not_after: str) -> dict:
    """The renewal row of this certificate, made anew when the device's last renewal was of another one."""
    current = row(conn, device_id)
    if current is None or current["sha256"] != sha256:
        conn.execute(
            "INSERT INTO identity_renewals (device_id, sha256, not_after, started_at) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (device_id) DO UPDATE SET sha256 = excluded.sha256, not_after = excluded.not_after,"
            " started_at = excluded.started_at, attempts = 0, command_uuid = NULL, attempted_at = NULL,"
            " next_attempt_at = NULL, last_failure = NULL, completed_at = NULL, successor = NULL,"
            " given_up_at = NULL",
            (device_id, sha256, not_after, now_text()),
        )
        current = row(conn, device_id)
    assert current is not None
    return current


def attempted(conn: sqlite3.Connection, device_id: str, command_uuid: str | None, next_attempt_at: str,
              failure: str | None = None) -> None:
    """A new attempt was made (its InstallProfile queued), or could not be (`failure`, no command)."""
    conn.execute(
        "UPDATE identity_renewals SET attempts = attempts + 1, command_uuid = ?, attempted_at = ?,"
        " next_attempt_at = ?, last_failure = coalesce(?, last_failure) WHERE device_id = ?",
        (command_uuid, now_text(), next_attempt_at, failure, device_id),
    )


def note_failure(conn: sqlite3.Connection, device_id: str, reason: str) -> None:
    conn.execute("UPDATE identity_renewals SET last_failure = ? WHERE device_id = ?", (reason, device_id))


def give_up(conn: sqlite3.Connection, device_id: str, reason: str) -> None:
    conn.execute(
        "UPDATE identity_renewals SET given_up_at = ?, last_failure = ? WHERE device_id = ?",
        (now_text(), reason, device_id),
    )


def complete(conn: sqlite3.Connection, device_id: str, predecessor: str, successor: str) -> str | None:
    """The binding is about to move from `predecessor` (still bound) to its proven `successor`: the renewal
    is done, also one the device began itself (a SCEP RenewalReq). Returns the current attempt's command."""
    current = row(conn, device_id)
    if current is None or current["sha256"] != predecessor:
        bound = conn.execute("SELECT not_after FROM cert_bindings WHERE device_id = ?", (device_id,)).fetchone()
        current = begin(conn, device_id, predecessor, bound[0] if bound and bound[0] else "")
    conn.execute(
        "UPDATE identity_renewals SET completed_at = ?, successor = ?, next_attempt_at = NULL WHERE device_id = ?",
        (now_text(), successor, device_id),
    )
    return current["command_uuid"] if current else None


def withdraw(conn: sqlite3.Connection, command_uuid: str) -> None:
    """An attempt's InstallProfile is over: it is not offered again (a device that took it may still report
    on it), and the profile it carried (a one-time challenge, or an identity and its password) is no longer
    kept in the stored command."""
    queue.cancel_command(conn, command_uuid)
    emptied = plist.dump({"CommandUUID": command_uuid, "Command": {"RequestType": "InstallProfile", "Payload": b""}})
    conn.execute("UPDATE commands SET body = ? WHERE uuid = ? AND request_type = 'InstallProfile'",
                 (emptied, command_uuid))


def forget(conn: sqlite3.Connection, device_id: str) -> str | None:
    """The device re-enrolled: its renewal record goes. Returns the current attempt's command, if any."""
    current = row(conn, device_id)
    conn.execute("DELETE FROM identity_renewals WHERE device_id = ?", (device_id,))
    return current["command_uuid"] if current else None
