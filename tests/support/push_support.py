"""Shared by the push tests: enrollments written straight into the database (as a device's TokenUpdate
would leave them), push certificate import over the API, and /metrics read by hand."""

from __future__ import annotations

import contextlib
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from tests.support.apns_certs import make_ca, make_push_cert, make_server
from tests.support.apns_standin import StandIn

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


@dataclass
class ApnsStandIn:
    """A local APNs stand-in (real HTTP/2 + TLS) and what the appliance needs to push to it."""

    standin: StandIn
    apns: dict  # the [apns] keys that point the appliance at it
    push_ca: object

    async def import_push_cert(self, server) -> None:
        """A push certificate from the stand-in's Apple CA, imported over the API."""
        await import_cert(server, make_push_cert(self.push_ca))


async def start_apns_standin(nursery, tmp_path: Path) -> ApnsStandIn:
    server_ca, push_ca = make_ca("Stand-in APNs server CA"), make_ca("Stand-in Apple push CA")
    identity = make_server(server_ca)
    ca_file = tmp_path / "apns-ca.pem"
    ca_file.write_bytes(server_ca.cert_pem)
    standin = StandIn.create(identity.cert_pem, identity.key_pem, push_ca.cert_pem)
    await nursery.start(standin.serve)
    return ApnsStandIn(standin, {"url": standin.url, "ca_file": str(ca_file)}, push_ca)
