"""The admin API on the real server: auth, enqueue (NanoMDM's answer and codes), devices, commands,
queues, paging and errors. Fleets are seeded with plain SQL (tests/support/fleet_seed.py); commands are built
with plain plistlib; answers are checked as JSON."""

from __future__ import annotations

import base64
import http.client
import json
import plistlib
import re
import time
from pathlib import Path

import httpx
import pytest
import trio

from appliance.service import commands
from appliance.store import queue
from tests.support.apns_standin import Answer
from tests.support.fleet_seed import command_plist, seed_devices, udid
from tests.support.harness import API_KEY, make_config, start_server
from tests.support.push_support import start_apns_standin

RECORDED = json.loads((Path(__file__).resolve().parents[1] / "support" / "data" / "nanomdm_enqueue_answer.json").read_text())


async def seed(server, count: int, **options) -> list[str]:
    return await server.runtime.store.write(lambda conn: seed_devices(conn, count, **options))


def basic(user: str, key: str) -> dict:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{key}".encode()).decode()}


def assert_error(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert body["error"]["code"] == code
    assert body["error"]["message"]


# --- auth ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("headers, ok", [
    (basic("nanomdm", API_KEY), True),
    (basic("micromdm", API_KEY), True),
    (basic("", API_KEY), True),
    ({"Authorization": f"Bearer {API_KEY}"}, True),
    ({}, False),
    ({"Authorization": "Bearer wrong-key-0123456789"}, False),
    (basic("nanomdm", "wrong-key-0123456789"), False),
    ({"Authorization": "Basic !!!not-base64"}, False),
    ({"Authorization": f"Token {API_KEY}"}, False),
    ({"Authorization": "Basic " + base64.b64encode(API_KEY.encode()).decode()}, False),  # no colon
])
async def test_api_key_via_basic_any_user_or_bearer(server, headers, ok):
    async with server.client() as client:
        for path in ("/v1/devices", "/metrics"):
            response = await client.get(path, headers=headers)
            if ok:
                assert response.status_code == 200, (path, response.text)
            else:
                assert_error(response, 401, "unauthorized")


# --- enqueue: NanoMDM's raw form -------------------------------------------------------------------

def _shape_matches_recorded(answer: dict) -> None:
    """Every field we answer exists in NanoMDM's answer with the same JSON type."""
    for key, value in answer.items():
        assert key in RECORDED, key
        assert type(value) is type(RECORDED[key]), key
    allowed = {key for entry in RECORDED["status"].values() for key in entry}
    for entry in answer["status"].values():
        assert set(entry) <= allowed
        assert all(isinstance(value, str) for value in entry.values())


async def test_enqueue_raw_plist_answers_nanomdm_shape_and_codes(server):
    ids = await seed(server, 3)
    async with server.api_client() as api:
        # all known, but no push certificate imported in this test server: every id queued, and (as in
        # NanoMDM) every push failed, each saying why: 500
        uuid1, body = command_plist("ProfileList")
        response = await api.put(f"/v1/enqueue/{','.join(ids)}", content=body)
        assert response.status_code == 500, response.text
        answer = response.json()
        _shape_matches_recorded(answer)
        assert answer["command_uuid"] == uuid1 and answer["request_type"] == "ProfileList"
        assert set(answer["status"]) == set(ids)
        assert all(entry == {"push_error": "NoPushCertificate"} for entry in answer["status"].values())

        # some unknown: 207, the unknown ids carry command_error
        uuid2, body = command_plist()
        response = await api.put(f"/v1/enqueue/{ids[0]},NOPE-1,NOPE-2?nopush=1", content=body)
        assert response.status_code == 207
        status = response.json()["status"]
        assert status["NOPE-1"] == {"command_error": "unknown enrollment"}
        assert "command_error" not in status[ids[0]]

        # all unknown: 500 (NanoMDM's code), still a JSON answer with every id
        uuid3, body = command_plist()
        response = await api.put("/v1/enqueue/NOPE-3,NOPE-4?nopush=1", content=body)
        assert response.status_code == 500
        answer = response.json()
        _shape_matches_recorded(answer)
        assert answer["no_push"] is True and set(answer["status"]) == {"NOPE-3", "NOPE-4"}

        # nopush: every id still has its entry (NanoMDM gives none)
        uuid4, body = command_plist()
        response = await api.put(f"/v1/enqueue/{ids[1]},NOPE-5?nopush=1", content=body)
        assert response.status_code == 207
        assert response.json()["status"] == {ids[1]: {}, "NOPE-5": {"command_error": "unknown enrollment"}}

    pending = await server.runtime.store.read(queue.pending, ids[0])
    assert [row["command_uuid"] for row in pending] == [uuid1, uuid2]


