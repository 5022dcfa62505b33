"""Retention against the real server with simulated devices and a clock the test moves: each kind of row
is pruned at its own age and what is recent or still referenced stays; freed space goes back to the
disk; /metrics and `mdm-appliance db stats` show the database's size and rows; an older database gets
incremental vacuum at start when small, or from `db vacuum` with the appliance stopped."""

from __future__ import annotations

import json
import os
import re
import sqlite3
from datetime import timedelta

import pytest
import trio

from appliance.clock import OffsetClock
from appliance.store import schema
from tests.server.test_cli_admin import cli
from tests.support.ddm_client import DdmClient
from tests.support.fleet_seed import command_plist
from tests.support.harness import free_port, make_config, start_server
from tests.support.mdm_support import start_mdm_server
from tests.support.webhook_receiver import Receiver, Running

A, B = "RETENTION-DEVICE-A", "RETENTION-DEVICE-B"
RETENTION = {"results": "90d", "stray_reports": "30d", "ddm_status_history": "90d", "inventory_history": "365d"}


async def _first_pass(server, timeout: float = 30) -> None:
    """The pass the retention worker runs at start."""
    retention = server.runtime.retention
    with trio.fail_after(timeout):
        while retention.passes == 0:
            await retention.pass_done.wait()


async def _pass_after(server, moved: timedelta, timeout: float = 30) -> None:
    """Move the clock and wait for the retention pass that follows. The worker sleeps on the appliance's
    clock between passes, so moving it past the interval starts the next pass at once."""
    await _first_pass(server)
    retention = server.runtime.retention
    before = retention.passes
    server.clock.advance(moved)
    with trio.fail_after(timeout):
        while retention.passes == before:
            await retention.pass_done.wait()


async def _rows(server, sql: str, *args) -> list:
    return await server.runtime.store.read(lambda conn: [tuple(row) for row in conn.execute(sql, args)])


async def _answered(api, device, request_type: str, **keys) -> str:
    uuid, body = command_plist(request_type, **keys)
    assert (await api.put(f"/v1/enqueue/{device.udid}?nopush=1", content=body)).status_code == 200
    reply = await device.idle()
    assert reply.command_uuid == uuid
    await device.acknowledge(uuid, **{request_type: []})
    return uuid


def _metric(text: str, name: str) -> float:
    match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
    assert match, f"{name} not in /metrics"
    return float(match.group(1))


async def test_each_kind_is_pruned_at_its_age_and_what_is_recent_or_referenced_stays(nursery, tmp_path):
    clock = OffsetClock()
    receiver = Receiver(port=free_port())
    async with Running(receiver):
        mdm = await start_mdm_server(nursery, tmp_path, clock=clock, retention=RETENTION, webhook={
            "url": f"http://127.0.0.1:{receiver.port}/events", "retry_initial": 0.05})
        server = mdm.server
        async with mdm.device(A) as a, mdm.device(B) as b, server.api_client() as api:
            await a.enroll()
            await b.enroll()
            ddm = DdmClient(a)
            # Day 0: an answered command, a command B never answers (no expiry), a stray report, DDM status.
            old_answered = await _answered(api, a, "ProfileList")
            waiting, body = command_plist("CertificateList")
            assert (await api.put(f"/v1/enqueue/{B}?nopush=1&ttl=0", content=body)).status_code == 200
            assert (await a.acknowledge("NEVER-GIVEN-0")).status == 200
            errors = [{"StatusItem": "device.power.battery-health", "Reasons": [{"Code": "Error.NotSupported"}]}]
            assert (await ddm.report_status(ddm.status_report(errors=errors))).status == 200

            await _pass_after(server, timedelta(days=69))
            # Day 69: the same kinds again.
            mid_answered = await _answered(api, a, "ProfileList")
            assert (await a.acknowledge("NEVER-GIVEN-69")).status == 200
            assert (await ddm.report_status(ddm.status_report(errors=errors))).status == 200

            await _pass_after(server, timedelta(days=31))
            # Day 100: 90-day results and DDM history, 30-day stray reports.
            results = await _rows(server, "SELECT command_uuid FROM results ORDER BY received_at")
            assert results == [(mid_answered,)]
            bodies = {row[0] for row in await _rows(server, "SELECT uuid FROM commands")}
            assert old_answered not in bodies  # no queue row or result names it any more
            assert {waiting, mid_answered} <= bodies  # still queued for B / its result is recent
            assert await _rows(server, "SELECT command_uuid FROM stray_reports") == []
            assert len(await _rows(server, "SELECT 1 FROM ddm_status_reports")) == 1
            assert len(await _rows(server, "SELECT 1 FROM ddm_status_errors")) == 1
            # The waiting command still reaches B.
            assert (await b.idle()).command_uuid == waiting

            metrics = (await api.get("/metrics")).text
            for kind, least in (("results", 1), ("command_bodies", 1), ("stray_reports", 2),
                                ("ddm_status_history", 2)):
                assert _metric(metrics, f'mdm_retention_pruned_rows_total{{kind="{kind}"}}') >= least, kind
            assert _metric(metrics, "mdm_retention_last_pass_timestamp_seconds") > 0
            # Delivered webhook events never linger: the outbox deletes each at its receiver's 2xx.
            with trio.fail_after(10):
                while await _rows(server, "SELECT 1 FROM outbox"):
                    await trio.sleep(0.05)
            assert receiver.accepted


