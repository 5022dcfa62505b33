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
]


def _components():
    for path in COMPONENTS:
        module = importlib.import_module(path)
        yield module.NAME, module.MIGRATIONS


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
