"""kill -9 in the middle of a busy queue, restart: every report that was answered 200 is stored, every
command is either stored as a result or still queued (never both, never neither), and the devices finish
their queues against the restarted server with each result stored exactly once."""

from __future__ import annotations

import signal

import h11
import trio

from appliance.config import load_config
from appliance.store import queue
from appliance.store.db import connect_sync
from tests.support.device_sim import DeviceSim, TestCA, client_context
from tests.support.harness import free_port, make_config
from tests.support.mdm_support import ServerProcess, command_body

DEVICES = 4
COMMANDS = 100


async def _drain(device: DeviceSim, answered: set[str]) -> None:
    """Idle, then acknowledge every command offered; remember each Acknowledged answered 200."""
    reply = await device.idle()
    while reply.command_uuid is not None:
        uuid = reply.command_uuid
        reply = await device.acknowledge(uuid, Echo=uuid)
        assert reply.status == 200, reply.text
        answered.add(uuid)


async def test_kill_9_during_a_busy_queue_loses_nothing(tmp_path):
    ca = TestCA(directory=tmp_path)
    port = free_port()
    config_path = make_config(tmp_path, port=port, identity={"trusted_ca_files": [str(ca.pem_path)]},
                              logging={"level": "info"})
    config = load_config(config_path)
    server = ServerProcess(config_path, port, tmp_path / "server.log")
    await server.start()
    devices = []
    try:
        for n in range(DEVICES):
            cert, key = ca.issue(f"CRASH-{n}")
            device = DeviceSim(server.base_url, _context(config), cert, key, f"CRASH-{n}")
            await device.enroll()
            devices.append(device)
        expected: dict[str, set[str]] = {}
        conn = connect_sync(config.data_dir / "appliance.db")
        try:
            conn.execute("BEGIN IMMEDIATE")
            for device in devices:
                uuids = {f"{device.udid}-CMD-{i:04d}" for i in range(COMMANDS)}
                for uuid in sorted(uuids):
                    queue.enqueue(conn, uuid, "DeviceInformation", command_body(uuid), [device.udid])
                expected[device.udid] = uuids
            conn.execute("COMMIT")
        finally:
            conn.close()

        answered: dict[str, set[str]] = {device.udid: set() for device in devices}
        async with trio.open_nursery() as nursery:
            for device in devices:
                nursery.start_soon(_drain_until_killed, device, answered[device.udid])
            # Let them get well into their queues, then pull the plug mid-stream.
            with trio.fail_after(120):  # a device that stopped early must fail the test, not hang it
                while sum(len(a) for a in answered.values()) < DEVICES * COMMANDS // 3:
                    await trio.sleep(0.01)
            assert server.kill(signal.SIGKILL) == -signal.SIGKILL
        in_flight_total = DEVICES * COMMANDS - sum(len(a) for a in answered.values())
        assert in_flight_total > 0, "the kill came too late to test anything"

        conn = connect_sync(config.data_dir / "appliance.db")
        try:
            for device in devices:
                stored = {r[0] for r in conn.execute(
                    "SELECT command_uuid FROM results WHERE enrollment_id = ?", (device.udid,))}
                pending = {r[0] for r in conn.execute(
                    "SELECT command_uuid FROM queue WHERE enrollment_id = ?", (device.udid,))}
                assert answered[device.udid] <= stored, "a report answered 200 was lost"
                assert not stored & pending, "a command is both done and still queued"
                assert stored | pending == expected[device.udid], "a command vanished"
        finally:
            conn.close()

        await server.start()
        for device in devices:
            await device.aclose()  # the old connections died with the server
        async with trio.open_nursery() as nursery:
            for device in devices:
                nursery.start_soon(_drain, device, answered[device.udid])
        conn = connect_sync(config.data_dir / "appliance.db")
        try:
            assert conn.execute("SELECT count(*) FROM queue").fetchone()[0] == 0
            rows = conn.execute("SELECT enrollment_id, command_uuid, status, raw FROM results").fetchall()
            assert len(rows) == DEVICES * COMMANDS
            assert {r["status"] for r in rows} == {"Acknowledged"}
            for row in rows:
                assert row["command_uuid"].startswith(row["enrollment_id"] + "-CMD-")
                assert f"<string>{row['command_uuid']}</string>".encode() in row["raw"]  # its own report
        finally:
            conn.close()
    finally:
        for device in devices:
            await device.aclose()
        server.stop()


async def _drain_until_killed(device: DeviceSim, answered: set[str]) -> None:
    try:
        await _drain(device, answered)
    except (OSError, trio.BrokenResourceError, trio.ClosedResourceError, h11.RemoteProtocolError):
        pass  # the server died under us: the report in flight got no answer (a device resends it)


def _context(config):
    return client_context(config.data_dir / "ca.crt")
