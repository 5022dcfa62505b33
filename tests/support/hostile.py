"""Support for the hostile-traffic tests: the appliance as a child process shared by a test module, and a
digest of every table of its SQLite file to show a request changed nothing it was not entitled to."""

from __future__ import annotations

import hashlib
import re
import sqlite3
import ssl
from dataclasses import dataclass
from pathlib import Path

import httpx
import trio

from tests.support.device_sim import TestCA
from tests.support.harness import API_KEY, free_port, make_config
from tests.support.mdm_support import ServerProcess


@dataclass
class HostileServer:
    process: ServerProcess
    data_dir: Path
    tls: bool
    device_ca: TestCA

    @property
    def port(self) -> int:
        return self.process.port

    @property
    def base_url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    @property
    def db_path(self) -> Path:
        return self.data_dir / "appliance.db"

    def ssl_context(self) -> ssl.SSLContext | None:
        return ssl.create_default_context(cafile=str(self.data_dir / "ca.crt")) if self.tls else None

    def alive(self) -> bool:
        return self.process.process is not None and self.process.process.poll() is None

    def log(self) -> str:
        return self.process.log_path.read_text(errors="replace")


def start_hostile_server(tmp_path: Path, *, tls: bool = True, **overrides: dict) -> HostileServer:
    """A server process on a free port (blocking: for module-scoped fixtures). Bodies over 4 MiB are
    refused, so the 8 MiB cases meet the size limit and the smaller ones the routes themselves."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    ca = TestCA("Hostile Test Device CA", directory=tmp_path, key_type="ec")
    port = free_port()
    server = {"max_body_size": "4MiB", "tls": tls, **overrides.pop("server", {})}
    if not tls:
        server["public_url"] = "https://mdm.example.org"  # TLS ends at a proxy in front
    config = make_config(tmp_path, port=port, server=server, identity={"trusted_ca_files": [str(ca.pem_path)]},
                         logging={"level": "info"}, **overrides)
    process = ServerProcess(config, port, tmp_path / "server.log")
    hostile = HostileServer(process, tmp_path / "state", tls, ca)
    try:
        trio.run(process.start)
        with httpx.Client(verify=hostile.ssl_context() or False, timeout=10) as client:
            assert client.get(hostile.base_url + "/healthz").status_code == 200
    except BaseException:
        process.stop()
        raise
    return hostile


def table_digest(db_path: Path) -> dict[str, tuple[int, str]]:
    """{table: (row count, SHA-256 of its rows in primary-key order)} for every table of the database,
    read through a separate read-only connection (WAL: it sees what the server committed)."""
    conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        tables = [row[0] for row in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name")]
        digest = {}
        for table in tables:
            rows = conn.execute(f'SELECT * FROM "{table}" ORDER BY 1').fetchall()
            digest[table] = (len(rows), hashlib.sha256(repr(sorted(map(repr, rows))).encode()).hexdigest())
        return digest
    finally:
        conn.close()


def changed_tables(before: dict, after: dict) -> set[str]:
    return {table for table in before.keys() | after.keys() if before.get(table) != after.get(table)}


def metric(text: str, name: str, **labels: str) -> float:
    """One sample's value from Prometheus text (0 when absent)."""
    label_text = ",".join(f'{key}="{value}"' for key, value in labels.items())
    pattern = re.escape(name) + (r"\{" + re.escape(label_text) + r"\}" if labels else "") + r" (\S+)"
    match = re.search(r"^" + pattern + r"$", text, re.M)
    return float(match.group(1)) if match else 0.0


AUTH = {"Authorization": f"Bearer {API_KEY}"}
