"""Counts over the whole fleet, for health, STATUS= and metrics."""

from __future__ import annotations

import sqlite3


def enrollment_counts(conn: sqlite3.Connection) -> dict[str, int]:
    row = conn.execute(
        "SELECT count(*) AS devices, coalesce(sum(e.active), 0) AS active "
        "FROM devices d LEFT JOIN enrollments e ON e.id = d.id"
    ).fetchone()
    return {"devices": row["devices"], "active": row["active"]}