async def test_inventory_history_is_pruned_at_its_age(nursery, tmp_path):
    clock = OffsetClock()
    mdm = await start_mdm_server(nursery, tmp_path, clock=clock, retention={"inventory_history": "30d"})
    server = mdm.server
    if not await _rows(server, "SELECT 1 FROM sqlite_master WHERE name = 'inventory_history'"):
        pytest.skip("inventory history comes with live inventory (issue 10 part 2), not in this build")
    async with mdm.device(A) as a:
        await a.authenticate(OSVersion="17.0")
        await a.authenticate(OSVersion="17.1")
        assert len(await _rows(server, "SELECT 1 FROM inventory_history")) >= 1
        await _pass_after(server, timedelta(days=20))
        await a.authenticate(OSVersion="17.2")
        await _pass_after(server, timedelta(days=15))
        remaining = await _rows(server, "SELECT new_value FROM inventory_history WHERE fact = 'os_version'")
        assert remaining == [("17.2",)]


async def test_pruned_space_goes_back_to_the_disk_and_metrics_show_the_database(nursery, tmp_path):
    clock = OffsetClock()
    server = await start_server(nursery, make_config(tmp_path, retention={"results": "30d"}), clock)
    raw = os.urandom(20_000)

    def fill(conn) -> None:
        now = "2026-01-01T00:00:00.000000Z"  # long before the appliance's clock: due for pruning
        conn.executemany("INSERT INTO results (enrollment_id, command_uuid, status, raw, received_at) "
                         "VALUES ('SEEDED', ?, 'Acknowledged', ?, ?)", [(f"C{n}", raw, now) for n in range(1500)])

    await _first_pass(server)
    await server.runtime.store.write(fill)
    await _pass_after(server, timedelta(hours=2))
    async with server.api_client() as api:
        after = (await api.get("/metrics")).text
    assert _metric(after, 'mdm_database_rows{table="results"}') == 1  # the newest result always stays
    assert _metric(after, "mdm_retention_pruned_rows_total{kind=\"results\"}") == 1499
    size = _metric(after, "mdm_database_size_bytes")
    assert size == os.path.getsize(server.config.data_dir / "appliance.db")
    assert size < 5_000_000  # ~30 MB of results went, and so did their pages
    assert _metric(after, "mdm_database_released_bytes_total") > 25_000_000
    assert _metric(after, "mdm_database_free_bytes") < 1_000_000
    assert _metric(after, 'mdm_database_rows{table="schema_versions"}') >= 4
    # The pages went back after each deletion job (500 rows, ~2,500 pages here), never piled up into one
    # long free list (~7,500 pages), on which every vacuum step would be slow.
    assert 0 < server.runtime.retention.longest_free_list < 3_000


