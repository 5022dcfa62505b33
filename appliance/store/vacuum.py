"""Giving deleted space back to the file system with SQLite's incremental auto-vacuum.

Deleting rows only frees pages inside the file. A database in auto_vacuum=INCREMENTAL mode can hand free
pages back a few at a time (`release`, a short write job of the retention worker). The mode is set when
the file is created (connect_sync), or later only by one VACUUM, which rewrites the whole file under an
exclusive lock. `prepare` does that at the server's start for an older database that is small (about a
second here) when the disk has room for the copy; a bigger one is left as it is, with a warning naming
`mdm-appliance db vacuum`, which converts it while the appliance is stopped.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
from pathlib import Path

from appliance.logs import get_logger

log = get_logger("store")

MODES = {0: "none", 1: "full", 2: "incremental"}
# Databases up to this size are converted at start (VACUUM rewrites ~100 MB/s here: under a second).
CONVERT_AT_START_LIMIT = 64 * 1024 * 1024
# A VACUUM in WAL mode needs room for a temporary copy and for the rewritten pages in the WAL.
ROOM_FACTOR = 2.5


def mode(conn: sqlite3.Connection) -> str:
    return MODES.get(conn.execute("PRAGMA auto_vacuum").fetchone()[0], "unknown")


def database_bytes(path: Path) -> int:
    """The database with its WAL, as it takes space on the disk."""
    total = 0
    for suffix in ("", "-wal"):
        try:
            total += os.stat(f"{path}{suffix}").st_size
        except FileNotFoundError:
            pass
    return total


def has_room(path: Path) -> bool:
    return shutil.disk_usage(Path(path).parent).free > ROOM_FACTOR * database_bytes(path)


def convert(conn: sqlite3.Connection) -> None:
    """Turn incremental auto-vacuum on for an existing database: one VACUUM rewrites the whole file.
    The caller holds the database alone (the server before it listens, or `db vacuum` with the appliance
    stopped); a failed VACUUM leaves the file as it was."""
    conn.execute("PRAGMA auto_vacuum=INCREMENTAL")
    conn.execute("VACUUM")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")


def prepare(conn: sqlite3.Connection, path: Path) -> str:
    """At the server's start: make sure freed space can be given back. Returns the mode in use."""
    current = mode(conn)
    if current == "incremental":
        return current
    size = database_bytes(path)
    if size <= CONVERT_AT_START_LIMIT and has_room(path):
        try:
            convert(conn)
        except sqlite3.Error as exc:  # the file stays as it was; the appliance runs on without the mode
            log.warning("database_vacuum_failed", path=path, error=str(exc))
            return mode(conn)
        log.info("database_vacuumed", path=path, bytes_before=size, bytes_after=database_bytes(path),
                 reason="incremental auto-vacuum turned on")
        return mode(conn)
    log.warning("incremental_vacuum_off", path=path, bytes=size,
                hint="pruned space is reused but not given back to the disk until `mdm-appliance db vacuum` "
                     "runs once with the appliance stopped")
    return current


def free_pages(conn: sqlite3.Connection) -> int:
    return conn.execute("PRAGMA freelist_count").fetchone()[0]


def release(conn: sqlite3.Connection, pages: int) -> int:
    """A write job: give up to `pages` free pages back (truncating the file); returns how many went.
    Python's sqlite3 steps a statement without result columns once, and each step of incremental_vacuum
    frees one page, so it is run once per page."""
    if mode(conn) != "incremental":
        return 0
    count = min(pages, free_pages(conn))
    for _ in range(count):
        conn.execute("PRAGMA incremental_vacuum(1)")
    return count


def checkpoint(conn: sqlite3.Connection) -> None:
    """Copy the WAL into the database file as far as readers allow, without waiting for them; the file
    takes its new, smaller size when the whole WAL got in. Outside a transaction only."""
    conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
