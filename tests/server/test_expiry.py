"""Command expiry against the real server with simulated devices and a clock the test moves: a command
past its expiry is never sent, is Expired in the history with a webhook event and a metric; ?ttl= per
command; a device's late answer still counts; devices that keep answering NotNow are listed."""

from __future__ import annotations

import json
import re
from datetime import timedelta

import trio

from appliance.clock import OffsetClock
from appliance.store.timefmt import from_text
from tests.server.test_cli_admin import cli
from tests.support.fleet_seed import command_plist
from tests.support.harness import free_port
from tests.support.mdm_support import start_mdm_server
from tests.support.webhook_receiver import Receiver, Running

UDID = "EXPIRY-DEVICE-1"


async def _status(api, command_uuid: str, enrollment_id: str = UDID) -> str:
    answer = (await api.get(f"/v1/commands/{command_uuid}", params={"enrollment_id": enrollment_id})).json()
    return answer["enrollments"][0]["status"]


async def _until_status(api, command_uuid: str, status: str, timeout: float = 10) -> dict:
    with trio.fail_after(timeout):
        while True:
            answer = (await api.get(f"/v1/commands/{command_uuid}")).json()
            if [row["status"] for row in answer["enrollments"]] == [status]:
                return answer
            await trio.sleep(0.02)


def _metric(text: str, name: str) -> float:
    match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
    assert match, f"{name} not in /metrics"
    return float(match.group(1))


async def test_a_command_past_its_ttl_is_never_sent_and_is_expired_with_an_event_and_a_metric(nursery, tmp_path):
    clock = OffsetClock()
    receiver = Receiver(port=free_port())
    async with Running(receiver):
        mdm = await start_mdm_server(nursery, tmp_path, clock=clock, queue={"command_ttl": "30d"}, webhook={
            "url": f"http://127.0.0.1:{receiver.port}/events", "retry_initial": 0.05})
        async with mdm.device(UDID) as device, mdm.server.api_client() as api:
            await device.enroll()
            uuid, body = command_plist("DeviceLock")
            answer = await api.put(f"/v1/enqueue/{UDID}?nopush=1", content=body)
            assert answer.status_code == 200, answer.text
            listed = (await api.get(f"/v1/devices/{UDID}/commands")).json()["commands"]
            assert [(c["command_uuid"], c["status"]) for c in listed] == [(uuid, "pending")]
            expires_at = listed[0]["expires_at"]
            assert from_text(expires_at) - from_text(listed[0]["queued_at"]) == timedelta(days=30)

            clock.advance(timedelta(days=30, minutes=1))
            reply = await device.idle()  # whether or not the expiry worker has run yet
            assert (reply.status, reply.body) == (200, b"")

            found = await _until_status(api, uuid, "Expired")
            assert found["counts"] == {"pending": 0, "Expired": 1}
            (row,) = found["enrollments"]
            assert row["result"] is None and row["received_at"] >= expires_at
            listed = (await api.get(f"/v1/devices/{UDID}/commands")).json()["commands"]
            assert [(c["command_uuid"], c["status"], c["pending"]) for c in listed] == [(uuid, "Expired", False)]
            plist = await api.get(f"/v1/commands/{uuid}", params={"format": "plist", "enrollment_id": UDID})
            assert plist.status_code == 404  # no answer of the device to give
            assert (await device.idle()).body == b""
            metrics = (await api.get("/metrics")).text
            assert _metric(metrics, 'mdm_command_results_total{status="Expired"}') == 1

        await receiver.wait_for(lambda: any(d.event["topic"] == "appliance.CommandExpired" for d in receiver.accepted))
    (event,) = [d.event for d in receiver.accepted if d.event["topic"] == "appliance.CommandExpired"]
    assert event["command_expired_event"] == {
        "udid": UDID, "ids": {"id": UDID, "type": "Device"}, "command_uuid": uuid, "request_type": "DeviceLock",
        "queued_at": event["command_expired_event"]["queued_at"], "expires_at": expires_at, "sent_at": None,
        "not_now_count": 0,
    }


