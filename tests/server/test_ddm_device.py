"""Declarative Device Management as a device lives it, against the real server (real TLS, real SQLite, the
APNs stand-in): the independent DDM client in tests/support/ddm_client.py drives the check-ins through the
device simulator."""

from __future__ import annotations

import base64
import json
import plistlib
from datetime import UTC, datetime, timedelta

import pytest
import trio

from appliance.clock import OffsetClock
from tests.support.ddm_client import DdmClient
from tests.support.ddm_support import API, activation, configuration, put, setup_set, start_ddm_server
from tests.support.device_sim import CHECKIN_TYPE
from tests.support.harness import free_port
from tests.support.webhook_receiver import Receiver, Running

UDID = "DDM-DEVICE-0001"


@pytest.fixture
async def ddm(nursery, tmp_path):
    handle = await start_ddm_server(nursery, tmp_path, ddm={"organization_name": "Example School"})
    yield handle
    handle.server.stop()


async def test_full_sync_serves_what_is_assigned_and_the_appliances_own(ddm):
    async with ddm.device(UDID) as device:
        await device.enroll()
        async with ddm.api() as api:
            await setup_set(api, "staff", [configuration("cfg.echo"), activation("act.echo", "cfg.echo")], [UDID])
        client = DdmClient(device)
        synced = await client.sync()
        # The same state twice: the same token, nothing fetched again.
        second = await client.sync()
    held = client.declarations
    assert held["cfg.echo"]["Payload"] == {"Echo": "cfg.echo"}
    assert held["cfg.echo"]["Type"] == "com.apple.configuration.management.test"
    assert held["act.echo"]["Payload"] == {"StandardConfigurations": ["cfg.echo"]}
    assert held["mdm-appliance.organization-info"]["Payload"] == {"Name": "Example School"}
    assert held["mdm-appliance.server-capabilities"]["Payload"]["Version"]
    subscribed = {item["Name"] for item in held["mdm-appliance.status-subscriptions"]["Payload"]["StatusItems"]}
    assert {"management.declarations", "device.operating-system.version", "softwareupdate.install-state"} <= subscribed
    assert held["mdm-appliance.status-activation"]["Payload"]["StandardConfigurations"] == [
        "mdm-appliance.status-subscriptions"]
    assert sorted(synced.fetched) == sorted(held)
    assert (second.token, second.fetched) == (synced.token, [])


async def test_a_change_sends_one_command_then_the_device_fetches_only_what_changed(ddm):
    async with ddm.device(UDID) as device:
        await device.enroll()
        async with ddm.api() as api:
            await setup_set(api, "staff", [configuration("cfg.a"), configuration("cfg.b"),
                                           activation("act", "cfg.a", "cfg.b")], [UDID])
        # Assigning the set turned DDM on: a DeclarativeManagement command, pushed.
        await ddm.settled()
        await ddm.pushes_to(device, 1)
        client = DdmClient(device)
        reply = await device.idle()
        assert reply.command["Command"]["RequestType"] == "DeclarativeManagement"
        first = await client.follow(reply.command)
        assert {"cfg.a", "cfg.b", "act"} <= set(first.fetched)
        assert (await device.acknowledge(reply.command_uuid)).body == b""

        async with ddm.api() as api:
            assert (await put(api, configuration("cfg.a", Echo="changed"))).status_code == 204
            await ddm.settled()
            # A second change before the device came: still one waiting command, carrying the newest tokens.
            assert (await put(api, configuration("cfg.b", Echo="changed too"))).status_code == 204
            await ddm.settled()
        waiting = await ddm.pending_ddm_commands(UDID)
        assert len(waiting) == 1
        await ddm.pushes_to(device, 2)

        reply = await device.idle()
        data = json.loads(reply.command["Command"]["Data"])
        assert data["SyncTokens"]["DeclarationsToken"] != first.token
        second = await client.follow(reply.command)
        assert sorted(second.fetched) == ["cfg.a", "cfg.b"]
        assert second.token == (await client.tokens())["DeclarationsToken"]
        assert client.declarations["cfg.a"]["Payload"] == {"Echo": "changed"}
        assert client.declarations["act"]["ServerToken"] == first_token_of(first, client, "act")
        assert (await device.acknowledge(reply.command_uuid)).body == b""
        assert (await device.idle()).body == b""  # nothing more: no over-notification

        # Storing the same content again is no change: no command, no push.
        async with ddm.api() as api:
            assert (await put(api, configuration("cfg.a", Echo="changed"))).status_code == 304
            await ddm.settled()
        assert await ddm.pending_ddm_commands(UDID) == []

        # Taking the set away: told again, and the device drops the declarations.
        async with ddm.api() as api:
            assert (await api.delete(f"{API}/enrollment-sets/{UDID}", params={"set": "staff"})).status_code == 204
        await ddm.settled()
        reply = await device.idle()
        third = await client.follow(reply.command)
        assert sorted(third.removed) == ["act", "cfg.a", "cfg.b"]
        assert all(identifier.startswith("mdm-appliance.") for identifier in client.declarations)


