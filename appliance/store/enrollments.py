"""Devices and their enrollments as check-ins change them. Each function runs inside the caller's
store.write transaction (one per device request).

An enrollment becomes active with its first TokenUpdate, not at Authenticate: until then the server has
no push token and the device may still abandon enrollment. Authenticate starts over (NanoMDM does the
same): the channels of the device go inactive and their TokenUpdate tally restarts, so the TokenUpdate
that follows is told apart as the one that (re-)enrolls it. What else an Authenticate clears depends on
the certificate it came with, and is decided around this module (appliance.service.certauth).
"""

from __future__ import annotations

import sqlite3

from appliance.protocol.enrollment import Enrollment
from appliance.protocol.messages import Authenticate, TokenUpdate
from appliance.store.timefmt import now_text


def authenticate(conn: sqlite3.Connection, message: Authenticate) -> None:
    now = now_text()
    enrollment = message.enrollment
    conn.execute(
        """
        INSERT INTO devices (id, serial_number, model, model_name, product_name, os_version, build_version,
                             device_name, imei, meid, authenticate_raw, authenticated_at, created_at, updated_at)
        VALUES (:id, :serial, :model, :model_name, :product, :os, :build, :name, :imei, :meid, :raw, :now, :now, :now)
        ON CONFLICT (id) DO UPDATE SET
            serial_number = coalesce(excluded.serial_number, serial_number),
            model = coalesce(excluded.model, model),
            model_name = coalesce(excluded.model_name, model_name),
            product_name = coalesce(excluded.product_name, product_name),
            os_version = coalesce(excluded.os_version, os_version),
            build_version = coalesce(excluded.build_version, build_version),
            device_name = coalesce(excluded.device_name, device_name),
            imei = coalesce(excluded.imei, imei),
            meid = coalesce(excluded.meid, meid),
            authenticate_raw = excluded.authenticate_raw,
            authenticated_at = excluded.authenticated_at,
            updated_at = excluded.updated_at
        """,
        {
            "id": enrollment.device_id, "serial": message.serial_number, "model": message.model,
            "model_name": message.model_name, "product": message.product_name, "os": message.os_version,
            "build": message.build_version, "name": message.device_name, "imei": message.imei,
            "meid": message.meid, "raw": message.raw, "now": now,
        },
    )
    conn.execute(
        """
        INSERT INTO enrollments (id, device_id, type, topic, active, last_seen_at, created_at, updated_at)
        VALUES (?, ?, ?, ?, 0, ?, ?, ?)
        ON CONFLICT (id) DO UPDATE SET type = excluded.type, topic = excluded.topic,
            last_seen_at = excluded.last_seen_at, updated_at = excluded.updated_at
        """,
        (enrollment.id, enrollment.device_id, enrollment.type, message.topic, now, now, now),
    )
    conn.execute(
        "UPDATE enrollments SET active = 0, token_update_count = 0, updated_at = ? WHERE device_id = ?",
        (now, enrollment.device_id),
    )


def forget_previous_enrollment(conn: sqlite3.Connection, device_id: str) -> tuple[bool, bool]:
    """At a re-enrollment (another identity for this device) the old enrollment's secrets go: the bootstrap
    token, the unlock token (escrowed for the old installation; a re-enrolled device sends a new one with
    its first TokenUpdate) and every channel's push token and PushMagic (Apple: PushMagic ties a device to
    one MDM relationship; the new one sends both in its TokenUpdate). Returns (had a bootstrap token, had
    an unlock token)."""
    now = now_text()
    had = conn.execute(
        "SELECT bootstrap_token IS NOT NULL, unlock_token IS NOT NULL FROM devices WHERE id = ?", (device_id,)
    ).fetchone()
    conn.execute(
        "UPDATE devices SET bootstrap_token = NULL, bootstrap_token_at = NULL, unlock_token = NULL, "
        "unlock_token_at = NULL, updated_at = ? WHERE id = ?",
        (now, device_id),
    )
    conn.execute(
        "UPDATE enrollments SET token = NULL, push_magic = NULL, updated_at = ? WHERE device_id = ?",
        (now, device_id),
    )
    return (bool(had[0]), bool(had[1])) if had else (False, False)


