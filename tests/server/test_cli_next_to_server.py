"""The CLI next to a running server (issue 9, "CLI next to a running server"): state changes go through
the server's admin API; without a server the CLI opens the database itself but never creates or
migrates it, and never waits long for its locks. The CLI runs as operators run it, in its own process."""

from __future__ import annotations

import contextlib
import json
import os
import re
import sqlite3
import sys
from pathlib import Path

import pytest
import trio
from cryptography.x509.oid import NameOID

from appliance.bootstrap import prepare_data_dir
from appliance.config import load_config
from appliance.push.scheduler import PushService
from appliance.store import schema
from appliance.store.db import connect_sync
from tests.support.apns_certs import make_ca, make_push_cert
from tests.support.harness import free_port, make_config, start_server

ROOT = Path(__file__).resolve().parents[2]
LOCK_WAIT_GUARD = 25  # the CLI gives up after 5 s; the old CLI waited 30 s, so it cannot pass this


async def cli(config: Path, *args: str) -> tuple[int, str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("MDM_APPLIANCE_")}
    env["PYTHONPATH"] = str(ROOT)
    done = await trio.run_process([sys.executable, "-m", "appliance", *args, "--config", str(config)],
                                  capture_stdout=True, capture_stderr=True, check=False, env=env)
    return done.returncode, done.stdout.decode(), done.stderr.decode()


def one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def push_files(folder: Path, name: str = "push") -> tuple[Path, Path, str]:
    ident = make_push_cert(make_ca(f"{name} CA"))
    cert, key = folder / f"{name}.pem", folder / f"{name}.key"
    cert.write_bytes(ident.cert_pem)
    key.write_bytes(ident.key_pem)
    return cert, key, ident.cert.subject.get_attributes_for_oid(NameOID.USER_ID)[0].value


def request_count(metrics_text: str, endpoint: str) -> float:
    pattern = rf'^mdm_http_requests_total{{endpoint="{re.escape(endpoint)}",status="2\d\d"}} (\S+)$'
    return sum(float(value) for value in re.findall(pattern, metrics_text, re.M))


async def test_state_changes_go_through_the_running_server_which_uses_them_at_once(
        nursery, tmp_path, monkeypatch):
    # The server's poll for certificates written behind its back never runs during this test: what it
    # knows at once, it learned from its own API.
    monkeypatch.setattr(PushService, "cert_poll_seconds", 3600)
    port = free_port()
    config = make_config(tmp_path, port=port, server={"public_url": f"https://127.0.0.1:{port}"},
                         apns={"url": "https://127.0.0.1:9"})
    server = await start_server(nursery, config)
    cert, key, topic = push_files(tmp_path)

    code, out, err = await cli(config, "push-cert", "import", str(cert), str(key))
    assert code == 0, err
    async with server.client() as http:
        push = (await http.get("/healthz")).json()["checks"]["push"]
    assert push["topic"] == topic and push["state"] != "missing"
    assert server.runtime.push.certificate.topic == topic
    assert topic in out and f"the server at {server.base_url} uses it now" in err

    code, out, err = await cli(config, "push-cert", "show", "--json")
    assert code == 0, err
    shown = json.loads(out)
    assert shown["topic"] == topic and shown["state"] == "ok" and len(shown["sha256"]) == 64

    profile = tmp_path / "enroll.mobileconfig"
    code, _, err = await cli(config, "enroll-profile", "--out", str(profile))
    assert code == 0 and f"from the server at {server.base_url}" in err, err
    assert profile.read_bytes().startswith(b"<?xml")
    code, out, err = await cli(config, "challenge")
    assert code == 0, err
    code, _, err = await cli(config, "enrollment-urls", "--forget-changed")
    assert code == 0, err

    async with server.api_client() as api:
        metrics = (await api.get("/metrics")).text
    for endpoint in ("/v1/pushcert", "/v1/enrollment-profile", "/v1/challenges", "/v1/enrollment-urls",
                     "/v1/enrollment-urls/changed"):
        assert request_count(metrics, endpoint) >= 1, endpoint
    await server.aclose()


async def test_a_server_of_another_data_dir_on_the_port_is_not_used(nursery, tmp_path):
    """Plain HTTP (no TLS to tell them apart): /healthz names the CA, and it is not ours."""
    port = free_port()
    plain = {"listen": f"127.0.0.1:{port}", "tls": False, "public_url": f"http://127.0.0.1:{port}"}
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    server = await start_server(nursery, make_config(tmp_path / "a", server=plain))
    other = make_config(tmp_path / "b", server=plain)
    prepared = prepare_data_dir(load_config(other))
    connect_sync(prepared.db_path).close()

    code, out, err = await cli(other, "challenge")
    assert code == 0, err
    assert "has another CA" in err
    with contextlib.closing(sqlite3.connect(prepared.db_path)) as conn:
        assert conn.execute("SELECT count(*) FROM scep_challenges").fetchone()[0] == 1
    assert await server.runtime.store.read(
        lambda conn: conn.execute("SELECT count(*) FROM scep_challenges").fetchone()[0]) == 0
    await server.aclose()


