"""Live inventory against the real server: a simulated Mac enrolls, the appliance queues its inventory
commands and pushes it, the Mac answers them (tests/support/device_sim.py builds every answer with
plistlib and cryptography), and the device record, its history and its groups follow."""

from __future__ import annotations

import plistlib
from datetime import timedelta

import pytest
import trio

from appliance.clock import OffsetClock
from appliance.store.timefmt import from_text
from tests.support.mdm_support import start_mdm_server
from tests.support.push_support import start_apns_standin

INVENTORY = ["DeviceInformation", "SecurityInfo", "ProfileList", "CertificateList", "InstalledApplicationList"]


async def start_with_apns(nursery, tmp_path, **overrides):
    """The MDM test server with inventory on, pushing to a local APNs stand-in."""
    apns = await start_apns_standin(nursery, tmp_path)
    mdm = await start_mdm_server(nursery, tmp_path, apns=apns.apns,
                                 inventory={"commands": INVENTORY, **overrides.pop("inventory", {})}, **overrides)
    await apns.import_push_cert(mdm.server)
    return mdm, apns.standin


@pytest.fixture
async def fleet(nursery, tmp_path):
    mdm, standin = await start_with_apns(nursery, tmp_path)
    yield mdm, standin
    mdm.server.stop()


async def queued_types(mdm, enrollment_id: str) -> list[str]:
    return [row["request_type"] for row in await mdm.rows(
        "SELECT c.request_type FROM queue q JOIN commands c ON c.uuid = q.command_uuid"
        " WHERE q.enrollment_id = ? AND q.cancelled_at IS NULL ORDER BY q.id", enrollment_id)]


async def wait_for_queue(mdm, enrollment_id: str, count: int) -> list[str]:
    """The worker runs beside the request: wait (bounded) until it has queued `count` commands."""
    with trio.fail_after(15):
        while len(types := await queued_types(mdm, enrollment_id)) < count:
            await trio.sleep(0.02)
    return types


async def device_record(mdm, device_id: str) -> dict:
    async with mdm.server.api_client() as api:
        response = await api.get(f"/v1/devices/{device_id}")
    assert response.status_code == 200, response.text
    return response.json()


async def test_enrollment_queues_and_pushes_the_inventory_and_the_answers_fill_the_device_record(fleet):
    mdm, standin = fleet
    async with mdm.device("MAC-1") as device:
        await device.enroll()
        assert await wait_for_queue(mdm, "MAC-1", 5) == INVENTORY
        with trio.fail_after(15):
            while device.push_token.hex() not in standin.tokens():
                await trio.sleep(0.02)
        answered = await device.answer_commands()
    assert sorted(request_type for _, request_type in answered) == sorted(INVENTORY)
    record = await device_record(mdm, "MAC-1")
    inventory = record["inventory"]
    assert (record["os_version"], record["build_version"], record["model_name"]) == ("14.4", "23E214", "MacBook Pro")
    assert (inventory["device_capacity"], inventory["available_capacity"], inventory["battery_level"]) == \
        (460.43, 301.2, 0.87)
    assert inventory["supervised"] is True and inventory["activation_lock"] is False
    assert (inventory["filevault"], inventory["user_approved_enrollment"]) == (True, True)
    assert inventory["device_information"]["WiFiMAC"] == "f0:18:98:00:00:01"
    assert [p["identifier"] for p in inventory["profiles"]] == ["org.example.mdm", "org.example.wifi.staff"]
    assert inventory["profiles"][1]["payload_types"] == ["com.apple.wifi.managed"]
    identity, root = inventory["certificates"]
    assert identity["is_identity"] is True and identity["subject"] == "CN=MAC-1" and identity["not_after"]
    assert root["common_name"] == "Example School Root CA" and root["issuer"] == "CN=Example School Root CA"
    assert {a["identifier"] for a in inventory["applications"]} >= {"com.apple.Safari", "us.zoom.xos"}
    for answered_at in ("device_information_at", "security_info_at", "profiles_at", "certificates_at",
                        "applications_at"):
        assert inventory[answered_at] is not None and inventory[answered_at] <= inventory["inventory_at"]
    assert record["history"] == []  # the first facts are a starting point, not a change