async def test_db_stats_reads_a_running_server_database_and_changes_nothing(nursery, tmp_path):
    config = make_config(tmp_path, port=free_port())
    server = await start_server(nursery, config)
    await server.runtime.store.write(lambda conn: conn.executemany(
        "INSERT INTO results (enrollment_id, command_uuid, status, raw, received_at) VALUES ('D', ?, 'Error', x'00', "
        "'2030-01-01T00:00:00.000000Z')", [(f"C{n}",) for n in range(7)]))
    code, out, err = await cli(config, "db", "stats")
    assert code == 0, err
    assert "auto-vacuum: incremental" in out
    assert re.search(r"^results\s+7$", out, re.M) and re.search(r"^schema_versions\s+\d+$", out, re.M)
    code, out, err = await cli(config, "db", "stats", "--json", "--sizes")
    figures = json.loads(out)
    assert code == 0 and figures["rows"]["results"] == 7 and figures["table_bytes"]["results"] > 0
    # The server kept going (answering and writing) meanwhile.
    async with server.api_client() as api:
        assert (await api.get("/healthz")).json()["checks"]["store"]["fault"] is None
    await server.runtime.store.write(lambda conn: conn.execute("DELETE FROM results"))

    # Without a database it says so and creates nothing.
    (tmp_path / "empty").mkdir()
    empty = make_config(tmp_path / "empty", port=free_port())
    code, out, err = await cli(empty, "db", "stats")
    assert code == 1 and err.startswith("error: no database at")
    assert not (tmp_path / "empty" / "state").exists()


async def test_db_stats_never_migrates_nor_writes_beside_a_stopped_database(tmp_path, monkeypatch):
    config = make_config(tmp_path)
    state = tmp_path / "state"
    # A database of the release before this schema component, as a stopped appliance leaves it.
    monkeypatch.setattr(schema, "COMPONENTS", [c for c in schema.COMPONENTS if not c.endswith("retention_schema")])
    _older_database(state / "appliance.db")
    monkeypatch.undo()
    before = sorted(path.name for path in state.iterdir())
    code, out, err = await cli(config, "db", "stats")
    assert code == 0, err
    assert sorted(path.name for path in state.iterdir()) == before == ["appliance.db"]
    conn = sqlite3.connect(str(state / "appliance.db"))
    try:
        assert "retention" not in {row[0] for row in conn.execute("SELECT component FROM schema_versions")}
        assert "expires_at" not in {row[1] for row in conn.execute("PRAGMA table_info(queue)")}
    finally:
        conn.close()


def _older_database(path, filler_bytes: int = 0) -> None:
    """A database as this appliance made it before incremental vacuum: every table, auto_vacuum none."""
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(str(path), isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    schema.migrate(conn)
    if filler_bytes:
        block = os.urandom(50_000)
        conn.execute("BEGIN")
        conn.executemany("INSERT INTO results (enrollment_id, command_uuid, status, raw, received_at) "
                         "VALUES ('OLD', ?, 'Acknowledged', ?, '2020-01-01T00:00:00.000000Z')",
                         [(f"C{n}", block) for n in range(filler_bytes // len(block))])
        conn.execute("COMMIT")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()


async def _auto_vacuum(config) -> str:
    code, out, err = await cli(config, "db", "stats", "--json")
    assert code == 0, err
    return json.loads(out)["auto_vacuum"]


async def test_a_small_older_database_gets_incremental_vacuum_at_start(tmp_path):
    config = make_config(tmp_path, port=free_port())
    _older_database(tmp_path / "state" / "appliance.db")
    assert await _auto_vacuum(config) == "none"
    async with trio.open_nursery() as nursery:
        server = await start_server(nursery, config)
        assert await _auto_vacuum(config) == "incremental"
        server.stop()


async def test_a_large_older_database_is_vacuumed_by_the_cli_only_while_the_appliance_is_stopped(tmp_path):
    config = make_config(tmp_path, port=free_port(), retention={"results": "30d"})
    db_path = tmp_path / "state" / "appliance.db"
    _older_database(db_path, filler_bytes=70 * 1024 * 1024)  # over the 64 MiB converted at start
    async with trio.open_nursery() as nursery:
        server = await start_server(nursery, config)
        await _first_pass(server)  # prunes the old results; without incremental vacuum the file keeps its size
        assert await _auto_vacuum(config) == "none"
        assert os.path.getsize(db_path) > 70_000_000
        code, out, err = await cli(config, "db", "vacuum")
        assert code == 1 and "in use" in err and "stop the appliance" in err
        server.stop()
    code, out, err = await cli(config, "db", "vacuum")
    assert code == 0, err
    assert "auto-vacuum none -> incremental" in out
    assert await _auto_vacuum(config) == "incremental" and os.path.getsize(db_path) < 5_000_000
