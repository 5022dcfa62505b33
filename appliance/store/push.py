"""Push queries: the push certificate in use, push targets, and each enrollment's push outcome.

Functions take the sqlite3 connection (run them through runtime.store.read/write, or on a
connect_sync connection in the CLI). Token rule (Apple): after a 410 the token is marked invalid with
APNs' timestamp and not pushed again until a newer TokenUpdate; the check-in code clears
token_invalid_at when it stores a new token.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from appliance.store.timefmt import now_text, to_text

_CHUNK = 500  # under SQLite's bound-parameter limit

UNKNOWN = "unknown enrollment"
NO_TOKEN = "no push token yet (TokenUpdate not received)"
INACTIVE = "enrollment is not active (checked out)"
TOKEN_INVALID = "push token invalid (APNs said Unregistered); waiting for a new TokenUpdate"


class TopicChanged(Exception):
    def __init__(self, old: str, new: str):
        super().__init__(f"topic would change from {old} to {new}")
        self.old = old
        self.new = new


@dataclass(frozen=True)
class StoredCertificate:
    id: int
    topic: str
    certificate: bytes
    private_key: bytes
    not_after: str
    imported_at: str


@dataclass(frozen=True)
class PushTarget:
    enrollment_id: str
    token: bytes
    push_magic: str
    backoff_until: str | None


# ----- certificate ---------------------------------------------------------------------------------
def current_certificate(conn: sqlite3.Connection) -> StoredCertificate | None:
    row = conn.execute(
        "SELECT id, topic, certificate, private_key, not_after, imported_at FROM push_certificates "
        "ORDER BY id DESC LIMIT 1"
    ).fetchone()
    return StoredCertificate(*row) if row else None


def current_topic(conn: sqlite3.Connection) -> str | None:
    row = conn.execute("SELECT topic FROM push_certificates ORDER BY id DESC LIMIT 1").fetchone()
    return row[0] if row else None


def certificate_version(conn: sqlite3.Connection) -> int:
    """Cheap enough to poll every few seconds: an import by the CLI bumps it."""
    return conn.execute("SELECT coalesce(max(id), 0) FROM push_certificates").fetchone()[0]


def store_certificate(
    conn: sqlite3.Connection, *, topic: str, certificate_pem: bytes, key_pem: bytes, sha256: str,
    not_before: datetime, not_after: datetime, force: bool = False,
) -> int:
    """Make this the current push certificate; raises TopicChanged unless forced or the topic is the same."""
    old = current_topic(conn)
    if old is not None and old != topic and not force:
        raise TopicChanged(old, topic)
    cur = conn.execute(
        "INSERT INTO push_certificates (topic, certificate, private_key, sha256, not_before, not_after, "
        "imported_at, replaced_topic) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (topic, certificate_pem, key_pem, sha256, to_text(not_before), to_text(not_after), now_text(),
         old if old != topic else None),
    )
    return cur.lastrowid


# ----- push targets and outcomes -------------------------------------------------------------------
def push_targets(conn: sqlite3.Connection, enrollment_ids: Sequence[str]
                 ) -> tuple[list[PushTarget], dict[str, str]]:
    """Enrollments that can be pushed now, and for every other id why not."""
    ids = list(dict.fromkeys(enrollment_ids))
    targets, skipped = [], {}
    found = set()
    for start in range(0, len(ids), _CHUNK):
        chunk = ids[start:start + _CHUNK]
        marks = ",".join("?" * len(chunk))
        rows = conn.execute(
            f"SELECT id, token, push_magic, active, token_invalid_at, push_backoff_until "
            f"FROM enrollments WHERE id IN ({marks})", chunk
        ).fetchall()
        for eid, token, magic, active, invalid_at, backoff in rows:
            found.add(eid)
            if not token or not magic:
                skipped[eid] = NO_TOKEN
            elif not active:
                skipped[eid] = INACTIVE
            elif invalid_at is not None:
                skipped[eid] = TOKEN_INVALID
            else:
                targets.append(PushTarget(eid, bytes(token), magic, backoff))
    for eid in ids:
        if eid not in found:
            skipped[eid] = UNKNOWN
    return targets, skipped


@dataclass(frozen=True)
class Outcome:
    """One push's effect on its enrollment (the scheduler builds these from PushResults)."""

    enrollment_id: str
    token: bytes
    result: str  # ok | unregistered | rejected | certificate | throttled | failed
    apns_id: str | None = None
    error: str | None = None
    invalid_at: str | None = None  # 410: APNs' timestamp, as database text
    backoff_until: str | None = None  # 429