async def test_ttl_per_command_and_never(nursery, tmp_path):
    clock = OffsetClock()
    mdm = await start_mdm_server(nursery, tmp_path, clock=clock, queue={"command_ttl": "30d"})
    async with mdm.device(UDID) as device, mdm.server.api_client() as api:
        await device.enroll()
        short, body = command_plist("ProfileList")
        assert (await api.put(f"/v1/enqueue/{UDID}?nopush=1&ttl=2h", content=body)).status_code == 200
        answer = await api.post("/v1/commands?ttl=0", json={"enrollment_ids": [UDID], "no_push": True,
                                                             "command": {"RequestType": "CertificateList"}})
        never = answer.json()["command_uuid"]
        pending = (await api.get(f"/v1/commands/{never}")).json()["enrollments"]
        assert [row["expires_at"] for row in pending] == [None]
        default, body = command_plist("SecurityInfo")
        assert (await api.put(f"/v1/enqueue/{UDID}?nopush=1", content=body)).status_code == 200

        # Refused, and nothing stored: a ttl that is no duration, negative, or over ten years.
        for bad in ("soon", "-5", "3651d", "1e9"):
            refused_uuid, body = command_plist("ProfileList")
            refused = await api.put(f"/v1/enqueue/{UDID}?nopush=1&ttl={bad}", content=body)
            assert refused.status_code == 400 and refused.json()["error"]["code"] == "bad_parameter", bad
            assert (await api.get(f"/v1/commands/{refused_uuid}")).status_code == 404

        clock.advance(timedelta(hours=3))
        await _until_status(api, short, "Expired")
        assert await _status(api, never) == "pending" and await _status(api, default) == "pending"
        clock.advance(timedelta(days=40))
        await _until_status(api, default, "Expired")
        # The command without expiry is still there and is the one the device gets.
        reply = await device.idle()
        assert reply.command_uuid == never
        await device.acknowledge(never, CertificateList=[])
        assert await _status(api, never) == "Acknowledged"


async def test_a_late_answer_to_an_expired_command_replaces_expired(nursery, tmp_path):
    clock = OffsetClock()
    mdm = await start_mdm_server(nursery, tmp_path, clock=clock)
    async with mdm.device(UDID) as device, mdm.server.api_client() as api:
        await device.enroll()
        uuid, body = command_plist("ProfileList")
        assert (await api.put(f"/v1/enqueue/{UDID}?nopush=1&ttl=1d", content=body)).status_code == 200
        assert (await device.idle()).command_uuid == uuid  # the device takes it, and answers only much later
        clock.advance(timedelta(days=2))
        found = await _until_status(api, uuid, "Expired")
        assert found["enrollments"][0]["sent_at"] is None  # results carry no sent_at; the event does
        reply = await device.acknowledge(uuid, ProfileList=[])
        assert reply.status == 200
        answer = (await api.get(f"/v1/commands/{uuid}")).json()
        assert answer["counts"] == {"pending": 0, "Acknowledged": 1}
        assert answer["enrollments"][0]["result"]["ProfileList"] == []


async def test_devices_answering_not_now_more_than_the_threshold_are_listed(nursery, tmp_path):
    mdm = await start_mdm_server(nursery, tmp_path, port=free_port(), queue={"not_now_threshold": 2})
    stuck_uuid, body = command_plist("InstallProfile", Payload=b"profile")
    async with mdm.device(UDID) as device, mdm.device("EXPIRY-DEVICE-2") as other, \
            mdm.server.api_client() as api:
        await device.enroll()
        await other.enroll()
        assert (await api.put(f"/v1/enqueue/{UDID},EXPIRY-DEVICE-2?nopush=1", content=body)).status_code == 200
        for _ in range(3):  # a locked device: each session it is offered the command and says NotNow
            reply = await device.idle()
            assert reply.command_uuid == stuck_uuid
            assert (await device.not_now(stuck_uuid)).body == b""
        reply = await other.idle()
        await other.not_now(reply.command_uuid)

        answer = (await api.get("/v1/queue/stuck")).json()
        assert answer["threshold"] == 2 and answer["next_cursor"] is None
        assert [d["device_id"] for d in answer["devices"]] == [UDID]
        (entry,) = answer["devices"][0]["commands"]
        assert (entry["enrollment_id"], entry["command_uuid"], entry["request_type"], entry["not_now_count"]) == (
            UDID, stuck_uuid, "InstallProfile", 3)
        assert [d["device_id"] for d in (await api.get("/v1/queue/stuck?threshold=0")).json()["devices"]] == sorted(
            [UDID, "EXPIRY-DEVICE-2"])
        assert (await api.get("/v1/queue/stuck?threshold=3")).json()["devices"] == []
        assert (await api.get("/v1/queue/stuck?threshold=-1")).status_code == 400
        assert _metric((await api.get("/metrics")).text, "mdm_devices_stuck") == 1

    code, out, err = await cli(mdm.server.config_path, "stuck")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split()[:4] == ["DEVICE", "ENROLLMENT", "COMMAND", "NOTNOW"]
    assert len(lines) == 2 and UDID in lines[1] and "InstallProfile" in lines[1] and " 3 " in lines[1]
    assert "1 device(s)" in err and "more than 2 times" in err
    code, out, err = await cli(mdm.server.config_path, "stuck", "--threshold", "0", "--json")
    assert code == 0 and len(json.loads(out)["devices"]) == 2