def token_update(conn: sqlite3.Connection, message: TokenUpdate) -> int:
    """Store the push token, PushMagic and Topic; returns the TokenUpdate tally (1 = this one enrolled it)."""
    now = now_text()
    e = message.enrollment
    row = conn.execute(
        """
        INSERT INTO enrollments (id, device_id, type, user_id, user_short_name, user_long_name, topic, push_magic,
                                 token, token_update_count, awaiting_configuration, active, enrolled_at,
                                 token_update_raw, last_seen_at, created_at, updated_at)
        VALUES (:id, :device, :type, :user_id, :short, :long, :topic, :magic, :token, 1, :awaiting, 1, :now,
                :raw, :now, :now, :now)
        ON CONFLICT (id) DO UPDATE SET
            user_id = coalesce(excluded.user_id, user_id),
            user_short_name = coalesce(excluded.user_short_name, user_short_name),
            user_long_name = coalesce(excluded.user_long_name, user_long_name),
            topic = excluded.topic,
            push_magic = excluded.push_magic,
            token = excluded.token,
            enrolled_at = CASE WHEN active = 0 OR token_update_count = 0 THEN excluded.enrolled_at ELSE enrolled_at END,
            token_update_count = token_update_count + 1,
            awaiting_configuration = excluded.awaiting_configuration,
            active = 1,
            checked_out_at = NULL,
            token_invalid_at = NULL,
            push_backoff_until = NULL,
            token_update_raw = excluded.token_update_raw,
            last_seen_at = excluded.last_seen_at,
            updated_at = excluded.updated_at
        RETURNING token_update_count
        """,
        {
            "id": e.id, "device": e.device_id, "type": e.type, "user_id": e.user_id, "short": e.user_short_name,
            "long": e.user_long_name, "topic": message.topic, "magic": message.push_magic, "token": message.token,
            "awaiting": message.awaiting_configuration, "raw": message.raw, "now": now,
        },
    ).fetchone()
    if message.unlock_token is not None and not e.is_user_channel:
        # Not resent with every TokenUpdate: keep the last one we were given.
        conn.execute(
            "UPDATE devices SET unlock_token = ?, unlock_token_at = ?, updated_at = ? WHERE id = ?",
            (message.unlock_token, now, now, e.device_id),
        )
    return row[0]


def check_out(conn: sqlite3.Connection, enrollment: Enrollment) -> int:
    """The device (all its channels) or one user channel left; returns how many enrollments went inactive."""
    now = now_text()
    if enrollment.is_user_channel:
        where, arg = "id = ?", enrollment.id
    else:
        where, arg = "device_id = ?", enrollment.device_id
    return conn.execute(
        f"UPDATE enrollments SET active = 0, checked_out_at = ?, last_seen_at = ?, updated_at = ? WHERE {where}",
        (now, now, now, arg),
    ).rowcount


def touch(conn: sqlite3.Connection, enrollment_id: str) -> None:
    conn.execute("UPDATE enrollments SET last_seen_at = ? WHERE id = ?", (now_text(), enrollment_id))


def set_bootstrap_token(conn: sqlite3.Connection, device_id: str, token: bytes | None) -> None:
    """Store the device's bootstrap token; None (an empty or missing BootstrapToken) deletes it."""
    now = now_text()
    conn.execute(
        "UPDATE devices SET bootstrap_token = ?, bootstrap_token_at = ?, updated_at = ? WHERE id = ?",
        (token, now if token is not None else None, now, device_id),
    )


def bootstrap_token(conn: sqlite3.Connection, device_id: str) -> bytes | None:
    row = conn.execute("SELECT bootstrap_token FROM devices WHERE id = ?", (device_id,)).fetchone()
    return row[0] if row else None


def exists(conn: sqlite3.Connection, enrollment_id: str) -> bool:
    return conn.execute("SELECT 1 FROM enrollments WHERE id = ?", (enrollment_id,)).fetchone() is not None