async def test_enqueue_rejects_reused_uuid_and_bad_bodies_without_changing_anything(server):
    ids = await seed(server, 1)
    async with server.api_client() as api:
        command_uuid, body = command_plist()
        assert (await api.put(f"/v1/enqueue/{ids[0]}?nopush=1", content=body)).status_code == 200
        again = await api.put(f"/v1/enqueue/{ids[0]}", content=body)
        assert_error(again, 409, "command_exists")
        assert command_uuid in again.json()["error"]["message"]

        bad_bodies = [
            b"",
            b"not a plist at all",
            b'{"CommandUUID": "x"}',
            plistlib.dumps(["an", "array"]),
            plistlib.dumps({"Command": {"RequestType": "ProfileList"}}),
            plistlib.dumps({"CommandUUID": "u-1", "Command": {}}),
            plistlib.dumps({"CommandUUID": "u-2", "Command": {"RequestType": 7}}),
            plistlib.dumps({"CommandUUID": "u-3", "Command": "ProfileList"}),
            plistlib.dumps({"CommandUUID": "", "Command": {"RequestType": "ProfileList"}}),
            b"<?xml version='1.0'?><!DOCTYPE x [<!ENTITY a 'b'>]><plist><dict/></plist>",
        ]
        for bad in bad_bodies:
            assert_error(await api.put(f"/v1/enqueue/{ids[0]}", content=bad), 400, "bad_command")
        _, body = command_plist()
        assert_error(await api.put("/v1/enqueue/,%20,", content=body), 400, "bad_command")
        trailing = await api.put(f"/v1/enqueue/{ids[0]},?nopush=1", content=body)  # scripts' trailing comma
        assert trailing.status_code == 200 and list(trailing.json()["status"]) == [ids[0]]
    pending = await server.runtime.store.read(queue.pending, ids[0])
    assert [row["command_uuid"] for row in pending][0] == command_uuid and len(pending) == 2


async def test_enqueue_to_ten_thousand_ids_in_one_call(server):
    ids = await seed(server, 10_000)
    command_uuid, body = command_plist("DeviceInformation", Queries=["OSVersion"])
    path = "/v1/enqueue/" + ",".join(ids)
    assert len(path) > 64 * 1024
    # httpx refuses URLs over 64 KiB; integrators' scripts (curl, Go) do not: plain http.client here.
    def put() -> tuple[int, bytes, float]:
        connection = http.client.HTTPSConnection("127.0.0.1", server.port, context=server.ssl_context(), timeout=60)
        try:
            started = time.perf_counter()
            connection.request("PUT", path, body=body, headers={"Authorization": f"Bearer {API_KEY}"})
            response = connection.getresponse()
            data = response.read()
            return response.status, data, time.perf_counter() - started
        finally:
            connection.close()

    status, data, elapsed = await trio.to_thread.run_sync(put)
    assert status == 200, data[:300]
    answer = json.loads(data)
    assert len(answer["status"]) == 10_000
    # more ids than the answer waits for: every push handed to the scheduler, none awaited
    assert all(entry == {"push_result": "scheduled"} for entry in answer["status"].values())
    print(f"\nenqueue to 10,000 ids: {elapsed * 1000:.0f} ms for the whole request ({len(path)} byte path)")
    depth = await server.runtime.store.read(
        lambda conn: conn.execute("SELECT count(*) FROM queue WHERE command_uuid = ?", (command_uuid,)).fetchone()[0])
    assert depth == 10_000


