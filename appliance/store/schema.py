"""Versioned migrations, one list per component.

Each concern owns its tables: a component module has NAME and MIGRATIONS, an append-only list of SQL
scripts; never edit a released script, append a new one. `schema_versions` remembers how far each
component has come. A migration and its version bump commit together, so a start killed midway
resumes cleanly at the next start.
"""

from __future__ import annotations

import importlib
import sqlite3

# Module paths of the components, in the order their migrations run.
COMPONENTS = [
    "appliance.store.core_schema",
    "appliance.store.scep_schema",
    "appliance.store.push_schema",
    "appliance.store.ddm_schema",
    "appliance.store.renewal_schema",
    "appliance.store.retention_schema",
    "appliance.store.console_schema",
    "appliance.store.inventory_schema",
    "appliance.store.groups_schema",
    "appliance.store.abm_schema",
]


def _components():
    for path in COMPONENTS:
        module = importlib.import_module(path)
        yield module.NAME, module.MIGRATIONS


class SchemaMismatch(RuntimeError):
    """The database is not at this program's schema; the message says what to do, in one line."""


def expected_versions() -> dict[str, int]:
    return {name: len(migrations) for name, migrations in _components()}


def versions(conn: sqlite3.Connection) -> dict[str, int]:
    """How far each component has come in this database ({} before the first migration)."""
    try:
        return {name: version for name, version in conn.execute("SELECT component, version FROM schema_versions")}
    except sqlite3.OperationalError as exc:
        if "no such table" in str(exc):
            return {}
        raise


def require_current(conn: sqlite3.Connection) -> None:
    """For everything but `serve`, which alone migrates: refuse a database at another schema than ours,
    changing nothing (a newer program next to a running older server must not migrate under it)."""
    found, expected = versions(conn), expected_versions()
    if not found:
        raise SchemaMismatch("the database has no schema yet: start the server once (`mdm-appliance serve`) "
                             "so that it creates it")
    differ = [name for name in expected if found.get(name, 0) != expected[name]]
    if not differ:
        return
    have = " and ".join(f"{name} v{found.get(name, 0)}" for name in differ)
    want = " and ".join(f"v{expected[name]}" if len(differ) == 1 else f"{name} v{expected[name]}" for name in differ)
    if any(found.get(name, 0) > expected[name] for name in differ):
        advice = "it was written by a newer mdm-appliance: use that version (or newer) for this command"
    else:
        advice = ("restart the server (or start it once) so that it migrates the database, then try again, "
                  "or use the mdm-appliance that matches it")
    raise SchemaMismatch(f"database schema is {have}, this program expects {want}: {advice}")


def migrate(conn: sqlite3.Connection) -> dict[str, int]:
    conn.execute(
        "CREATE TABLE IF NOT EXISTS schema_versions (component TEXT PRIMARY KEY, version INTEGER NOT NULL)"
    )
    versions = {}
    for name, migrations in _components():
        row = conn.execute("SELECT version FROM schema_versions WHERE component = ?", (name,)).fetchone()
        current = row[0] if row else 0
        if current > len(migrations):
            raise RuntimeError(
                f"database schema of {name!r} is version {current}, newer than this program knows "
                f"({len(migrations)}): refusing to run an older mdm-appliance on a newer database"
            )
        for number, script in enumerate(migrations[current:], start=current + 1):
            conn.execute("BEGIN IMMEDIATE")
            try:
                for statement in _statements(script):
                    conn.execute(statement)
                conn.execute(
                    "INSERT INTO schema_versions (component, version) VALUES (?, ?) "
                    "ON CONFLICT (component) DO UPDATE SET version = excluded.version",
                    (name, number),
                )
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        versions[name] = len(migrations)
    return versions


def _statements(script: str) -> list[str]:
    """Split a migration script into statements (executescript would commit our transaction)."""
    statements, current = [], ""
    for line in script.splitlines(keepends=True):
        current += line
        if sqlite3.complete_statement(current):
            if current.strip():
                statements.append(current.strip())
            current = ""
    if current.strip():
        statements.append(current.strip())
    return statements
