"""What retention deletes, one small batch per call, and the database's figures (size, rows per table).

Each prune function is one write job of the retention worker (appliance.service.retention): it deletes
at most `limit` rows, found through an index on the row's time (appliance.store.retention_schema), so a
job stays short however large the table is, and returns how many went (fewer than `limit`: done).
"""

from __future__ import annotations

import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from appliance.store import vacuum


@dataclass(frozen=True)
class AgeRule:
    """Rows of `table` whose `column` (an indexed time) is older than the age configured as `kind`."""

    kind: str
    table: str
    column: str


# A rule whose table does not exist (a component not in this build) is skipped.
AGE_RULES = (
    AgeRule("results", "results", "received_at"),
    AgeRule("stray_reports", "stray_reports", "received_at"),
    AgeRule("inventory_history", "inventory_history", "changed_at"),
    AgeRule("inventory_history", "group_changes", "changed_at"),  # the group membership log
    AgeRule("ddm_status_history", "ddm_status_reports", "received_at"),
    AgeRule("ddm_status_history", "ddm_status_errors", "received_at"),
)
# Rows that belong to one stored command and go with its body (table, column naming the command).
COMMAND_DEPENDENTS = (("command_groups", "command_uuid"),)


def tables(conn: sqlite3.Connection) -> set[str]:
    return {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


# The newest result always stays: results take rowids after the largest one, and /metrics counts results
# by rowid (appliance.store.fleet.results_since), so a rowid must never be handed out twice. The same for
# the group membership log, which DDM follows by id (appliance.store.ddm.follow_group_changes).
_KEEP = {"results": "AND rowid < (SELECT max(rowid) FROM results)",
         "group_changes": "AND rowid < (SELECT max(rowid) FROM group_changes)"}


def any_older(conn: sqlite3.Connection, rule: AgeRule, cutoff: str) -> bool:
    """Whether the rule has anything to delete: the worker writes only then (a write transaction that
    changes nothing would still tell the store its commits work again, hiding a storage fault)."""
    keep = _KEEP.get(rule.table, "")
    return conn.execute(f"SELECT 1 FROM {rule.table} WHERE {rule.column} < ? {keep} LIMIT 1",
                        (cutoff,)).fetchone() is not None


def prune_older(conn: sqlite3.Connection, rule: AgeRule, cutoff: str, limit: int) -> int:
    """Delete up to `limit` rows of the rule's table older than `cutoff`, oldest first."""
    keep = _KEEP.get(rule.table, "")
    return conn.execute(
        f"DELETE FROM {rule.table} WHERE rowid IN (SELECT rowid FROM {rule.table} "
        f"WHERE {rule.column} < ? {keep} ORDER BY {rule.column} LIMIT ?)",
        (cutoff, limit),
    ).rowcount


def unused_commands(conn: sqlite3.Connection, cutoff: str, after: tuple[str, int] | None, limit: int
                    ) -> tuple[list[str], tuple[str, int] | None]:
    """A read: of up to `limit` stored commands created before `cutoff` (after the key `after`, in creation
    order), those no queue row or result names. Returns them and the key to go on from (None: every such
    command has been looked at)."""
    start = after or ("", 0)
    rows = conn.execute(
        "SELECT rowid, uuid, created_at FROM commands WHERE created_at < ? AND (created_at, rowid) > (?, ?) "
        "ORDER BY created_at, rowid LIMIT ?",
        (cutoff, start[0], start[1], limit),
    ).fetchall()
    unused = [row["uuid"] for row in rows if not _named(conn, row["uuid"])]
    following = (rows[-1]["created_at"], rows[-1]["rowid"]) if len(rows) == limit else None
    return unused, following


def delete_commands(conn: sqlite3.Connection, uuids: list[str]) -> int:
    """A write: delete these stored commands, with their dependent rows, unless a queue row or result has
    named them since they were found."""
    unused = [(uuid,) for uuid in uuids if not _named(conn, uuid)]
    present = tables(conn)
    for table, column in COMMAND_DEPENDENTS:
        if table in present:
            conn.executemany(f"DELETE FROM {table} WHERE {column} = ?", unused)
    conn.executemany("DELETE FROM commands WHERE uuid = ?", unused)
    return len(unused)


def _named(conn: sqlite3.Connection, uuid: str) -> bool:
    return (conn.execute("SELECT 1 FROM queue WHERE command_uuid = ?", (uuid,)).fetchone() is not None
            or conn.execute("SELECT 1 FROM results WHERE command_uuid = ?", (uuid,)).fetchone() is not None)


# --- figures ---------------------------------------------------------------------------------------

def database_stats(conn: sqlite3.Connection, path: Path, *, sizes: bool = False) -> dict[str, Any]:
    """File sizes, pages, the auto-vacuum mode and the rows of every table. Counting reads each table's
    smallest index (~60 ms per million rows here): run it on a connection of its own (connect_readonly),
    never on the store's thread. sizes: also the bytes of each table with its indexes (reads every page)."""
    page_size = conn.execute("PRAGMA page_size").fetchone()[0]
    page_count = conn.execute("PRAGMA page_count").fetchone()[0]
    free = conn.execute("PRAGMA freelist_count").fetchone()[0]
    names = [row[0] for row in conn.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name")]
    rows = {name: conn.execute(f'SELECT count(*) FROM "{_quoted(name)}"').fetchone()[0] for name in names}
    stats: dict[str, Any] = {
        "path": str(path),
        "file_bytes": _size(path),
        "wal_bytes": _size(Path(f"{path}-wal")),
        "page_size": page_size,
        "pages": page_count,
        "free_pages": free,
        "free_bytes": free * page_size,
        "auto_vacuum": vacuum.mode(conn),
        "rows": rows,
    }
    if sizes:
        owner = {row[0]: row[1] for row in conn.execute("SELECT name, tbl_name FROM sqlite_master")}
        per_table: dict[str, int] = dict.fromkeys(names, 0)
        for name, pages_bytes in conn.execute("SELECT name, sum(pgsize) FROM dbstat GROUP BY name"):
            table = owner.get(name, name)
            if table in per_table:
                per_table[table] += pages_bytes
        stats["table_bytes"] = per_table
    return stats


def _quoted(name: str) -> str:
    return name.replace('"', '""')


def _size(path: Path) -> int:
    try:
        return os.stat(path).st_size
    except FileNotFoundError:
        return 0
