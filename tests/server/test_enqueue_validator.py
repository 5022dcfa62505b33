"""Commands from integrators through the real server: one validator for every enqueue route (a binary plist
reaches the device as the XML it is labelled as; one CommandUUID limit for commands and reports), the
catalog (GET /v1/catalog) and ?strict=1. Commands are built with plain plistlib/json, the device is
tests/support/device_sim.py."""

from __future__ import annotations

import base64
import plistlib

import pytest

from tests.support.mdm_support import start_mdm_server


@pytest.fixture
async def mdm(nursery, tmp_path):
    handle = await start_mdm_server(nursery, tmp_path)
    yield handle
    handle.server.stop()


async def _stored_body(mdm, command_uuid: str) -> bytes | None:
    rows = await mdm.rows("SELECT body FROM commands WHERE uuid = ?", command_uuid)
    return bytes(rows[0]["body"]) if rows else None


async def test_a_binary_plist_reaches_the_device_as_xml(mdm):
    command = {"CommandUUID": "BIN-1", "Command": {"RequestType": "InstallProfile", "Payload": b"\x00profile\xff"}}
    async with mdm.device("DEV-1") as device, mdm.server.api_client() as api:
        await device.enroll()
        response = await api.put("/v1/enqueue/DEV-1?nopush=1", content=plistlib.dumps(command, fmt=plistlib.FMT_BINARY))
        assert response.status_code == 200, response.text
        reply = await device.idle()
        assert reply.status == 200 and reply.content_type == "application/xml; charset=UTF-8"
        assert reply.body.startswith(b"<?xml") and not reply.body.startswith(b"bplist")
        assert plistlib.loads(reply.body, fmt=plistlib.FMT_XML) == command
        assert (await device.acknowledge("BIN-1")).status == 200
    assert (await _stored_body(mdm, "BIN-1")).startswith(b"<?xml")


async def test_an_xml_plist_is_sent_as_the_integrator_wrote_it(mdm):
    body = (b'<?xml version="1.0" encoding="UTF-8"?>\n<plist version="1.0"><dict>'
            b"<key>CommandUUID</key><string>XML-1</string>"
            b"<key>Command</key><dict><key>RequestType</key><string>ProfileList</string></dict></dict></plist>")
    async with mdm.device("DEV-1") as device, mdm.server.api_client() as api:
        await device.enroll()
        assert (await api.put("/v1/enqueue/DEV-1?nopush=1", content=body)).status_code == 200
        assert (await device.idle()).body == body


@pytest.mark.parametrize("route", ["raw", "json"])
async def test_a_long_command_uuid_reports_accept_is_accepted_on_enqueue(mdm, route):
    command_uuid = "C" * 200  # reports allow up to 256 characters; so does every enqueue route
    async with mdm.device("DEV-1") as device, mdm.server.api_client() as api:
        await device.enroll()
        if route == "raw":
            body = plistlib.dumps({"CommandUUID": command_uuid, "Command": {"RequestType": "ProfileList"}})
            response = await api.put("/v1/enqueue/DEV-1?nopush=1", content=body)
        else:
            response = await api.post("/v1/commands", json={"enrollment_ids": ["DEV-1"], "no_push": True,
                                                            "command_uuid": command_uuid,
                                                            "command": {"RequestType": "ProfileList"}})
        assert response.status_code == 200, response.text
        assert (await device.idle()).command_uuid == command_uuid
        assert (await device.acknowledge(command_uuid, ProfileList=[])).status == 200
        detail = (await api.get(f"/v1/commands/{command_uuid}")).json()
        assert detail["enrollments"][0]["status"] == "Acknowledged"

        too_long = "C" * 257
        body = plistlib.dumps({"CommandUUID": too_long, "Command": {"RequestType": "ProfileList"}})
        refused = await api.put("/v1/enqueue/DEV-1?nopush=1", content=body)
        assert refused.status_code == 400 and "at most 256 characters" in refused.json()["error"]["message"]
    assert await _stored_body(mdm, too_long) is None


async def test_catalog_is_served_for_tools(mdm):
    async with mdm.server.api_client() as api:
        response = await api.get("/v1/catalog")
        assert response.status_code == 200
        found = {command["request_type"]: command for command in response.json()["commands"]}
        erase = found["EraseDevice"]
        assert erase["destructive"] is True and erase["category"] == "device actions"
        pin = next(key for key in erase["keys"] if key["name"] == "PIN")
        assert (pin["type"], pin["required"], pin["platforms"]) == ("string", False, ["macOS"])
        queries = next(key for key in found["DeviceInformation"]["keys"] if key["name"] == "Queries")
        assert queries["type"] == "array" and queries["items"][0]["type"] == "string"
        assert "OSVersion" in queries["items"][0]["allowed"]
        async with mdm.server.client() as anonymous:
            assert (await anonymous.get("/v1/catalog")).status_code == 401


@pytest.mark.parametrize("command, words", [
    ({"RequestType": "EraseDevise"}, "did you mean EraseDevice?"),
    ({"RequestType": "EraseDevice", "PIN": 123456}, "key PIN must be a string, got an integer"),
    ({"RequestType": "DeviceInformation", "Queries": "OSVersion"}, "key Queries must be an array of strings"),
    ({"RequestType": "DeviceLock", "Pin": "123456"}, "unknown key Pin (did you mean PIN?)"),
    ({"RequestType": "DeviceInformation"}, "missing key Queries"),
])
async def test_strict_refuses_what_the_catalog_does_not_allow_naming_the_key(mdm, command, words):
    async with mdm.device("DEV-1") as device, mdm.server.api_client() as api:
        await device.enroll()
        raw = plistlib.dumps({"CommandUUID": "STRICT-RAW", "Command": command})
        for response in (
            await api.put("/v1/enqueue/DEV-1?nopush=1&strict=1", content=raw),
            await api.post("/v1/commands?strict=1", json={"enrollment_ids": ["DEV-1"], "no_push": True,
                                                          "command_uuid": "STRICT-JSON", "command": command}),
        ):
            assert response.status_code == 400, response.text
            error = response.json()["error"]
            assert error["code"] == "bad_command" and words in error["message"], error
        assert await _stored_body(mdm, "STRICT-RAW") is None and await _stored_body(mdm, "STRICT-JSON") is None
        # Without ?strict=1 any raw command is queued, as NanoMDM does.
        assert (await api.put("/v1/enqueue/DEV-1?nopush=1", content=raw)).status_code == 200
        assert (await device.idle()).command_uuid == "STRICT-RAW"


async def test_strict_accepts_what_fits_the_catalog(mdm):
    async with mdm.server.api_client() as api:
        async with mdm.device("DEV-1") as device:
            await device.enroll()
        payload = base64.b64encode(b"<plist/>").decode()
        response = await api.post("/v1/commands?strict=1", json={
            "enrollment_ids": ["DEV-1"], "no_push": True,
            "command": {"RequestType": "InstallProfile", "Payload": {"$data": payload}}})
        assert response.status_code == 200, response.text
        raw = plistlib.dumps({"CommandUUID": "OK-1", "Command": {"RequestType": "DeviceInformation",
                                                                "Queries": ["OSVersion", "SerialNumber"]}})
        assert (await api.put("/v1/enqueue/DEV-1?nopush=1&strict=1", content=raw)).status_code == 200
