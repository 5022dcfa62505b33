"""Test fleets written straight into the appliance's database with plain SQL (the state a fleet of
enrolled devices leaves behind), for tests of the admin API, the CLI and metrics that need many devices
without running thousands of enrollments."""

from __future__ import annotations

import plistlib
import uuid

T0 = "2026-01-01T00:00:00.000000Z"


def udid(index: int) -> str:
    return f"0000{index:04X}-0000-0000-0000-{index:012X}"


def seed_devices(conn, count: int, *, start: int = 0, users: bool = False, active: bool = True,
                 token: bool = True) -> list[str]:
    """count enrolled devices (device channel, optionally a user channel each); returns the device ids."""
    ids = [udid(start + i) for i in range(count)]
    conn.executemany(
        "INSERT INTO devices (id, serial_number, model, model_name, os_version, build_version, device_name,"
        " authenticated_at, created_at, updated_at) VALUES (?, ?, 'Mac14,2', 'MacBook Air', '15.1', '24B83',"
        " ?, ?, ?, ?)",
        [(d, f"SER{start + i:06d}", f"Mac {start + i}", T0, T0, T0) for i, d in enumerate(ids)],
    )
    rows = []
    for i, d in enumerate(ids):
        rows.append((d, d, "Device", None, "com.apple.mgmt.External.test", "magic-" + d,
                     bytes.fromhex("ab" * 32) if token else None, 1 if token else 0, 1 if active else 0))
        if users:
            rows.append((f"{d}:USER-{i}", d, "User", f"USER-{i}", "com.apple.mgmt.External.test",
                         "umagic-" + d, bytes.fromhex("cd" * 32) if token else None, 1 if token else 0,
                         1 if active else 0))
    conn.executemany(
        "INSERT INTO enrollments (id, device_id, type, user_id, topic, push_magic, token, token_update_count,"
        " active, enrolled_at, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, '" + T0 + "', '"
        + T0 + "', '" + T0 + "')",
        rows,
    )
    return ids


def command_plist(request_type: str = "DeviceInformation", command_uuid: str | None = None, **keys) -> tuple[str, bytes]:
    """A raw command plist made with plain plistlib (independent of the server's codec)."""
    command_uuid = command_uuid or str(uuid.uuid4())
    body = plistlib.dumps({"CommandUUID": command_uuid, "Command": {"RequestType": request_type, **keys}})
    return command_uuid, body