@pytest.fixture
async def with_apns(nursery, tmp_path):
    """The real server pushing to a local APNs stand-in (real HTTP/2 + TLS), a push certificate imported."""
    apns = await start_apns_standin(nursery, tmp_path)
    server = await start_server(nursery, make_config(tmp_path, apns=apns.apns))
    await apns.import_push_cert(server)
    yield server, apns.standin
    server.stop()


async def test_enqueue_answers_each_push_like_nanomdm_and_schedules_big_or_slow_ones(with_apns, monkeypatch):
    server, standin = with_apns
    ids = await seed(server, 3)
    bad_token = "ee" * 32
    await server.runtime.store.write(lambda conn: conn.execute(
        "UPDATE enrollments SET token = ? WHERE id = ?", (bytes.fromhex(bad_token), ids[2])))
    standin.answers[bad_token] = Answer(400, "BadDeviceToken")
    async with server.api_client() as api:
        # APNs answered within the request: the APNs id per id, or its error (NanoMDM's answer), 207
        _, body = command_plist()
        response = await api.put(f"/v1/enqueue/{','.join(ids)},NOPE", content=body)
        assert response.status_code == 207, response.text
        status = response.json()["status"]
        apns_ids = {status[eid]["push_result"] for eid in ids[:2]}
        assert all(re.fullmatch(r"[0-9A-F-]{36}", apns_id) for apns_id in apns_ids) and len(apns_ids) == 2
        assert status[ids[2]] == {"push_error": "400 BadDeviceToken"}
        assert status["NOPE"] == {"command_error": "unknown enrollment"}
        assert len(standin.requests) == 3

        # more ids than are answered inline: "scheduled" at once, and the pushes still happen
        monkeypatch.setattr(commands, "PUSH_ANSWER_MAX_IDS", 1)
        _, body = command_plist()
        response = await api.put(f"/v1/enqueue/{ids[0]},{ids[1]}", content=body)
        assert response.status_code == 200
        assert response.json()["status"] == {eid: {"push_result": "scheduled"} for eid in ids[:2]}
        with trio.fail_after(10):
            while len(standin.requests) < 5:
                await trio.sleep(0.02)

        # APNs slower than the deadline: "scheduled"; the pushes finish afterwards and are recorded
        monkeypatch.setattr(commands, "PUSH_ANSWER_MAX_IDS", 1000)
        monkeypatch.setattr(commands, "PUSH_ANSWER_SECONDS", 0.2)
        standin.hold = trio.Event()
        _, body = command_plist()
        started = trio.current_time()
        response = await api.post("/v1/commands", json={"enrollment_ids": [ids[0]],
                                                        "command": {"RequestType": "ProfileList"}})
        assert response.status_code == 200 and trio.current_time() - started < 5
        assert response.json()["status"] == {ids[0]: {"push_result": "scheduled"}}
        await server.runtime.store.write(lambda conn: conn.execute(
            "UPDATE enrollments SET last_push_result = NULL WHERE id = ?", (ids[0],)))
        standin.hold.set()

    def last_result(conn):
        return conn.execute("SELECT last_push_result FROM enrollments WHERE id = ?", (ids[0],)).fetchone()[0]

    with trio.fail_after(10):
        while await server.runtime.store.read(last_result) != "ok":
            await trio.sleep(0.02)


# --- enqueue: JSON form ----------------------------------------------------------------------------

