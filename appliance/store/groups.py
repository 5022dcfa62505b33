"""Groups of devices: static ones (members added and removed by hand) and dynamic ones (every device whose
inventory facts match a filter, appliance.store.device_filter). Both keep their members in group_members:
a dynamic group's rows follow its filter whenever the filter or a device's facts change, so membership is
read the same way for both, and every change of it lands in group_changes in the same transaction.

Stable API for other parts (declarative management assigns declarations to groups):
    members(conn, name) -> list[str]                 device ids, sorted
    groups_of(conn, device_id) -> list[str]          group names, sorted
    changes_since(conn, after_id, limit) -> list[Change]
                                                     membership changes in order; follow them by id
    last_change_id(conn) -> int
Every function runs inside the caller's transaction.
"""

from __future__ import annotations

import functools
import json
import re
import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

from appliance.store import device_filter
from appliance.store.device_filter import Filter, FilterError
from appliance.store.timefmt import from_text

STATIC, DYNAMIC = "static", "dynamic"
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
# The prefix that names a group wherever enrollment ids are accepted (enqueue, push, the CLI).
PREFIX = "group:"
MAX_DESCRIPTION = 500
_CHUNK = 500


class GroupError(ValueError):
    """A change to groups that cannot be made; `code` is the admin API's error code."""

    def __init__(self, code: str, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.code, self.status = code, status


@dataclass(frozen=True, slots=True)
class Change:
    id: int
    group: str
    device_id: str
    joined: bool  # False: left
    changed_at: str


def check_name(name: object) -> str:
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise GroupError("bad_group_name", "a group name is 1-64 letters, digits, '.', '_' or '-', starting with "
                         "a letter or digit")
    return name


@functools.lru_cache(maxsize=256)
def _group_filter(text: str) -> Filter:
    return device_filter.parse(text, for_group=True)


# --- reading ------------------------------------------------------------------------------------------

def get(conn: sqlite3.Connection, name: str) -> dict | None:
    row = conn.execute(
        "SELECT name, kind, filter, description, created_at, updated_at,"
        " (SELECT count(*) FROM group_members m WHERE m.group_name = g.name) AS member_count"
        " FROM device_groups g WHERE name = ?", (name,)).fetchone()
    return dict(row) if row else None


def list_groups(conn: sqlite3.Connection) -> list[dict]:
    return [dict(row) for row in conn.execute(
        "SELECT name, kind, filter, description, created_at, updated_at,"
        " (SELECT count(*) FROM group_members m WHERE m.group_name = g.name) AS member_count"
        " FROM device_groups g ORDER BY name COLLATE NOCASE")]


def members(conn: sqlite3.Connection, name: str) -> list[str]:
    return [row[0] for row in conn.execute(
        "SELECT device_id FROM group_members WHERE group_name = ? ORDER BY device_id", (name,))]


def groups_of(conn: sqlite3.Connection, device_id: str) -> list[str]:
    return [row[0] for row in conn.execute(
        "SELECT g.name FROM group_members m JOIN device_groups g ON g.name = m.group_name"
        " WHERE m.device_id = ? ORDER BY g.name COLLATE NOCASE", (device_id,))]


def changes_since(conn: sqlite3.Connection, after_id: int = 0, limit: int = 1000) -> list[Change]:
    return [Change(row[0], row[1], row[2], row[3] == "joined", row[4]) for row in conn.execute(
        "SELECT id, group_name, device_id, change, changed_at FROM group_changes WHERE id > ? ORDER BY id LIMIT ?",
        (after_id, limit))]


def last_change_id(conn: sqlite3.Connection) -> int:
    return conn.execute("SELECT coalesce(max(id), 0) FROM group_changes").fetchone()[0]


# --- changing groups ----------------------------------------------------------------------------------

def create(conn: sqlite3.Connection, name: str, *, filter_text: str | None, description: str | None,
           now: str) -> dict:
    """A static group (no filter) or a dynamic one, whose members are computed at once."""
    check_name(name)
    _check_description(description)
    if filter_text is not None:
        _check_filter(filter_text)
    if get(conn, name) is not None:
        raise GroupError("group_exists", f"a group named {name!r} exists already (names ignore case)", 409)
    conn.execute(
        "INSERT INTO device_groups (name, kind, filter, description, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?)",
        (name, STATIC if filter_text is None else DYNAMIC, filter_text, description or None, now, now))
    if filter_text is not None:
        refresh_group(conn, name, now)
    return get(conn, name)


def update(conn: sqlite3.Connection, name: str, *, filter_text: str | None = None,
           description: str | None = None, now: str) -> dict:
    """A new filter (dynamic groups only; members follow at once) and/or description."""
    group = _existing(conn, name)
    if filter_text is not None:
        if group["kind"] != DYNAMIC:
            raise GroupError("group_not_dynamic", f"{group['name']} is a static group: change its members instead")
        _check_filter(filter_text)
        conn.execute("UPDATE device_groups SET filter = ?, updated_at = ? WHERE name = ?", (filter_text, now, name))
        refresh_group(conn, name, now)
    if description is not None:
        _check_description(description)
        conn.execute("UPDATE device_groups SET description = ?, updated_at = ? WHERE name = ?",
                     (description or None, now, name))
    return get(conn, name)


def delete(conn: sqlite3.Connection, name: str, now: str) -> int:
    """Remove the group (its members leave it first, so the change log says so); returns how many."""
    group = _existing(conn, name)
    left = _leave(conn, group["name"], members(conn, group["name"]), now)
    conn.execute("DELETE FROM device_groups WHERE name = ?", (group["name"],))
    return left


def add_members(conn: sqlite3.Connection, name: str, device_ids: Sequence[str], now: str) -> int:
    """Add devices to a static group; every id must be a known device. Returns how many joined."""
    group = _static(conn, name)
    ids = list(dict.fromkeys(device_ids))
    known = _known_devices(conn, ids)
    unknown = [device for device in ids if device not in known]
    if unknown:
        shown = ", ".join(unknown[:5]) + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else "")
        raise GroupError("unknown_device", f"no device with id {shown} (a group holds device ids, not user "
                         f"channels)", 404)
    return _join(conn, group["name"], ids, now)


