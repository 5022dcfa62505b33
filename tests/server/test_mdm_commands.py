"""The command endpoint: each status, the NotNow rules, duplicates, unknown and cross-device reports."""

from __future__ import annotations

import json
import plistlib
import threading

import httpx
import pytest
import trio

from tests.support.device_sim import mdm_signature
from tests.support.mdm_support import start_mdm_server


@pytest.fixture
async def mdm(nursery, tmp_path):
    handle = await start_mdm_server(nursery, tmp_path)
    yield handle
    handle.server.stop()


async def _results(mdm, enrollment_id="DEV-1"):
    return await mdm.rows(
        "SELECT command_uuid, status, raw, error_chain FROM results WHERE enrollment_id = ? ORDER BY received_at",
        enrollment_id)


async def _pending(mdm, enrollment_id="DEV-1"):
    return [r["command_uuid"] for r in await mdm.rows(
        "SELECT command_uuid FROM queue WHERE enrollment_id = ? ORDER BY id", enrollment_id)]


async def test_idle_with_empty_queue_ends_the_session(mdm):
    async with mdm.device("DEV-1") as device:
        await device.enroll()
        reply = await device.idle()
        assert (reply.status, reply.body, reply.headers.get("content-length")) == (200, b"", "0")
        assert "content-type" not in reply.headers


async def test_command_sent_byte_for_byte_then_acknowledged(mdm):
    async with mdm.device("DEV-1") as device:
        await device.enroll()
        body = await mdm.enqueue("CMD-1", ["DEV-1"], "InstallProfile", Payload=b"\x00profile")
        reply = await device.idle()
        assert reply.status == 200 and reply.body == body
        assert reply.content_type == "application/xml; charset=UTF-8"
        # Not acknowledged yet: offered again.
        assert (await device.idle()).command_uuid == "CMD-1"
        reply = await device.acknowledge("CMD-1", QueryResponses={"OSVersion": "14.4"})
        assert (reply.status, reply.body) == (200, b"")
    results = await _results(mdm)
    assert [(r["command_uuid"], r["status"]) for r in results] == [("CMD-1", "Acknowledged")]
    assert plistlib.loads(results[0]["raw"])["QueryResponses"] == {"OSVersion": "14.4"}
    assert await _pending(mdm) == []


async def test_fifo_and_each_final_status(mdm):
    async with mdm.device("DEV-1") as device:
        await device.enroll()
        for uuid in ("F-1", "F-2", "F-3"):
            await mdm.enqueue(uuid, ["DEV-1"])
        assert (await device.idle()).command_uuid == "F-1"
        assert (await device.acknowledge("F-1")).command_uuid == "F-2"
        chain = [{"ErrorCode": 4, "ErrorDomain": "MDMErrorDomain", "LocalizedDescription": "Nope"}]
        assert (await device.error("F-2", chain)).command_uuid == "F-3"
        assert (await device.command_format_error("F-3")).body == b""
    results = await _results(mdm)
    assert [(r["command_uuid"], r["status"]) for r in results] == \
        [("F-1", "Acknowledged"), ("F-2", "Error"), ("F-3", "CommandFormatError")]
    assert json.loads(results[1]["error_chain"])[0]["ErrorCode"] == 4


async def test_not_now_rules(mdm):
    async with mdm.device("DEV-1") as device:
        await device.enroll()
        for uuid in ("N-1", "N-2", "N-3"):
            await mdm.enqueue(uuid, ["DEV-1"])
        assert (await device.idle()).command_uuid == "N-1"
        # After a NotNow: only commands not NotNow'd since this session's Idle.
        assert (await device.not_now("N-1")).command_uuid == "N-2"
        # A final status puts NotNow'd commands back in play, so the session can end on a NotNow again.
        assert (await device.acknowledge("N-2")).command_uuid == "N-1"
        assert (await device.not_now("N-1")).command_uuid == "N-3"
        reply = await device.not_now("N-3")
        assert (reply.status, reply.body) == (200, b"")  # NotNow stays the device's last status
        assert await _pending(mdm) == ["N-1", "N-3"]
        # The device's next Idle starts a new session: N-1 is offered again.
        assert (await device.idle()).command_uuid == "N-1"
    rows = await mdm.rows("SELECT command_uuid, not_now_count FROM queue ORDER BY id")
    assert [(r["command_uuid"], r["not_now_count"]) for r in rows] == [("N-1", 2), ("N-3", 1)]
    assert [r["command_uuid"] for r in await _results(mdm)] == ["N-2"]