async def test_post_commands_builds_the_plist_with_data_marker_and_new_uuid(server):
    ids = await seed(server, 2)
    profile = b"<?xml version='1.0'?><plist version='1.0'><dict/></plist>\x00\xff"
    async with server.api_client() as api:
        response = await api.post("/v1/commands", json={
            "enrollment_ids": ids + [ids[0]],
            "command": {"RequestType": "InstallProfile", "Payload": {"$data": base64.b64encode(profile).decode()},
                        "Nested": [{"When": {"$date": "2026-05-01T12:00:00Z"}, "N": 3, "On": True}]},
            "no_push": True,
        })
        assert response.status_code == 200, response.text
        answer = response.json()
        _shape_matches_recorded(answer)
        assert set(answer["status"]) == set(ids) and answer["request_type"] == "InstallProfile"
        command_uuid = answer["command_uuid"]
        assert len(command_uuid) == 36

        stored = await server.runtime.store.read(
            lambda conn: conn.execute("SELECT body FROM commands WHERE uuid = ?", (command_uuid,)).fetchone()[0])
        document = plistlib.loads(stored)
        assert document["CommandUUID"] == command_uuid
        assert document["Command"]["Payload"] == profile
        assert document["Command"]["Nested"][0]["When"].isoformat() == "2026-05-01T12:00:00"
        assert document["Command"]["Nested"][0]["N"] == 3

        # the command reads back as JSON with the same markers
        detail = (await api.get(f"/v1/commands/{command_uuid}")).json()
        assert detail["command"]["Command"]["Payload"] == {"$data": base64.b64encode(profile).decode()}

        bad = [
            {"enrollment_ids": ids},
            {"enrollment_ids": [], "command": {"RequestType": "ProfileList"}},
            {"enrollment_ids": ids[0], "command": {"RequestType": "ProfileList"}},
            {"enrollment_ids": ids, "command": {"NoType": 1}},
            {"enrollment_ids": ids, "command": {"RequestType": "X", "Payload": {"$data": "***"}}},
            {"enrollment_ids": ids, "command": {"RequestType": "X", "Payload": {"$data": "AA==", "x": 1}}},
            {"enrollment_ids": ids, "command": {"RequestType": "X", "Key": None}},
            {"enrollment_ids": ids, "command": {"RequestType": "X"}, "extra": 1},
            {"enrollment_ids": ids, "command": {"RequestType": "X"}, "no_push": "yes"},
        ]
        deep: list = []
        for _ in range(500):
            deep = [deep]
        bad += [
            {"enrollment_ids": ids, "command": {"RequestType": "X", "Deep": deep}},
            {"enrollment_ids": ids, "command": {"RequestType": "X", "When": {"$date": "0001-01-01T00:00:00+14:00"}}},
            {"enrollment_ids": ids, "command": {"RequestType": "X"}, "command_uuid": ""},
        ]
        for document in bad:
            response = await api.post("/v1/commands", json=document)
            assert response.status_code == 400, (document, response.text)
        assert_error(await api.post("/v1/commands", content=b"{not json"), 400, "bad_json")
        assert_error(await api.post("/v1/commands", content=b"[" * 100_000 + b"]" * 100_000), 400, "bad_json")
        assert_error(await api.post("/v1/commands", json=[1, 2]), 400, "bad_json")
        reused = await api.post("/v1/commands", json={"enrollment_ids": ids, "command_uuid": command_uuid,
                                                       "command": {"RequestType": "ProfileList"}})
        assert_error(reused, 409, "command_exists")


async def test_a_command_too_nested_for_json_reads_back_as_its_raw_bytes(server):
    """A raw plist may nest deeper than the JSON mapping goes (plistlib's XML reader does not recurse):
    it is queued as sent, and the API shows it as {"$data": base64} rather than failing with a 500."""
    ids = await seed(server, 1)
    inner = "<array>" * 2000 + "</array>" * 2000
    command_uuid = "DEEP-COMMAND-1"
    body = (f"<?xml version='1.0'?><plist version='1.0'><dict><key>CommandUUID</key><string>{command_uuid}"
            f"</string><key>Command</key><dict><key>RequestType</key><string>Settings</string>"
            f"<key>Deep</key>{inner}</dict></dict></plist>").encode()
    async with server.api_client() as api:
        assert (await api.put(f"/v1/enqueue/{ids[0]}?nopush=1", content=body)).status_code == 200
        detail = await api.get(f"/v1/commands/{command_uuid}")
        assert detail.status_code == 200, detail.text
        assert base64.b64decode(detail.json()["command"]["$data"]) == body


