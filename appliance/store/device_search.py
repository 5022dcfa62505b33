"""The device list people page through: text search, a state filter, a sort, keyset paging.

One DeviceQuery in, one page out, so new filters (inventory facts, groups) are new fields of the query
and new clauses in `_where`, not new functions. Keyset paging on (sort key, id) costs the same on the
last page as on the first; the count of matches is one more scan of the devices table (10,000 rows:
a few milliseconds, docs/PERFORMANCE.md).
"""

from __future__ import annotations

import re
import sqlite3
from dataclasses import dataclass

STATES = ("all", "active", "inactive")
# Sort keys are never NULL (coalesce), so (key, id) row values compare cleanly for keyset paging.
SORTS = {
    "name": "coalesce(d.device_name, '')",
    "serial": "coalesce(d.serial_number, '')",
    "model": "coalesce(d.model_name, d.product_name, d.model, '')",
    "os": "os_version_key(d.os_version)",
    "last_seen": "coalesce(e.last_seen_at, '')",
}
_SEARCHED = ("d.id", "d.device_name", "d.serial_number", "d.model", "d.model_name", "d.product_name",
             "d.os_version")


@dataclass(frozen=True)
class DeviceQuery:
    text: str | None = None  # a substring of the name, serial, UDID, model or OS version (any case)
    state: str = "all"  # all | active (enrolled, not checked out) | inactive
    sort: str = "name"
    descending: bool = False
    after: tuple[str, str] | None = None  # (sort key, id) of the previous page's last row
    limit: int = 50

    def __post_init__(self) -> None:
        if self.state not in STATES:
            raise ValueError(f"state must be one of {', '.join(STATES)}")
        if self.sort not in SORTS:
            raise ValueError(f"sort must be one of {', '.join(SORTS)}")


@dataclass(frozen=True)
class DevicePage:
    devices: list[dict]
    total: int  # devices matching text and state, on all pages
    next_after: tuple[str, str] | None


def os_version_key(version: str | None) -> str:
    """'9.3.5' < '15.1' < '15.10': each number zero-padded, so the text sorts as the versions do."""
    if not version:
        return ""
    return ".".join(part.zfill(6) if part.isdigit() else part for part in re.split(r"[.]", version))


def _prepare(conn: sqlite3.Connection) -> None:
    conn.create_function("os_version_key", 1, os_version_key, deterministic=True)


def _where(query: DeviceQuery) -> tuple[list[str], list]:
    clauses, args = [], []
    if query.text:
        haystack = " || ' ' || ".join(f"coalesce({column}, '')" for column in _SEARCHED)
        clauses.append(f"instr(lower({haystack}), ?) > 0")
        args.append(query.text.lower())
    if query.state == "active":
        clauses.append("coalesce(e.active, 0) = 1")
    elif query.state == "inactive":
        clauses.append("coalesce(e.active, 0) = 0")
    return clauses, args


_FROM = "FROM devices d LEFT JOIN enrollments e ON e.id = d.id"


def search(conn: sqlite3.Connection, query: DeviceQuery) -> DevicePage:
    _prepare(conn)
    key = SORTS[query.sort]
    clauses, args = _where(query)
    total = conn.execute(f"SELECT count(*) {_FROM}" + (" WHERE " + " AND ".join(clauses) if clauses else ""),
                         args).fetchone()[0]
    order = "DESC" if query.descending else "ASC"
    if query.after is not None:
        clauses.append(f"({key}, d.id) {'<' if query.descending else '>'} (?, ?)")
        args.extend(query.after)
    sql = f"""
        SELECT page.*,
               (SELECT count(*) FROM queue q JOIN enrollments c ON c.id = q.enrollment_id
                WHERE c.device_id = page.id AND q.cancelled_at IS NULL) AS pending_commands
        FROM (SELECT d.id, d.device_name, d.serial_number, d.model, d.model_name, d.product_name,
                     d.os_version, e.last_seen_at, coalesce(e.active, 0) AS active,
                     e.id IS NOT NULL AND e.token_update_count > 0 AS enrolled,
                     e.last_push_result, {key} AS sort_key
              {_FROM} {"WHERE " + " AND ".join(clauses) if clauses else ""}
              ORDER BY sort_key {order}, d.id {order} LIMIT ?) page
        ORDER BY page.sort_key {order}, page.id {order}
    """
    rows = [dict(row) for row in conn.execute(sql, (*args, query.limit + 1))]
    more = len(rows) > query.limit
    rows = rows[:query.limit]
    for row in rows:
        row["active"], row["enrolled"] = bool(row["active"]), bool(row["enrolled"])
    next_after = (rows[-1]["sort_key"], rows[-1]["id"]) if more else None
    return DevicePage(rows, total, next_after)


def matching_ids(conn: sqlite3.Connection, query: DeviceQuery) -> list[str]:
    """Every device id the query matches (all pages), for sending a command to a search's result."""
    _prepare(conn)
    clauses, args = _where(query)
    sql = f"SELECT d.id {_FROM}" + (" WHERE " + " AND ".join(clauses) if clauses else "") + " ORDER BY d.id"
    return [row[0] for row in conn.execute(sql, args)]
