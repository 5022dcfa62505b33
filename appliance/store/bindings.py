"""Which identity certificate speaks for which device: SHA-256 of the certificate's DER, bound at Authenticate."""

from __future__ import annotations

import sqlite3

from appliance.store.timefmt import now_text


def bound_fingerprint(conn: sqlite3.Connection, device_id: str) -> str | None:
    row = conn.execute("SELECT sha256 FROM cert_bindings WHERE device_id = ?", (device_id,)).fetchone()
    return row[0] if row else None


def other_device(conn: sqlite3.Connection, sha256: str, device_id: str) -> str | None:
    """Another device this certificate is, or was, bound to, if any."""
    row = conn.execute(
        "SELECT device_id FROM cert_bindings WHERE sha256 = ? AND device_id != ? "
        "UNION ALL SELECT device_id FROM cert_history WHERE sha256 = ? AND device_id != ? LIMIT 1",
        (sha256, device_id, sha256, device_id),
    ).fetchone()
    return row[0] if row else None


def bind(conn: sqlite3.Connection, device_id: str, sha256: str, subject: str | None, not_after: str | None) -> None:
    """Bind the certificate to the device; a certificate it replaces is remembered as the device's."""
    now = now_text()
    conn.execute(
        "INSERT INTO cert_history (sha256, device_id, bound_at, replaced_at) "
        "SELECT sha256, device_id, bound_at, ? FROM cert_bindings WHERE device_id = ? AND sha256 != ? "
        "ON CONFLICT (sha256) DO UPDATE SET replaced_at = excluded.replaced_at",
        (now, device_id, sha256),
    )
    conn.execute(
        "INSERT INTO cert_bindings (device_id, sha256, subject, not_after, bound_at) VALUES (?, ?, ?, ?, ?) "
        "ON CONFLICT (device_id) DO UPDATE SET sha256 = excluded.sha256, subject = excluded.subject, "
        "not_after = excluded.not_after, bound_at = excluded.bound_at",
        (device_id, sha256, subject, not_after, now),
    )


def binding(conn: sqlite3.Connection, device_id: str) -> dict | None:
    row = conn.execute(
        "SELECT device_id, sha256, subject, not_after, bound_at FROM cert_bindings WHERE device_id = ?", (device_id,)
    ).fetchone()
    return dict(row) if row else None