# --- devices ---------------------------------------------------------------------------------------

async def test_devices_list_pages_and_filters(server):
    ids = await seed(server, 7, users=True)
    await seed(server, 2, start=100, active=False, token=False)
    async with server.api_client() as api:
        seen, cursor, pages = [], None, 0
        while True:
            params = {"limit": 3} | ({"cursor": cursor} if cursor else {})
            page = (await api.get("/v1/devices", params=params)).json()
            seen += [device["id"] for device in page["devices"]]
            pages += 1
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert pages == 3 and seen == sorted(ids + [udid(100), udid(101)])

        active = (await api.get("/v1/devices", params={"active": "true"})).json()["devices"]
        assert [d["id"] for d in active] == ids
        inactive = (await api.get("/v1/devices", params={"active": "false"})).json()["devices"]
        assert [d["id"] for d in inactive] == [udid(100), udid(101)]
        assert inactive[0]["enrolled"] is False and active[0]["enrolled"] is True
        by_serial = (await api.get("/v1/devices", params={"serial": "SER000003"})).json()["devices"]
        assert [d["id"] for d in by_serial] == [ids[3]]
        by_udid = (await api.get("/v1/devices", params={"udid": ids[5]})).json()["devices"]
        assert by_udid[0]["serial_number"] == "SER000005" and by_udid[0]["os_version"] == "15.1"
        assert by_udid[0]["model"] == "Mac14,2" and by_udid[0]["pending_commands"] == 0

        for params, code in [({"limit": 0}, "bad_parameter"), ({"limit": "x"}, "bad_parameter"),
                             ({"limit": 1001}, "bad_parameter"), ({"active": "maybe"}, "bad_parameter"),
                             ({"cursor": "%%%"}, "bad_cursor"), ({"cursor": "WzFd"}, "bad_cursor")]:
            assert_error(await api.get("/v1/devices", params=params), 400, code)


async def test_device_detail_with_user_channels_and_pending_counts(server):
    ids = await seed(server, 2, users=True)
    user_channel = f"{ids[0]}:USER-0"
    async with server.api_client() as api:
        _, body = command_plist()
        await api.put(f"/v1/enqueue/{ids[0]},{user_channel}?nopush=1", content=body)
        detail = (await api.get(f"/v1/devices/{ids[0]}")).json()
        assert detail["id"] == ids[0] and detail["pending_commands"] == 2
        assert [e["id"] for e in detail["enrollments"]] == [ids[0], user_channel]
        assert detail["enrollments"][1]["type"] == "User" and detail["enrollments"][1]["user_id"] == "USER-0"
        assert detail["enrollments"][1]["pending_commands"] == 1
        assert "token" not in detail["enrollments"][0] and detail["enrollments"][0]["token_present"] is True
        assert_error(await api.get("/v1/devices/NO-SUCH-DEVICE"), 404, "device_not_found")


async def _report(server, enrollment_id: str, command_uuid: str, status: str, **keys) -> None:
    raw = plistlib.dumps({"UDID": enrollment_id.split(":")[0], "CommandUUID": command_uuid, "Status": status, **keys})
    await server.runtime.store.write(queue.next_command, enrollment_id)
    outcome = await server.runtime.store.write(queue.store_report, enrollment_id, command_uuid, status, raw,
                                               keys.get("ErrorChain"))
    assert outcome == "stored"