async def test_a_newer_os_in_an_answer_updates_the_device_and_keeps_a_dated_history(fleet):
    mdm, _ = fleet
    async with mdm.device("MAC-2") as device:
        await device.enroll()
        await wait_for_queue(mdm, "MAC-2", 5)
        await device.answer_commands()
        device.os_version, device.build_version, device.device_name = "14.5", "23F79", "Anna's Mac"
        async with mdm.server.api_client() as api:  # an operator asks, by hand, for two facts only
            response = await api.post("/v1/commands", json={"enrollment_ids": ["MAC-2"], "command": {
                "RequestType": "DeviceInformation", "Queries": ["OSVersion", "BuildVersion", "DeviceName"]}})
            assert response.status_code == 200, response.text
        await device.answer_commands()
        record = await device_record(mdm, "MAC-2")
        assert (record["os_version"], record["build_version"], record["device_name"]) == \
            ("14.5", "23F79", "Anna's Mac")
        assert record["model_name"] == "MacBook Pro"  # not asked this time: the previous value stays
        history = {(h["fact"], h["old_value"], h["new_value"], h["source"]) for h in record["history"]}
        assert history == {("os_version", "14.4", "14.5", "DeviceInformation"),
                           ("build_version", "23E214", "23F79", "DeviceInformation"),
                           ("device_name", "Sim MAC-2", "Anna's Mac", "DeviceInformation")}
        assert all(h["changed_at"] for h in record["history"])
        # An Authenticate (the device checking in again after an update) dates its changes too.
        device.os_version = "15.0"
        assert (await device.authenticate()).status == 200
    record = await device_record(mdm, "MAC-2")
    assert record["os_version"] == "15.0" and len(record["history"]) == 4
    newest = record["history"][0]
    assert (newest["fact"], newest["old_value"], newest["new_value"], newest["source"]) == \
        ("os_version", "14.5", "15.0", "Authenticate")


async def test_an_inventory_command_is_not_queued_again_while_one_is_pending(fleet):
    mdm, _ = fleet
    async with mdm.device("MAC-3") as device:
        await device.enroll()
        assert await wait_for_queue(mdm, "MAC-3", 5) == INVENTORY
        # The device takes DeviceInformation and says NotNow to the rest: those stay pending.
        reply = await device.idle()
        while reply.command is not None:
            command = reply.command
            if command["Command"]["RequestType"] == "DeviceInformation":
                reply = await device.acknowledge(command["CommandUUID"], **device.result_for(command["Command"]))
            else:
                reply = await device.not_now(command["CommandUUID"])
        # It enrolls again (a new TokenUpdate after Authenticate): due at once, but only what is not pending.
        await device.enroll()
        assert await wait_for_queue(mdm, "MAC-3", 5) == INVENTORY[1:] + ["DeviceInformation"]
        await trio.sleep(0.3)  # give a wrongly eager worker the chance to queue more
        assert len(await queued_types(mdm, "MAC-3")) == 5


async def test_an_unreadable_answer_is_stored_and_changes_no_fact(fleet):
    mdm, _ = fleet
    async with mdm.device("MAC-4") as device:
        await device.enroll()
        await wait_for_queue(mdm, "MAC-4", 5)
        reply = await device.idle()
        assert reply.command["Command"]["RequestType"] == "DeviceInformation"
        uuid = reply.command_uuid
        answer = await device.acknowledge(uuid, QueryResponses="not a dictionary")
        assert answer.status == 200 and answer.command is not None  # the next command, as for any answer
        second = answer.command_uuid
        odd = await device.acknowledge(second, SecurityInfo={"PasscodePresent": "yes", "FDE_Enabled": True})
        assert odd.status == 200
    stored = await mdm.rows("SELECT raw FROM results WHERE enrollment_id = 'MAC-4' AND command_uuid = ?", uuid)
    assert plistlib.loads(stored[0]["raw"])["QueryResponses"] == "not a dictionary"
    record = await device_record(mdm, "MAC-4")
    assert record["os_version"] == "14.4" and record["inventory"]["device_information_at"] is None
    assert record["inventory"]["filevault"] is True and record["inventory"]["passcode_present"] is None


async def test_inventory_comes_again_after_the_interval_by_the_appliance_clock(nursery, tmp_path):
    clock = OffsetClock()
    mdm, _ = await start_with_apns(nursery, tmp_path, clock=clock, inventory={"interval": "24h", "jitter": "1h"})
    async with mdm.device("MAC-5") as device:
        await device.enroll()
        await wait_for_queue(mdm, "MAC-5", 5)
        await device.answer_commands()
        assert await queued_types(mdm, "MAC-5") == []
        schedule = (await mdm.rows("SELECT queued_at, due_at FROM inventory_schedule WHERE device_id = 'MAC-5'"))[0]
        gap = from_text(schedule["due_at"]) - from_text(schedule["queued_at"])
        assert timedelta(hours=23) <= gap <= timedelta(hours=25)  # the interval, moved by the jitter

        clock.advance(timedelta(hours=22, minutes=59))  # not yet due, whatever the jitter drew
        await trio.sleep(0.3)  # give a wrongly eager worker the chance to queue
        assert await queued_types(mdm, "MAC-5") == []
        clock.advance(timedelta(hours=2, minutes=2))  # past the latest due time: the worker wakes at once
        assert await wait_for_queue(mdm, "MAC-5", 5) == INVENTORY
        await device.answer_commands()
    record = await device_record(mdm, "MAC-5")
    assert from_text(record["inventory"]["inventory_at"]) >= from_text(schedule["due_at"])
    mdm.server.stop()