def _older_database(path: Path) -> None:
    """The database an older program left: every migration but core's last, built without our migrator."""
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as conn:
        conn.execute("CREATE TABLE schema_versions (component TEXT PRIMARY KEY, version INTEGER NOT NULL)")
        for module_path in schema.COMPONENTS:
            module = __import__(module_path, fromlist=["NAME"])
            scripts = module.MIGRATIONS[:-1] if module.NAME == "core" else module.MIGRATIONS
            for script in scripts:
                conn.executescript(script)
            conn.execute("INSERT INTO schema_versions VALUES (?, ?)", (module.NAME, len(scripts)))


def _newer_database(path: Path) -> None:
    connect_sync(path).close()
    with contextlib.closing(sqlite3.connect(path)) as conn, conn:
        conn.execute("UPDATE schema_versions SET version = version + 1 WHERE component = 'core'")


def _contents(path: Path) -> tuple[dict, list[str]]:
    with contextlib.closing(sqlite3.connect(path)) as conn:
        return dict(conn.execute("SELECT component, version FROM schema_versions")), list(conn.iterdump())


@pytest.mark.parametrize("age", ["older", "newer"])
async def test_without_a_server_a_database_at_another_schema_is_refused_unchanged(tmp_path, age):
    config = make_config(tmp_path, port=free_port())  # nothing listens there
    prepared = prepare_data_dir(load_config(config))
    (_older_database if age == "older" else _newer_database)(prepared.db_path)
    before = _contents(prepared.db_path)
    core = before[0]["core"]
    expected = len(__import__("appliance.store.core_schema", fromlist=["MIGRATIONS"]).MIGRATIONS)
    cert, key, _ = push_files(tmp_path)
    for args in (("push-cert", "import", str(cert), str(key)), ("push-cert", "show"), ("challenge",),
                 ("enroll-profile", "--out", str(tmp_path / "p.mobileconfig")),
                 ("enrollment-urls", "--forget-changed")):
        code, out, err = await cli(config, *args)
        assert code == 1, (args, out, err)
        line = one_error_line(err)
        assert f"database schema is core v{core}, this program expects v{expected}" in line, line
        assert ("restart the server" in line) == (age == "older"), line
        assert _contents(prepared.db_path) == before, args
    assert not (tmp_path / "p.mobileconfig").exists()


async def test_without_a_database_the_cli_creates_none(tmp_path):
    config = make_config(tmp_path, port=free_port())
    code, _, err = await cli(config, "challenge")
    assert code == 1 and "start the server once" in one_error_line(err)
    assert not (tmp_path / "state" / "appliance.db").exists()


async def test_a_held_write_lock_makes_the_cli_give_up_within_its_deadline_in_one_line(tmp_path):
    config = make_config(tmp_path, port=free_port())
    prepared = prepare_data_dir(load_config(config))
    connect_sync(prepared.db_path).close()
    cert, key, topic = push_files(tmp_path)
    code, _, offline = await cli(config, "push-cert", "import", str(cert), str(key))
    assert code == 0, offline

    holder = sqlite3.connect(prepared.db_path, isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")  # as a stuck writer would
        answers = {}

        async def blocked(args) -> None:
            answers[args] = await cli(config, *args)

        with trio.fail_after(LOCK_WAIT_GUARD):
            async with trio.open_nursery() as nursery:
                for args in (("challenge",), ("push-cert", "import", str(cert), str(key))):
                    nursery.start_soon(blocked, args)
        for args, (code, out, err) in answers.items():
            assert code == 1 and out == "", (args, out)
            assert "is busy" in one_error_line(err) and "nothing was changed" in err
        # Reading needs no write lock (WAL): inspection still works meanwhile.
        code, out, err = await cli(config, "push-cert", "show")
        assert code == 0 and topic in out, err
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    code, _, err = await cli(config, "challenge")
    assert code == 0, err
    with contextlib.closing(sqlite3.connect(prepared.db_path)) as conn:
        assert conn.execute("SELECT count(*) FROM scep_challenges").fetchone()[0] == 1
    assert "no server is running" in offline