async def test_device_commands_newest_first_paged_with_results(server):
    ids = await seed(server, 1, users=True)
    device, user_channel = ids[0], f"{ids[0]}:USER-0"
    uuids = []
    async with server.api_client() as api:
        for n in range(5):
            command_uuid, body = command_plist("ProfileList" if n % 2 else "DeviceInformation")
            target = user_channel if n == 4 else device
            assert (await api.put(f"/v1/enqueue/{target}?nopush=1", content=body)).status_code == 200
            uuids.append(command_uuid)
        await _report(server, device, uuids[0], "Acknowledged", ProfileList=[])
        await _report(server, device, uuids[1], "Error", ErrorChain=[{"ErrorCode": 12, "ErrorDomain": "X",
                                                                      "LocalizedDescription": "nope"}])

        rows, cursor = [], None
        while True:
            params = {"limit": 2} | ({"cursor": cursor} if cursor else {})
            page = (await api.get(f"/v1/devices/{device}/commands", params=params)).json()
            rows += page["commands"]
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert [row["command_uuid"] for row in rows] == list(reversed(uuids))
        by_uuid = {row["command_uuid"]: row for row in rows}
        assert by_uuid[uuids[0]]["status"] == "Acknowledged" and by_uuid[uuids[0]]["pending"] is False
        assert by_uuid[uuids[1]]["error_chain"][0]["ErrorCode"] == 12
        assert by_uuid[uuids[2]]["status"] == "pending" and by_uuid[uuids[2]]["pending"] is True
        assert by_uuid[uuids[4]]["enrollment_id"] == user_channel

        only_user = (await api.get(f"/v1/devices/{user_channel}/commands")).json()["commands"]
        assert [row["command_uuid"] for row in only_user] == [uuids[4]]
        assert_error(await api.get("/v1/devices/NOPE/commands"), 404, "device_not_found")
        assert_error(await api.get(f"/v1/devices/{device}/commands", params={"cursor": "WzFd"}), 400, "bad_cursor")


async def test_command_status_json_and_raw_plist(server):
    ids = await seed(server, 3)
    async with server.api_client() as api:
        command_uuid, body = command_plist("DeviceInformation", Queries=["SerialNumber"])
        await api.put(f"/v1/enqueue/{','.join(ids)}?nopush=1", content=body)
        await _report(server, ids[1], command_uuid, "Acknowledged",
                      QueryResponses={"SerialNumber": "SER000001"}, Blob=b"\x01\x02")

        detail = (await api.get(f"/v1/commands/{command_uuid}")).json()
        assert detail["request_type"] == "DeviceInformation"
        assert detail["counts"] == {"pending": 2, "Acknowledged": 1}
        by_id = {entry["enrollment_id"]: entry for entry in detail["enrollments"]}
        assert by_id[ids[0]]["status"] == "pending" and by_id[ids[0]]["result"] is None
        done = by_id[ids[1]]
        assert done["status"] == "Acknowledged" and done["received_at"] and done["queued_at"]
        assert done["result"]["QueryResponses"] == {"SerialNumber": "SER000001"}
        assert done["result"]["Blob"] == {"$data": "AQI="}

        paged = (await api.get(f"/v1/commands/{command_uuid}", params={"limit": 2})).json()
        assert len(paged["enrollments"]) == 2 and paged["next_cursor"]
        rest = (await api.get(f"/v1/commands/{command_uuid}", params={"cursor": paged["next_cursor"]})).json()
        assert [e["enrollment_id"] for e in paged["enrollments"] + rest["enrollments"]] == sorted(ids)

        raw = await api.get(f"/v1/commands/{command_uuid}", params={"format": "plist", "enrollment_id": ids[1]})
        assert raw.status_code == 200
        assert plistlib.loads(raw.content)["QueryResponses"]["SerialNumber"] == "SER000001"
        assert_error(await api.get(f"/v1/commands/{command_uuid}", params={"format": "plist"}),
                     400, "enrollment_required")
        assert_error(await api.get(f"/v1/commands/{command_uuid}", params={"format": "plist", "enrollment_id": ids[0]}),
                     404, "result_not_found")
        assert_error(await api.get(f"/v1/commands/{command_uuid}", params={"format": "yaml"}), 400, "bad_parameter")
        assert_error(await api.get("/v1/commands/no-such-uuid"), 404, "command_not_found")


