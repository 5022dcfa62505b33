"""Which identity certificate speaks for which device: SHA-256 of the certificate's DER, bound at Authenticate
(appliance.service.certauth decides; this module only records). A certificate the binding moved away from is
kept in cert_history, one issued as a proven renewal of the bound one in cert_successors."""

from __future__ import annotations

import sqlite3
from typing import NamedTuple

from appliance.store.timefmt import now_text

BOUND, REPLACED, SUCCESSOR = "bound", "replaced", "successor"


class Claim(NamedTuple):
    """The device a certificate belongs to, and how: BOUND now, REPLACED once, or issued as its SUCCESSOR."""

    device_id: str
    state: str


def bound_fingerprint(conn: sqlite3.Connection, device_id: str) -> str | None:
    row = conn.execute("SELECT sha256 FROM cert_bindings WHERE device_id = ?", (device_id,)).fetchone()
    return row[0] if row else None


def device_bound_to(conn: sqlite3.Connection, sha256: str) -> str | None:
    """The device this certificate is bound to now, if any."""
    row = conn.execute("SELECT device_id FROM cert_bindings WHERE sha256 = ? LIMIT 1", (sha256,)).fetchone()
    return row[0] if row else None


def claim(conn: sqlite3.Connection, sha256: str) -> Claim | None:
    """Whose this certificate is, if anyone's (its current binding first)."""
    row = conn.execute(
        "SELECT device_id, state FROM ("
        " SELECT device_id, 'bound' AS state, 1 AS rank FROM cert_bindings WHERE sha256 = :sha"
        " UNION ALL SELECT device_id, 'replaced', 2 FROM cert_history WHERE sha256 = :sha"
        " UNION ALL SELECT device_id, 'successor', 3 FROM cert_successors WHERE sha256 = :sha"
        ") ORDER BY rank LIMIT 1",
        {"sha": sha256},
    ).fetchone()
    return Claim(row[0], row[1]) if row else None


def is_successor(conn: sqlite3.Connection, sha256: str, device_id: str, predecessor: str) -> bool:
    """Was this certificate issued as a proven renewal of `predecessor`, the device's bound certificate?"""
    return conn.execute(
        "SELECT 1 FROM cert_successors WHERE sha256 = ? AND device_id = ? AND predecessor = ?",
        (sha256, device_id, predecessor),
    ).fetchone() is not None


def record_successor(conn: sqlite3.Connection, sha256: str, device_id: str, predecessor: str, proof: str) -> None:
    conn.execute(
        "INSERT INTO cert_successors (sha256, device_id, predecessor, proof, recorded_at) VALUES (?, ?, ?, ?, ?) "
        "ON CONFLICT (sha256) DO NOTHING",
        (sha256, device_id, predecessor, proof, now_text()),
    )


def bind(conn: sqlite3.Connection, device_id: str, sha256: str, subject: str | None, not_after: str | None,
         not_before: str | None = None, issuer: str | None = None) -> None:
    """Bind the certificate to the device; a certificate it replaces is remembered as the device's."""
    now = now_text()
    conn.execute(
        "INSERT INTO cert_history (sha256, device_id, bound_at, replaced_at) "
        "SELECT sha256, device_id, bound_at, ? FROM cert_bindings WHERE device_id = ? AND sha256 != ? "
        "ON CONFLICT (sha256) DO UPDATE SET replaced_at = excluded.replaced_at",
        (now, device_id, sha256),
    )
    conn.execute(
        "INSERT INTO cert_bindings (device_id, sha256, subject, not_after, not_before, issuer, bound_at)"
        " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (device_id) DO UPDATE SET sha256 = excluded.sha256,"
        " subject = excluded.subject, not_after = excluded.not_after, not_before = excluded.not_before,"
        " issuer = excluded.issuer, bound_at = excluded.bound_at",
        (device_id, sha256, subject, not_after, not_before, issuer, now),
    )
    # A successor that is now the binding has served its purpose.
    conn.execute("DELETE FROM cert_successors WHERE sha256 = ?", (sha256,))


def binding(conn: sqlite3.Connection, device_id: str) -> dict | None:
    row = conn.execute(
        "SELECT device_id, sha256, subject, not_after, bound_at FROM cert_bindings WHERE device_id = ?", (device_id,)
    ).fetchone()
    return dict(row) if row else None
