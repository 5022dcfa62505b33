"""Shared by the push tests: enrollments written straight into the database (as a device's TokenUpdate
would leave them), push certificate import over the API, and /metrics read by hand."""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path

NOW = "2026-01-01T00:00:00.000000Z"


def db(server):
    """The database of a running test server (or of a data_dir, for a server in another process)."""
    data_dir = server if isinstance(server, Path) else server.config.data_dir
    return contextlib.closing(sqlite3.connect(data_dir / "appliance.db", timeout=10))


def add_enrollment(server, eid: str, token: bytes, active: int = 1) -> None:
    with db(server) as c, c:
        c.execute("INSERT OR IGNORE INTO devices (id, created_at, updated_at) VALUES (?, ?, ?)",
                  (eid, NOW, NOW))
        c.execute(
            "INSERT INTO enrollments (id, device_id, type, topic, push_magic, token, active, "
            "created_at, updated_at) VALUES (?, ?, 'Device', 't', ?, ?, ?, ?, ?)",
            (eid, eid, f"magic-{eid}", token, active, NOW, NOW))


def metric_lines(text: str, name: str) -> dict[str, float]:
    """{'{labels}': value} for one metric family in Prometheus text, parsed by hand (not our renderer)."""
    found = {}
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            labels, _, value = line[len(name):].rpartition(" ")
            found[labels.strip()] = float(value)
    return found


async def scrape(server) -> str:
    async with server.api_client() as api:
        answer = await api.get("/metrics")
    assert answer.status_code == 200
    return answer.text


async def import_cert(server, ident) -> None:
    async with server.api_client() as api:
        put = await api.put("/v1/pushcert", content=ident.cert_pem + ident.key_pem)
    assert put.status_code == 200, put.text