def first_token_of(result, client, identifier):
    # Unchanged declarations keep their ServerToken across syncs.
    assert identifier not in result.fetched or identifier in client.declarations
    return client.declarations[identifier]["ServerToken"]


async def test_status_report_is_stored_and_shown(ddm):
    async with ddm.device(UDID) as device:
        await device.enroll()
        async with ddm.api() as api:
            await setup_set(api, "staff", [configuration("cfg.ok"), configuration("cfg.bad"),
                                           activation("act", "cfg.ok", "cfg.bad")], [UDID])
        client = DdmClient(device)
        await client.sync()
        report = client.status_report(
            invalid={"cfg.bad": "Error.ConfigurationCannotBeApplied"},
            values={"device.operating-system.version": "17.5", "softwareupdate.install-state": "none"},
            errors=[{"StatusItem": "device.power.battery-health", "Reasons": [{"Code": "Error.NotSupported"}]}])
        reply = await client.report_status(report)
        assert (reply.status, reply.body) == (200, b"")  # Apple: 200, empty body
    async with ddm.api() as api:
        status = (await api.get(f"{API}/declaration-status/{UDID}")).json()[UDID]
        by_id = {entry["identifier"]: entry for entry in status}
        assert by_id["cfg.ok"]["active"] is True and by_id["cfg.ok"]["valid"] == "valid"
        assert by_id["cfg.ok"]["current"] is True
        assert by_id["cfg.ok"]["server-token"] == client.declarations["cfg.ok"]["ServerToken"]
        assert by_id["cfg.bad"]["valid"] == "invalid"
        assert by_id["cfg.bad"]["reasons"][0]["code"] == "Error.ConfigurationCannotBeApplied"
        values = (await api.get(f"{API}/status-values/{UDID}", params={"prefix": ".StatusItems.device.%"})).json()[UDID]
        assert {"path": ".StatusItems.device.operating-system.version", "value": "17.5"}.items() <= values[0].items()
        errors = (await api.get(f"{API}/status-errors/{UDID}")).json()[UDID]
        paths = sorted(error["path"] for error in errors)
        assert paths == [".Errors", ".StatusItems.management.declarations.configurations"]
        raw = await api.get(f"{API}/status-report/{UDID}")
        assert raw.status_code == 200 and json.loads(raw.content) == report
        assert raw.headers["X-Status-Report-Index"] == "0" and raw.headers["Last-Modified"].endswith("GMT")
        summary = {entry["identifier"]: entry for entry in
                   (await api.get(f"{API}/status-summary")).json()["declarations"]}
        assert (summary["cfg.ok"]["applied"], summary["cfg.ok"]["enrollments"]) == (1, 1)
        assert summary["cfg.bad"]["invalid"] == 1
        assert summary["cfg.bad"]["reasons"] == {"Error.ConfigurationCannotBeApplied": 1}
        overview = (await api.get(f"{API}/enrollments/{UDID}")).json()
        states = {entry["identifier"]: entry["state"] for entry in overview["declarations"]}
        assert (states["cfg.ok"], states["cfg.bad"]) == ("applied", "invalid")
        metrics = (await api.get("/metrics")).text
    assert 'mdm_ddm_declarations{declaration="cfg.bad",state="invalid"} 1.0' in metrics
    assert 'mdm_ddm_declarations{declaration="cfg.ok",state="applied"} 1.0' in metrics

    # Changing the declaration makes the reported status outdated: pending until the device reports again.
    async with ddm.api() as api:
        assert (await put(api, configuration("cfg.ok", Echo="v2"))).status_code == 204
        summary = (await api.get(f"{API}/status-summary", params={"declaration": "cfg.ok"})).json()
    assert summary["declarations"][0]["pending"] == 1


async def test_a_declaration_not_assigned_to_the_enrollment_is_404(ddm):
    async with ddm.device(UDID) as device, ddm.device("DDM-OTHER-0002") as other:
        await device.enroll()
        await other.enroll()
        async with ddm.api() as api:
            await setup_set(api, "mine", [configuration("cfg.mine")], [UDID])
            await setup_set(api, "theirs", [configuration("cfg.theirs")], ["DDM-OTHER-0002"])
        client = DdmClient(device)
        assert (await client.declaration("configuration", "cfg.mine")).status == 200
        for kind, identifier in [("configuration", "cfg.theirs"), ("configuration", "cfg.nowhere"),
                                 ("activation", "cfg.mine"), ("management", "cfg.mine")]:
            reply = await client.declaration(kind, identifier)
            assert reply.status == 404, (kind, identifier, reply.status)
            assert b"cfg.theirs" not in reply.body or identifier == "cfg.theirs"
            assert b"Echo" not in reply.body