def remove_members(conn: sqlite3.Connection, name: str, device_ids: Sequence[str], now: str) -> int:
    group = _static(conn, name)
    return _leave(conn, group["name"], list(dict.fromkeys(device_ids)), now)


def _existing(conn: sqlite3.Connection, name: str) -> dict:
    group = get(conn, name)
    if group is None:
        raise GroupError("group_not_found", f"no group named {name!r}", 404)
    return group


def _static(conn: sqlite3.Connection, name: str) -> dict:
    group = _existing(conn, name)
    if group["kind"] != STATIC:
        raise GroupError("group_not_static", f"{group['name']} is a dynamic group: its filter decides its members")
    return group


def _check_filter(text: object) -> None:
    if not isinstance(text, str):
        raise GroupError("bad_filter", "the filter must be text")
    _group_filter(text)  # FilterError, with its position, when it cannot be used


def _check_description(description: object) -> None:
    if description is not None and (not isinstance(description, str) or len(description) > MAX_DESCRIPTION):
        raise GroupError("bad_request", f"the description must be text of at most {MAX_DESCRIPTION} characters")


def _known_devices(conn: sqlite3.Connection, ids: Sequence[str]) -> set[str]:
    found: set[str] = set()
    for start in range(0, len(ids), _CHUNK):
        chunk = ids[start:start + _CHUNK]
        found.update(row[0] for row in conn.execute(
            f"SELECT id FROM devices WHERE id IN ({', '.join('?' * len(chunk))})", chunk))
    return found


def _join(conn: sqlite3.Connection, group: str, device_ids: Iterable[str], now: str) -> int:
    joined = 0
    for device in device_ids:
        if conn.execute("INSERT INTO group_members (group_name, device_id, added_at) VALUES (?, ?, ?) "
                        "ON CONFLICT DO NOTHING", (group, device, now)).rowcount:
            conn.execute("INSERT INTO group_changes (group_name, device_id, change, changed_at) "
                         "VALUES (?, ?, 'joined', ?)", (group, device, now))
            joined += 1
    return joined