def record_outcomes(conn: sqlite3.Connection, outcomes: Iterable[Outcome]) -> None:
    now = now_text()
    rows = [
        {"id": o.enrollment_id, "token": o.token, "result": o.result, "apns_id": o.apns_id,
         "error": o.error, "invalid_at": o.invalid_at, "backoff": o.backoff_until, "now": now}
        for o in outcomes
    ]
    conn.executemany(
        "UPDATE enrollments SET last_push_at = :now, last_push_result = :result, "
        "last_push_id = coalesce(:apns_id, last_push_id), last_push_error = :error, "
        "push_backoff_until = :backoff WHERE id = :id",
        rows,
    )
    # 410 only if the token we pushed is still the stored one: a TokenUpdate that raced the push wins.
    conn.executemany(
        "UPDATE enrollments SET token_invalid_at = :invalid_at WHERE id = :id AND token = :token",
        [r for r in rows if r["invalid_at"] is not None],
    )


def apns_timestamp_text(milliseconds: int | None) -> str:
    """APNs' 410 timestamp (ms since the epoch) as database time; now if APNs gave none."""
    if milliseconds is None:
        return now_text()
    return to_text(datetime.fromtimestamp(milliseconds / 1000, UTC))


def repush_candidates(conn: sqlite3.Connection, cutoff: str, failed_cutoff: str | None = None,
                      limit: int = 1000) -> list[str]:
    """Enrollments with a pending command that are owed a push: the command was queued before cutoff and
    the last push was before cutoff (or never); or the last push failed (APNs unreachable, 5xx, after
    the client's own bounded retries) before failed_cutoff, so a push lost to an outage is made good."""
    rows = conn.execute(
        """
        SELECT DISTINCT q.enrollment_id FROM queue q JOIN enrollments e ON e.id = q.enrollment_id
        WHERE q.cancelled_at IS NULL
          AND e.active = 1 AND e.token IS NOT NULL AND e.token_invalid_at IS NULL
          AND ((q.created_at < :cutoff AND (e.last_push_at IS NULL OR e.last_push_at < :cutoff))
               OR (e.last_push_result = 'failed' AND e.last_push_at < :failed_cutoff))
          AND (e.push_backoff_until IS NULL OR e.push_backoff_until < :now)
        LIMIT :limit
        """,
        {"cutoff": cutoff, "failed_cutoff": failed_cutoff or cutoff, "now": now_text(), "limit": limit},
    ).fetchall()
    return [r[0] for r in rows]


def push_summary(conn: sqlite3.Connection) -> dict[str, int]:
    """Enrollments by last push result, for metrics."""
    rows = conn.execute(
        "SELECT coalesce(last_push_result, 'never'), count(*) FROM enrollments WHERE active = 1 "
        "GROUP BY 1"
    ).fetchall()
    return {r[0]: r[1] for r in rows}


def push_reason_summary(conn: sqlite3.Connection) -> dict[tuple[str, str], int]:
    """Active enrollments whose last push failed, by (result, reason label), for metrics."""
    rows = conn.execute(
        "SELECT last_push_result, last_push_error, count(*) FROM enrollments WHERE active = 1 "
        "AND last_push_result IS NOT NULL AND last_push_result != 'ok' GROUP BY 1, 2"
    ).fetchall()
    summary: dict[tuple[str, str], int] = {}
    for result, error, count in rows:
        key = (result, reason_label(error))
        summary[key] = summary.get(key, 0) + count
    return summary


def reason_label(error: str | None) -> str:
    """A push error as a bounded metric label: APNs' reason ("400 BadDeviceToken" -> BadDeviceToken) or
    our error class ("ConnectionFailed: OSError: ..." -> ConnectionFailed), never free text."""
    text = (error or "unknown").strip()
    head, _, rest = text.partition(" ")
    if head.isdigit() and rest:
        text = rest
    text = text.split(":", 1)[0].split(" ", 1)[0]
    return "".join(c for c in text if c.isalnum() or c in "_-")[:40] or "unknown"

