"""The device list people page through: text search, a state filter, a filter in the device filter language
(appliance.store.device_filter), a group, a sort, keyset paging. GET /v1/devices, the CLI's `devices` and
the console's devices page all ask this one query.

One DeviceQuery in, one page out, so new filters are new fields of the query and new clauses in `_where`,
not new functions. Keyset paging on (sort key, id) costs the same on the last page as on the first; the
count of matches is one more scan of the devices table (figures for 10,000 devices: docs/PERFORMANCE.md).
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from datetime import datetime

from appliance.store import device_filter
from appliance.store.device_filter import Filter
from appliance.store.fleet import DEVICE_COLUMNS
from appliance.store.timefmt import now

STATES = ("all", "active", "inactive")
# Sort keys are never NULL (coalesce), so (key, id) row values compare cleanly for keyset paging.
SORTS = {
    "name": "coalesce(d.device_name, '')",
    "serial": "coalesce(d.serial_number, '')",
    "model": "coalesce(d.model_name, d.product_name, d.model, '')",
    "os": "coalesce(version_key(d.os_version), '')",
    "last_seen": "coalesce(e.last_seen_at, '')",
    "last_inventory": "coalesce(i.inventory_at, '')",
    "id": "d.id",
}
_SEARCHED = ("d.id", "d.device_name", "d.serial_number", "d.model", "d.model_name", "d.product_name",
             "d.os_version")
os_version_key = device_filter.version_key  # '9.3.5' < '15.1' < '15.10' (the console sorts with it)


@dataclass(frozen=True)
class DeviceQuery:
    text: str | None = None  # a substring of the name, serial, UDID, model or OS version (any case)
    state: str = "all"  # all | active (enrolled, not checked out) | inactive
    filter: Filter | None = None  # device_filter.parse(...)
    group: str | None = None  # members of this group (static or dynamic)
    serial: str | None = None  # exactly this serial number
    udid: str | None = None  # exactly this device id
    sort: str = "name"
    descending: bool = False
    after: tuple[str, str] | None = None  # (sort key, id) of the previous page's last row
    limit: int = 50
    at: datetime | None = None  # "now" for the filter's ages (30d ago); the current time when None

    def __post_init__(self) -> None:
        if self.state not in STATES:
            raise ValueError(f"state must be one of {', '.join(STATES)}")
        if self.sort not in SORTS:
            raise ValueError(f"sort must be one of {', '.join(SORTS)}")


@dataclass(frozen=True)
class DevicePage:
    devices: list[dict]
    total: int  # devices matching the query, on all pages
    next_after: tuple[str, str] | None


def prepare(conn: sqlite3.Connection) -> None:
    device_filter.prepare(conn)


def _where(query: DeviceQuery) -> tuple[list[str], list]:
    clauses, args = [], []
    if query.text:
        haystack = " || ' ' || ".join(f"coalesce({column}, '')" for column in _SEARCHED)
        clauses.append(f"instr(lower({haystack}), lower(?)) > 0")
        args.append(query.text)
    if query.state == "active":
        clauses.append("coalesce(e.active, 0) = 1")
    elif query.state == "inactive":
        clauses.append("coalesce(e.active, 0) = 0")
    if query.serial is not None:
        clauses.append("d.serial_number = ?")
        args.append(query.serial)
    if query.udid is not None:
        clauses.append("d.id = ?")
        args.append(query.udid)
    if query.group is not None:
        clauses.append("d.id IN (SELECT device_id FROM group_members WHERE group_name = ?)")
        args.append(query.group)
    if query.filter is not None:
        sql = device_filter.compile_sql(query.filter, now=query.at or now())
        clauses.append(sql.where)
        args.extend(sql.params)
    return clauses, args


_FROM = device_filter.SOURCE


def count(conn: sqlite3.Connection, query: DeviceQuery) -> int:
    """How many devices the query matches, on all pages."""
    prepare(conn)
    clauses, args = _where(query)
    return conn.execute(f"SELECT count(*) {_FROM}" + (" WHERE " + " AND ".join(clauses) if clauses else ""),
                        args).fetchone()[0]


def search(conn: sqlite3.Connection, query: DeviceQuery) -> DevicePage:
    total = count(conn, query)
    key = SORTS[query.sort]
    clauses, args = _where(query)
    order = "DESC" if query.descending else "ASC"
    if query.after is not None:
        clauses.append(f"({key}, d.id) {'<' if query.descending else '>'} (?, ?)")
        args.extend(query.after)
    # The page first (cheap columns), then per row what costs a lookup: pending commands.
    sql = f"""
        SELECT page.*,
               (SELECT count(*) FROM queue q JOIN enrollments c ON c.id = q.enrollment_id
                WHERE c.device_id = page.id AND q.cancelled_at IS NULL) AS pending_commands
        FROM (SELECT {DEVICE_COLUMNS}, i.inventory_at AS last_inventory_at, {key} AS sort_key
              {_FROM} {"WHERE " + " AND ".join(clauses) if clauses else ""}
              ORDER BY sort_key {order}, d.id {order} LIMIT ?) page
        ORDER BY page.sort_key {order}, page.id {order}
    """
    rows = [dict(row) for row in conn.execute(sql, (*args, query.limit + 1))]
    more = len(rows) > query.limit
    rows = rows[:query.limit]
    for row in rows:
        for flag in ("enrolled", "active", "has_bootstrap_token", "has_unlock_token"):
            row[flag] = bool(row[flag])
    next_after = (rows[-1]["sort_key"], rows[-1]["id"]) if more else None
    return DevicePage(rows, total, next_after)


def matching_ids(conn: sqlite3.Connection, query: DeviceQuery) -> list[str]:
    """Every device id the query matches (all pages), for sending a command to a search's result."""
    prepare(conn)
    clauses, args = _where(query)
    sql = f"SELECT d.id {_FROM}" + (" WHERE " + " AND ".join(clauses) if clauses else "") + " ORDER BY d.id"
    return [row[0] for row in conn.execute(sql, args)]