def _leave(conn: sqlite3.Connection, group: str, device_ids: Iterable[str], now: str) -> int:
    left = 0
    for device in device_ids:
        if conn.execute("DELETE FROM group_members WHERE group_name = ? AND device_id = ?", (group, device)).rowcount:
            conn.execute("INSERT INTO group_changes (group_name, device_id, change, changed_at) "
                         "VALUES (?, ?, 'left', ?)", (group, device, now))
            left += 1
    return left


# --- dynamic membership -------------------------------------------------------------------------------

def refresh_group(conn: sqlite3.Connection, name: str, now: str) -> tuple[int, int]:
    """Make a dynamic group's members the devices its filter matches now; returns (joined, left)."""
    text = conn.execute("SELECT filter FROM device_groups WHERE name = ? AND kind = 'dynamic'", (name,)).fetchone()[0]
    sql = device_filter.compile_sql(_group_filter(text), now=_moment(now))
    device_filter.prepare(conn)
    matching = {row[0] for row in conn.execute(f"SELECT d.id {device_filter.SOURCE} WHERE {sql.where}", sql.params)}
    current = set(members(conn, name))
    return _join(conn, name, sorted(matching - current), now), _leave(conn, name, sorted(current - matching), now)


def refresh_device(conn: sqlite3.Connection, device_id: str, now: str) -> int:
    """A device's facts changed: make its dynamic groups follow; returns how many memberships changed."""
    device_filter.prepare(conn)
    current = set(groups_of(conn, device_id))
    changed = 0
    for name, text in conn.execute("SELECT name, filter FROM device_groups WHERE kind = 'dynamic'").fetchall():
        try:
            sql = device_filter.compile_sql(_group_filter(text), now=_moment(now))
        except FilterError:  # a filter stored by an older release that this one reads differently: skip it
            continue
        matches = conn.execute(f"SELECT 1 {device_filter.SOURCE} WHERE d.id = ? AND {sql.where}",
                               [device_id, *sql.params]).fetchone() is not None
        if matches and name not in current:
            changed += _join(conn, name, [device_id], now)
        elif not matches and name in current:
            changed += _leave(conn, name, [device_id], now)
    return changed


def _moment(text: str) -> datetime:
    return from_text(text)


# --- group:NAME in lists of enrollment ids ------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Snapshot:
    """A group as it was when a command was enqueued to it."""

    name: str
    kind: str
    filter: str | None
    members: tuple[str, ...]


def expand(conn: sqlite3.Connection, ids: Sequence[str]) -> tuple[list[str], list[Snapshot], list[str]]:
    """Replace each group:NAME by its members: (enrollment ids, in order and unique; the groups' snapshots;
    the group:NAME entries naming no group)."""
    expanded: list[str] = []
    snapshots: list[Snapshot] = []
    unknown: list[str] = []
    for entry in ids:
        if not entry.startswith(PREFIX):
            expanded.append(entry)
            continue
        group = get(conn, entry[len(PREFIX):])
        if group is None:
            unknown.append(entry)
            continue
        found = members(conn, group["name"])
        snapshots.append(Snapshot(group["name"], group["kind"], group["filter"], tuple(found)))
        expanded.extend(found)
    return list(dict.fromkeys(expanded)), snapshots, unknown


def record_for_command(conn: sqlite3.Connection, command_uuid: str, snapshots: Iterable[Snapshot], now: str) -> None:
    conn.executemany(
        "INSERT INTO command_groups (command_uuid, group_name, kind, filter, members, recorded_at)"
        " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
        [(command_uuid, s.name, s.kind, s.filter, json.dumps(list(s.members)), now) for s in snapshots])


def command_groups(conn: sqlite3.Connection, command_uuid: str) -> list[dict]:
    """The groups a command was enqueued to, with their members at that moment."""
    return [{"name": row[0], "kind": row[1], "filter": row[2], "members": json.loads(row[3]), "recorded_at": row[4]}
            for row in conn.execute(
                "SELECT group_name, kind, filter, members, recorded_at FROM command_groups WHERE command_uuid = ?"
                " ORDER BY group_name", (command_uuid,))]
