"""Console accounts: one row per person, with a role and an Argon2id password hash.

Functions take the sqlite3 connection (run them through runtime.store, or on a connect_sync connection
in the CLI). Hashing and role rules live in appliance.service.accounts; this is only the SQL.
"""

from __future__ import annotations

import sqlite3

from appliance.store.timefmt import now_text


class UserExists(Exception):
    pass


def add(conn: sqlite3.Connection, name: str, role: str, password_hash: str) -> None:
    now = now_text()
    try:
        conn.execute(
            "INSERT INTO users (name, role, password_hash, created_at, updated_at) VALUES (?, ?, ?, ?, ?)",
            (name, role, password_hash, now, now),
        )
    except sqlite3.IntegrityError:
        if get(conn, name) is not None:
            raise UserExists(f"user {name!r} already exists") from None
        raise


def get(conn: sqlite3.Connection, name: str) -> dict | None:
    row = conn.execute(
        "SELECT name, role, password_hash, created_at, updated_at, last_login_at FROM users WHERE name = ?",
        (name,),
    ).fetchone()
    return dict(row) if row else None


def listing(conn: sqlite3.Connection) -> list[dict]:
    return [dict(row) for row in conn.execute(
        "SELECT name, role, created_at, updated_at, last_login_at FROM users ORDER BY name")]


def remove(conn: sqlite3.Connection, name: str) -> bool:
    return conn.execute("DELETE FROM users WHERE name = ?", (name,)).rowcount > 0


def set_password(conn: sqlite3.Connection, name: str, password_hash: str) -> bool:
    return conn.execute(
        "UPDATE users SET password_hash = ?, updated_at = ? WHERE name = ?", (password_hash, now_text(), name)
    ).rowcount > 0


def set_role(conn: sqlite3.Connection, name: str, role: str) -> bool:
    return conn.execute(
        "UPDATE users SET role = ?, updated_at = ? WHERE name = ?", (role, now_text(), name)
    ).rowcount > 0


def admins(conn: sqlite3.Connection) -> int:
    return conn.execute("SELECT count(*) FROM users WHERE role = 'admin'").fetchone()[0]


def logged_in(conn: sqlite3.Connection, name: str) -> None:
    conn.execute("UPDATE users SET last_login_at = ? WHERE name = ?", (now_text(), name))