async def test_the_user_channel_has_its_own_declarations(ddm):
    async with ddm.device(UDID) as device:
        await device.enroll()
        user = device.user("USER-GUID-1", short_name="ann", long_name="Ann")
        assert (await user.token_update()).status == 200
        user_id = f"{UDID}:USER-GUID-1"
        async with ddm.api() as api:
            await setup_set(api, "user-things", [configuration("cfg.user")], [user_id])
            await setup_set(api, "device-things", [configuration("cfg.device")], [UDID])
        await ddm.settled()
        await ddm.pushes_to(user, 1)
        user_client, device_client = DdmClient(user), DdmClient(device)
        reply = await user.idle()
        await user_client.follow(reply.command)
        await device_client.sync()
        assert (await user_client.declaration("configuration", "cfg.device")).status == 404
    assert "cfg.user" in user_client.declarations and "cfg.device" not in user_client.declarations
    assert "cfg.device" in device_client.declarations and "cfg.user" not in device_client.declarations
    # Status subscriptions follow the channel: software update status exists on the device channel only.
    assert "mdm-appliance.user-status-subscriptions" in user_client.declarations
    assert "mdm-appliance.status-subscriptions" not in user_client.declarations
    assert user_client.token != device_client.token


def _checkin_with_raw_data(device, endpoint: str, data_xml: str) -> bytes:
    """A DeclarativeManagement check-in whose <data> element is written by hand (plistlib only writes good base64)."""
    return (f'<?xml version="1.0" encoding="UTF-8"?><plist version="1.0"><dict>'
            f'<key>MessageType</key><string>DeclarativeManagement</string>'
            f'<key>UDID</key><string>{device.udid}</string><key>Endpoint</key><string>{endpoint}</string>'
            f'<key>Data</key>{data_xml}</dict></plist>').encode()


async def test_hostile_data_is_refused_and_changes_nothing(ddm):
    async with ddm.device(UDID) as device:
        await device.enroll()
        async with ddm.api() as api:
            await setup_set(api, "staff", [configuration("cfg.x")], [UDID])
        client = DdmClient(device)
        await client.sync()
        assert (await client.report_status()).status == 200
        await ddm.settled()
        before = await ddm.mdm.dump()

        deep = b"[" * 5000 + b"]" * 5000
        bad_bodies = {
            "bad base64": _checkin_with_raw_data(device, "status", "<data>abc</data>"),
            "Data as a string": _checkin_with_raw_data(device, "status", "<string>e30=</string>"),
        }
        for name, body in bad_bodies.items():
            reply = await device.send(device.checkin_path, body, content_type=CHECKIN_TYPE)
            assert 400 <= reply.status < 500, (name, reply.status, reply.text)
        hostile = {
            "not JSON": b"this is not json",
            "not UTF-8": b"\xff\xfe{\x00}",
            "an array": b"[1, 2, 3]",
            "NaN": b'{"StatusItems": {}, "Errors": [], "x": NaN}',
            "nested deep": b'{"StatusItems": ' + deep + b', "Errors": []}',
            "nested a little too deep": json.dumps({"StatusItems": _nest(40), "Errors": []}).encode(),
            "huge": json.dumps({"StatusItems": {"x": "y" * (2 * 1024 * 1024)}, "Errors": []}).encode(),
            "StatusItems missing": b'{"Errors": []}',
            "declarations of the wrong shape": json.dumps(
                {"StatusItems": {"management": {"declarations": {"configurations": [{"identifier": 7}]}}},
                 "Errors": []}).encode(),
            "empty": b"",
        }
        for name, data in hostile.items():
            reply = await client.request("status", data)
            assert 400 <= reply.status < 500, (name, reply.status, reply.text)
            assert reply.text.strip(), name  # a reason is given
        for endpoint in ("tokens", "declaration-items"):
            reply = await client.request(endpoint, b"not json either")
            assert reply.status == 400, (endpoint, reply.status)
        for endpoint in ("token", "declaration/configuration/", "declaration/profile/cfg.x", "status/../x",
                         "declaration", "declaration/configuration/" + "x" * 600):
            reply = await client.request(endpoint)
            assert 400 <= reply.status < 500, (endpoint, reply.status)
        assert await ddm.mdm.dump() == before
        # The device is still served as before.
        assert (await client.sync()).fetched == []