async def test_same_status_twice_is_stored_once(mdm):
    async with mdm.device("DEV-1") as device:
        await device.enroll()
        await mdm.enqueue("D-1", ["DEV-1"])
        await mdm.enqueue("D-2", ["DEV-1"])
        await device.idle()
        assert (await device.acknowledge("D-1", First=True)).command_uuid == "D-2"
        again = await device.acknowledge("D-1", First=False)
        assert again.status == 200 and again.command_uuid == "D-2"
    results = await _results(mdm)
    assert len(results) == 1 and plistlib.loads(results[0]["raw"])["First"] is True


async def _strays(mdm, enrollment_id="DEV-1"):
    return [(r["command_uuid"], r["status"]) for r in await mdm.rows(
        "SELECT command_uuid, status FROM stray_reports WHERE enrollment_id = ? ORDER BY id", enrollment_id)]


async def test_unknown_command_uuid_gets_200_and_next_command_and_is_stored_against_nothing(mdm):
    async with mdm.device("DEV-1") as device:
        await device.enroll()
        await mdm.enqueue("REAL-1", ["DEV-1"])
        reply = await device.acknowledge("NEVER-QUEUED")
        assert reply.status == 200 and reply.command_uuid == "REAL-1"
        assert (await device.acknowledge("NEVER-QUEUED")).status == 200  # sent twice, kept once
        assert (await device.not_now("NEVER-QUEUED-2")).command_uuid == "REAL-1"
    assert await _results(mdm) == []
    assert await _pending(mdm) == ["REAL-1"]
    assert await _strays(mdm) == [("NEVER-QUEUED", "Acknowledged"), ("NEVER-QUEUED-2", "NotNow")]


async def test_report_for_another_devices_command_changes_nothing_of_theirs(mdm):
    async with mdm.device("DEV-1") as one, mdm.device("DEV-2") as two:
        await one.enroll()
        await two.enroll()
        await mdm.enqueue("ONES-1", ["DEV-1"])
        reply = await two.acknowledge("ONES-1")
        assert (reply.status, reply.body) == (200, b"")
        assert await _results(mdm, "DEV-2") == []
        assert await _strays(mdm, "DEV-2") == [("ONES-1", "Acknowledged")]
        assert await _pending(mdm, "DEV-1") == ["ONES-1"]
        assert (await one.idle()).command_uuid == "ONES-1"


async def test_one_command_to_many_enrollments_shares_one_body(mdm):
    async with mdm.device("DEV-1") as one, mdm.device("DEV-2") as two:
        await one.enroll()
        await two.enroll()
        await two.user("U-2").token_update()
        body = await mdm.enqueue("MANY-1", ["DEV-1", "DEV-2", "DEV-2:U-2"])
        assert (await mdm.rows("SELECT count(*) AS n FROM commands"))[0]["n"] == 1
        assert (await one.idle()).body == body
        assert (await two.idle()).body == body
        assert (await two.user("U-2").idle()).body == body
        assert (await two.user("U-2").acknowledge("MANY-1")).body == b""
        assert await _pending(mdm, "DEV-2") == ["MANY-1"]  # the device channel's copy is its own


async def test_idle_and_reports_update_last_seen(mdm):
    async with mdm.device("DEV-1") as device:
        await device.enroll()
        before = (await mdm.rows("SELECT last_seen_at, idle_session FROM enrollments"))[0]
        await device.idle()
        after = (await mdm.rows("SELECT last_seen_at, last_idle_at, idle_session FROM enrollments"))[0]
        assert after["last_seen_at"] > before["last_seen_at"] and after["idle_session"] == before["idle_session"] + 1


