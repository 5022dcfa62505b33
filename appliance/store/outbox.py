"""The webhook outbox: events waiting for delivery, written in the same transaction as the change that
caused them (so an event exists if and only if its change committed), deleted once the receiver said 2xx.

Order: per enrollment, strictly by id; only the oldest row of each enrollment (its "head") is ever
offered for delivery, so a failing event holds back later events of the same enrollment and nobody else's.
Events without an enrollment form one group of their own.
"""

from __future__ import annotations

import sqlite3

from appliance.store.timefmt import now_text


def add(conn: sqlite3.Connection, *, enrollment_id: str | None, topic: str, body: bytes) -> int:
    """Queue one event; call inside the store.write that makes the change it reports."""
    cursor = conn.execute(
        "INSERT INTO outbox (enrollment_id, topic, body, created_at) VALUES (?, ?, ?, ?)",
        (enrollment_id, topic, bytes(body), now_text()),
    )
    return cursor.lastrowid


def due_heads(conn: sqlite3.Connection, now: str, limit: int) -> list[sqlite3.Row]:
    """The oldest event of each enrollment whose next attempt is due, oldest first."""
    return conn.execute(
        "SELECT id, enrollment_id, topic, body, attempts, created_at FROM outbox "
        "WHERE id IN (SELECT min(id) FROM outbox GROUP BY enrollment_id) "
        "AND (next_attempt_at IS NULL OR next_attempt_at <= ?) ORDER BY id LIMIT ?",
        (now, limit),
    ).fetchall()


def next_attempt_at(conn: sqlite3.Connection) -> str | None:
    """When the earliest waiting head becomes due (None: nothing is waiting on a backoff)."""
    row = conn.execute(
        "SELECT min(next_attempt_at) AS due FROM outbox "
        "WHERE id IN (SELECT min(id) FROM outbox GROUP BY enrollment_id)"
    ).fetchone()
    return row["due"]


def mark_delivered(conn: sqlite3.Connection, event_ids: list[int]) -> int:
    conn.executemany("DELETE FROM outbox WHERE id = ?", [(event_id,) for event_id in event_ids])
    return len(event_ids)


def mark_failed(conn: sqlite3.Connection, failures: list[tuple[int, str, str]]) -> None:
    """failures: (event id, next attempt time, reason)."""
    conn.executemany(
        "UPDATE outbox SET attempts = attempts + 1, next_attempt_at = ?, last_error = ? WHERE id = ?",
        [(next_at, reason[:500], event_id) for event_id, next_at, reason in failures],
    )


def stats(conn: sqlite3.Connection) -> dict:
    """Depth, oldest undelivered event time, and how many events have failed at least once."""
    row = conn.execute(
        "SELECT count(*) AS depth, min(created_at) AS oldest, "
        "coalesce(sum(attempts > 0), 0) AS retrying FROM outbox"
    ).fetchone()
    last = conn.execute(
        "SELECT last_error FROM outbox WHERE last_error IS NOT NULL ORDER BY id LIMIT 1"
    ).fetchone()
    return {
        "depth": row["depth"],
        "oldest_created_at": row["oldest"],
        "retrying": row["retrying"],
        "last_error": last["last_error"] if last else None,
    }