def _nest(depth: int):
    value: dict = {}
    for _ in range(depth):
        value = {"n": value}
    return value


async def test_ddm_before_enrollment_is_refused(ddm):
    async with ddm.device(UDID) as device:
        assert (await device.authenticate()).status == 200
        reply = await DdmClient(device).request("tokens")
        assert reply.status == 403
        user = device.user("NOT-ENROLLED-USER")
        await device.token_update()
        assert (await DdmClient(user).request("tokens")).status == 403
    rows = await ddm.rows("SELECT count(*) AS n FROM ddm_enrollments")
    assert rows[0]["n"] == 0


async def test_status_change_is_a_webhook_event(nursery, tmp_path):
    receiver = Receiver(free_port())
    ddm = await start_ddm_server(nursery, tmp_path, apns=False,
                                 webhook={"url": f"http://127.0.0.1:{receiver.port}/hook", "retry_max": "1s"})
    async with Running(receiver), ddm.device(UDID) as device:
        await device.enroll()
        async with ddm.api() as api:
            await setup_set(api, "staff", [configuration("cfg.w")], [UDID])
        client = DdmClient(device)
        await client.sync()
        for _ in range(2):
            report = client.status_report(invalid={"cfg.w": "Error.ConfigurationIsInvalid"})
            assert (await client.report_status(report)).status == 200
        # Events of one enrollment arrive in order: the last report's check-in event comes last.
        await receiver.wait_for(lambda: sum(d.event["topic"] == "mdm.DeclarativeManagement"
                                            and b"<string>status</string>" in base64.b64decode(
                                                d.event["checkin_event"]["raw_payload"])
                                            for d in receiver.accepted) == 2)
    events = [d.event for d in receiver.accepted if d.event["topic"] == "appliance.DeclarationStatus"]
    assert len(events) == 1  # the second report changed nothing
    changes = {c["identifier"]: c for c in events[0]["declaration_status_event"]["changes"]}
    assert changes["cfg.w"]["valid"] == "invalid" and changes["cfg.w"]["previous"] is None
    assert changes["cfg.w"]["reasons"][0]["code"] == "Error.ConfigurationIsInvalid"
    assert events[0]["declaration_status_event"]["udid"] == UDID
    ddm.server.stop()


def test_checkin_plist_carries_data_as_base64():
    # What the client sends is Apple's shape: Data is a <data> element (base64 in XML).
    body = plistlib.dumps({"MessageType": "DeclarativeManagement", "Endpoint": "status", "Data": b"{}"})
    assert b"<data>" in body and b"e30=" in body


async def test_a_device_enrolled_again_is_sent_its_declarations_again(ddm):
    async with ddm.device(UDID) as device:
        await device.enroll()
        async with ddm.api() as api:
            await setup_set(api, "staff", [configuration("cfg.again")], [UDID])
        await ddm.settled()
        client = DdmClient(device)
        reply = await device.idle()
        await client.follow(reply.command)
        await device.acknowledge(reply.command_uuid)
        assert (await device.idle()).body == b""
        # The profile installed again (Authenticate, TokenUpdate): the device starts with no declarations.
        await device.enroll()
        await ddm.settled()
        await ddm.pushes_to(device, 2)
        reply = await device.idle()
        assert reply.command["Command"]["RequestType"] == "DeclarativeManagement"
        fresh = await DdmClient(device).follow(reply.command)
        assert "cfg.again" in fresh.fetched


async def test_the_sync_timestamp_is_when_the_token_last_changed_by_the_appliances_clock(nursery, tmp_path):
    clock = OffsetClock()
    ddm = await start_ddm_server(nursery, tmp_path, apns=False, clock=clock)
    async with ddm.device(UDID) as device:
        await device.enroll()
        async with ddm.api() as api:
            await setup_set(api, "staff", [configuration("cfg.t")], [UDID])
        client = DdmClient(device)
        first = await client.tokens()
        stamp = datetime.strptime(first["Timestamp"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
        assert abs(stamp - clock.now()) < timedelta(minutes=5)
        clock.advance(timedelta(days=1))
        assert await client.tokens() == first  # nothing changed: same token, same time
        async with ddm.api() as api:
            assert (await put(api, configuration("cfg.t", Echo="new"))).status_code == 204
        second = await client.tokens()
        later = datetime.strptime(second["Timestamp"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
        assert second["DeclarationsToken"] != first["DeclarationsToken"]
        assert timedelta(days=1) <= later - stamp < timedelta(days=1, minutes=5)
    ddm.server.stop()