async def test_reports_and_not_now_never_push(mdm):
    push = mdm.server.runtime.push
    assert push is not None
    requested: list = []
    original_request, original_now = push.request_push, push.push_now

    def spy_request(ids):
        requested.append(list(ids))
        return original_request(ids)

    async def spy_now(ids):
        requested.append(list(ids))
        return await original_now(ids)

    push.request_push, push.push_now = spy_request, spy_now
    try:
        async with mdm.device("DEV-1") as device:
            await device.enroll()
            await mdm.enqueue("P-1", ["DEV-1"])
            await mdm.enqueue("P-2", ["DEV-1"])
            assert (await device.idle()).command_uuid == "P-1"
            assert (await device.not_now("P-1")).command_uuid == "P-2"
            assert (await device.not_now("P-2")).body == b""
            assert (await device.idle()).command_uuid == "P-1"
            await device.acknowledge("P-1")
    finally:
        push.request_push, push.push_now = original_request, original_now
    assert requested == []


async def test_store_is_power_loss_safe_by_default(mdm):
    pragmas = await mdm.server.runtime.store.read(
        lambda conn: (conn.execute("PRAGMA synchronous").fetchone()[0], conn.execute("PRAGMA journal_mode").fetchone()[0]))
    assert pragmas == (2, "wal")  # synchronous=FULL


async def test_concurrent_device_requests_share_one_commit(mdm, nursery):
    """Group commit on the device path: reports that wait while the store thread is busy commit together,
    and each device is answered only after that commit."""
    store = mdm.server.runtime.store
    devices = [mdm.device(f"GC-{n}") for n in range(8)]
    release = threading.Event()
    try:
        for n, device in enumerate(devices):
            await device.enroll()
            await mdm.enqueue(f"GC-CMD-{n}", [device.udid])
        nursery.start_soon(store.read, lambda conn: release.wait(30))  # holds the store thread
        replies = {}

        async def report(device, n):
            replies[n] = await device.acknowledge(f"GC-CMD-{n}")

        commits, writes = store.commits, store.writes
        async with trio.open_nursery() as devices_nursery:
            for n, device in enumerate(devices):
                devices_nursery.start_soon(report, device, n)
            with trio.fail_after(20):
                while store._jobs.qsize() < len(devices):  # every report is waiting for the store
                    await trio.sleep(0.01)
            assert replies == {}  # nobody is answered before the commit
            release.set()
        assert all(reply.status == 200 for reply in replies.values()) and len(replies) == len(devices)
        # One commit for the eight (two if a background job's write slipped in between them).
        assert store.writes - writes >= len(devices) and store.commits - commits <= 2
        assert len(await mdm.rows("SELECT 1 FROM results WHERE command_uuid LIKE 'GC-CMD-%'")) == len(devices)
        async with mdm.server.api_client() as api:  # operators see the same figures
            metrics = (await api.get("/metrics")).text.splitlines()
        assert f"mdm_store_commits_total {float(store.commits)}" in metrics
        assert f"mdm_store_write_jobs_total {float(store.writes)}" in metrics
    finally:
        release.set()
        for device in devices:
            await device.aclose()


async def test_a_device_on_http2_is_served_the_same(mdm):
    async with mdm.device("H2-DEV") as device:
        await device.enroll()
        body = await mdm.enqueue("H2-CMD", ["H2-DEV"])
        idle = plistlib.dumps({"UDID": "H2-DEV", "Status": "Idle"})
        ack = plistlib.dumps({"UDID": "H2-DEV", "Status": "Acknowledged", "CommandUUID": "H2-CMD"})
        async with httpx.AsyncClient(http2=True, verify=mdm.server.ssl_context(), timeout=10) as client:
            replies = [await client.put(f"{mdm.server.base_url}/mdm/connect", content=payload,
                                        headers={"Mdm-Signature": mdm_signature(payload, device.cert, device.key)})
                       for payload in (idle, ack)]
        assert {reply.http_version for reply in replies} == {"HTTP/2"}
        assert (replies[0].status_code, replies[0].content) == (200, body)
        assert (replies[1].status_code, replies[1].content, replies[1].headers["content-length"]) == (200, b"", "0")
    assert [r["command_uuid"] for r in await _results(mdm, "H2-DEV")] == ["H2-CMD"]