async def test_clear_queue_and_cancel_command(server):
    ids = await seed(server, 2)
    async with server.api_client() as api:
        first, body1 = command_plist()
        second, body2 = command_plist()
        await api.put(f"/v1/enqueue/{','.join(ids)}?nopush=1", content=body1)
        await api.put(f"/v1/enqueue/{','.join(ids)}?nopush=1", content=body2)

        cleared = await api.delete(f"/v1/devices/{ids[0]}/queue")
        assert cleared.status_code == 200 and cleared.json() == {"enrollment_id": ids[0], "cleared": 2}
        assert (await api.delete(f"/v1/devices/{ids[0]}/queue")).json()["cleared"] == 0
        assert_error(await api.delete("/v1/devices/NOPE/queue"), 404, "enrollment_not_found")

        cancelled = await api.delete(f"/v1/commands/{first}")
        assert cancelled.status_code == 200 and cancelled.json() == {"command_uuid": first, "cancelled": 1}
        assert_error(await api.delete("/v1/commands/NOPE"), 404, "command_not_found")
    assert [row["command_uuid"] for row in await server.runtime.store.read(queue.pending, ids[1])] == [second]
    assert await server.runtime.store.read(queue.pending, ids[0]) == []


# --- a separate API listener ---------------------------------------------------------------------

async def test_separate_api_listener_splits_roles(nursery, tmp_path):
    config = make_config(tmp_path, api={"key": API_KEY, "listen": "127.0.0.1:0"})
    server = await start_server(nursery, config)
    try:
        assert server.api_url != server.base_url
        headers = {"Authorization": f"Bearer {API_KEY}"}
        async with httpx.AsyncClient(verify=server.ssl_context(), timeout=30, headers=headers) as client:
            on_api = await client.get(server.api_url + "/v1/devices")
            on_device = await client.get(server.base_url + "/v1/devices")
            metrics_on_both = [await client.get(url + "/metrics") for url in (server.api_url, server.base_url)]
        assert on_api.status_code == 200 and on_device.status_code == 404
        assert all(response.status_code == 200 for response in metrics_on_both)
    finally:
        server.stop()


# --- metrics ---------------------------------------------------------------------------------------

async def test_metrics_are_read_from_the_database_at_scrape_time(server):
    ids = await seed(server, 4, users=True)
    await seed(server, 2, start=50, active=False, token=False)
    async with server.api_client() as api:
        _, body = command_plist()
        await api.put(f"/v1/enqueue/{ids[0]},{ids[1]}?nopush=1", content=body)
        first = (await api.get("/metrics")).text
        await api.delete(f"/v1/devices/{ids[0]}/queue")
        command_uuid = (await server.runtime.store.read(queue.pending, ids[1]))[0]["command_uuid"]
        await _report(server, ids[1], command_uuid, "Error")
        second = (await api.get("/metrics")).text
        third = (await api.get("/metrics")).text  # results are counted once, not again at every scrape
    assert "text/plain" in (await _content_type(server))
    assert 'mdm_devices{state="known"} 6.0' in first
    assert 'mdm_devices{state="enrolled"} 4.0' in first
    assert 'mdm_devices{state="active"} 4.0' in first
    assert "mdm_queue_depth 2.0" in first and "mdm_queue_depth 0.0" in second
    assert 'mdm_command_results_total{status="Error"} 0.0' in first
    assert 'mdm_command_results_total{status="Error"} 1.0' in second
    assert 'mdm_command_results_total{status="Error"} 1.0' in third
    oldest = float(re.search(r"^mdm_queue_oldest_pending_seconds (\S+)$", first, re.M).group(1))
    assert 0 < oldest < 60
    assert 'mdm_command_results_total{status="Acknowledged"} 0.0' in first
    assert "mdm_webhook_outbox_depth 0.0" in first
    assert re.search(r'^mdm_http_requests_total\{endpoint="/v1/enqueue/<ids>",status="200"\} 1\.0$', first, re.M)
    assert 'mdm_http_request_duration_seconds_bucket{endpoint="/v1/enqueue/<ids>"' in first


