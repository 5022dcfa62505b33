"""The audit log: every state change made through the console, the admin API or the CLI, newest last.

Append-only: nothing in the appliance updates or deletes a row. Call `record` inside the store.write
that makes the change when the caller owns that transaction, so the change and its record commit together.
"""

from __future__ import annotations

import json
import sqlite3

from appliance.store.timefmt import now_text

MAX_TARGET = 2000  # a fleet-wide enqueue names thousands of ids: keep the head and say how many


def record(conn: sqlite3.Connection, *, actor: str, action: str, target: str | list[str] | None = None,
           details: dict | None = None, remote: str | None = None) -> int:
    if isinstance(target, list):
        target = _ids_text(target)
    cursor = conn.execute(
        "INSERT INTO audit_log (at, actor, action, target, details, remote) VALUES (?, ?, ?, ?, ?, ?)",
        (now_text(), actor, action, target,
         json.dumps(details, separators=(",", ":"), default=str) if details else None, remote),
    )
    return cursor.lastrowid


def _ids_text(ids: list[str]) -> str:
    text = ",".join(ids)
    if len(text) <= MAX_TARGET:
        return text
    head = text[:MAX_TARGET].rsplit(",", 1)[0]
    shown = head.count(",") + 1
    return f"{head},... ({len(ids)} in all, {len(ids) - shown} more)"


def entries(conn: sqlite3.Connection, *, before: int | None = None, limit: int = 100, actor: str | None = None,
            action: str | None = None, target: str | None = None) -> list[dict]:
    """Newest first; page with before=the last id seen. target matches a substring (an id among many)."""
    where, args = [], []
    if before is not None:
        where.append("id < ?")
        args.append(before)
    if actor is not None:
        where.append("actor = ?")
        args.append(actor)
    if action is not None:
        where.append("action = ?")
        args.append(action)
    if target is not None:
        where.append("instr(target, ?) > 0")
        args.append(target)
    sql = "SELECT id, at, actor, action, target, details, remote FROM audit_log"
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += " ORDER BY id DESC LIMIT ?"
    found = []
    for row in conn.execute(sql, (*args, limit)):
        entry = dict(row)
        entry["details"] = json.loads(entry["details"]) if entry["details"] else None
        found.append(entry)
    return found