async def test_metrics_count_every_stored_result_once_across_steps(server, monkeypatch):
    """The first scrape after a start counts the results already stored, a step of rowids per store job
    (appliance.web.metrics.RESULTS_STEP, 3 here): none missed at a step's edge, none counted twice."""
    from appliance.web import metrics as metrics_route

    monkeypatch.setattr(metrics_route, "RESULTS_STEP", 3)
    ids = await seed(server, 1)

    def store(conn, statuses: list[str], first: int) -> None:
        conn.executemany(
            "INSERT INTO results (enrollment_id, command_uuid, status, raw, received_at) VALUES (?, ?, ?, ?, ?)",
            [(ids[0], f"CMD-{first + n}", status, b"<plist/>", "2026-01-01T00:00:00.000000Z")
             for n, status in enumerate(statuses)])

    await server.runtime.store.write(store, ["Acknowledged"] * 7 + ["Error"] * 3 + ["CommandFormatError"], 0)
    async with server.api_client() as api:
        first = (await api.get("/metrics")).text
        await server.runtime.store.write(store, ["Error", "Acknowledged"], 11)
        second = (await api.get("/metrics")).text
    assert _metric_value(first, 'mdm_command_results_total{status="Acknowledged"}') == 7
    assert _metric_value(first, 'mdm_command_results_total{status="Error"}') == 3
    assert _metric_value(first, 'mdm_command_results_total{status="CommandFormatError"}') == 1
    assert _metric_value(second, 'mdm_command_results_total{status="Acknowledged"}') == 8
    assert _metric_value(second, 'mdm_command_results_total{status="Error"}') == 4


def _metric_value(text: str, name: str) -> float:
    (value,) = [line.split()[-1] for line in text.splitlines() if line.startswith(name + " ")]
    return float(value)


async def _content_type(server) -> str:
    async with server.api_client() as api:
        return (await api.get("/metrics")).headers["content-type"]


# Every figure issue 6 names for /metrics, by the name a dashboard scrapes it under.
ISSUE_METRICS = {
    "requests by endpoint and status": r'mdm_http_requests_total\{endpoint="/v1/devices",status="200"\} 1\.0',
    "request duration histograms": r'mdm_http_request_duration_seconds_bucket\{endpoint="/v1/devices",le="0\.1"\} 1\.0',
    "enrolled devices": r'mdm_devices\{state="enrolled"\} 3\.0',
    "active devices": r'mdm_devices\{state="active"\} 3\.0',
    "queue depth": r"mdm_queue_depth 1\.0",
    "oldest pending command age": r"mdm_queue_oldest_pending_seconds (?!0\.0$)\d",
    "commands by final status": r'mdm_command_results_total\{status="Acknowledged"\} 0\.0',
    "pushes by result": r'mdm_pushes_total\{result="(ok|unregistered|rejected|throttled|failed)"\} 0\.0',
    "push certificate days left": r"mdm_push_certificate_days_left NaN",  # none imported yet
    "webhook outbox depth": r"mdm_webhook_outbox_depth 0\.0",
    "webhook oldest undelivered age": r"mdm_webhook_outbox_oldest_seconds 0\.0",
    "SCEP issuances": r'mdm_scep_certificates_issued_total\{message_type="PKCS_REQ"\} 0\.0',
}


async def test_metrics_scrape_has_every_figure_the_issue_names(server):
    ids = await seed(server, 3)
    async with server.api_client() as api:
        _, body = command_plist()
        assert (await api.put(f"/v1/enqueue/{ids[0]}?nopush=1", content=body)).status_code == 200
        assert (await api.get("/v1/devices")).status_code == 200
        await trio.sleep(0.01)  # the queued command has an age
        text = (await api.get("/metrics")).text
    missing = [what for what, pattern in ISSUE_METRICS.items() if not re.search(f"^{pattern}", text, re.M)]
    assert missing == [], missing
