"""The DDM admin API under /api/v1/ddm against the real server: KMFDDM's routes, shapes and status codes (as
NanoHUB mounts KMFDDM), the checks KMFDDM lacks, hosted assets and OS-update enforcement."""

from __future__ import annotations

import hashlib
import json
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from tests.support.ddm_client import DdmClient
from tests.support.ddm_support import API, activation, configuration, put, setup_set, start_ddm_server

UDID = "DDM-API-0001"


@pytest.fixture
async def ddm(nursery, tmp_path):
    handle = await start_ddm_server(nursery, tmp_path)
    yield handle
    handle.server.stop()


async def test_declarations_are_stored_changed_touched_and_deleted_with_kmfddms_codes(ddm):
    async with ddm.api() as api:
        declaration = configuration("com.example.test", Echo="hello")
        assert (await put(api, declaration)).status_code == 204          # new
        assert (await put(api, declaration)).status_code == 304          # unchanged
        reordered = {"Payload": declaration["Payload"], "Identifier": "com.example.test", "Type": declaration["Type"],
                     "ServerToken": "whatever the client says"}
        assert (await put(api, reordered)).status_code == 304            # same content, ServerToken ignored
        got = await api.get(f"{API}/declarations/com.example.test")
        assert got.status_code == 200 and got.headers["content-type"].startswith("application/json")
        first = got.json()
        assert {k: first[k] for k in ("Type", "Identifier", "Payload")} == declaration
        assert len(first["ServerToken"]) <= 64

        assert (await put(api, configuration("com.example.test", Echo="changed"))).status_code == 204
        second = (await api.get(f"{API}/declarations/com.example.test")).json()
        assert second["ServerToken"] != first["ServerToken"]
        touched = await api.post(f"{API}/declarations/com.example.test/touch")
        assert touched.status_code == 204
        third = (await api.get(f"{API}/declarations/com.example.test")).json()
        assert third["ServerToken"] not in (first["ServerToken"], second["ServerToken"])
        assert third["Payload"] == second["Payload"]

        assert (await api.get(f"{API}/declarations")).json() == ["com.example.test"]
        detail = (await api.get(f"{API}/declarations", params={"detail": "1", "builtin": "1"})).json()
        assert {row["identifier"] for row in detail} >= {"com.example.test", "mdm-appliance.organization-info"}

        assert (await api.get(f"{API}/declarations/nope")).status_code == 404
        assert (await api.post(f"{API}/declarations/nope/touch")).status_code == 404
        assert (await api.delete(f"{API}/declarations/com.example.test")).status_code == 204
        assert (await api.delete(f"{API}/declarations/com.example.test")).status_code == 304
        assert (await api.get(f"{API}/declarations")).json() == []


async def test_bad_declarations_are_400_naming_the_key_and_store_nothing(ddm):
    async with ddm.api() as api:
        cases = [
            (b"not json", "not JSON"),
            (b"[]", "JSON object"),
            (json.dumps({"Identifier": "a", "Payload": {}}).encode(), "Type"),
            (json.dumps({"Type": "com.apple.configuration.passcode.settings", "Identifier": "a",
                         "Payload": {"MinimumLength": "six"}}).encode(), "Payload.MinimumLength must be an integer"),
            (json.dumps({"Type": "com.apple.configuration.softwareupdate.enforcement.specific", "Identifier": "a",
                         "Payload": {"TargetOSVersion": "17.6"}}).encode(), "Payload.TargetLocalDateTime is required"),
            (json.dumps(activation("act", "missing.configuration")).encode(),
             "names configuration 'missing.configuration', which does not exist"),
        ]
        for body, reason in cases:
            answer = await api.put(f"{API}/declarations", content=body)
            assert answer.status_code == 400, (body, answer.status_code)
            assert answer.json()["error"]["code"] == "bad_request" and reason in answer.json()["error"]["message"]
        # An activation must name configurations, not activations.
        assert (await put(api, activation("act.inner"))).status_code == 204
        wrong = await put(api, activation("act.outer", "act.inner"))
        assert wrong.status_code == 400
        assert "names 'act.inner', an activation, where a configuration is expected" in wrong.json()["error"]["message"]
        reserved = await put(api, configuration("mdm-appliance.organization-info"))
        assert reserved.status_code == 409
        assert (await api.delete(f"{API}/declarations/mdm-appliance.server-capabilities")).status_code == 409
        assert (await api.get(f"{API}/declarations")).json() == ["act.inner"]

        # Apple adds types every year: an unknown type (or key) is stored, with a warning.
        unknown = await put(api, configuration("new.type", "com.apple.configuration.future.thing", Whatever=1))
        assert unknown.status_code == 204
        assert "not in Apple's schema" in unknown.headers["warning"]
        extra = await put(api, configuration("pc", "com.apple.configuration.passcode.settings", MinimumLength=6,
                                             Colour="blue"))
        assert extra.status_code == 204 and "Payload.Colour" in extra.headers["warning"]


async def test_sets_and_assignments_answer_like_kmfddm(ddm):
    async with ddm.api() as api:
        assert (await put(api, configuration("cfg.one"))).status_code == 204
        assert (await put(api, activation("act.one", "cfg.one"))).status_code == 204
        change = f"{API}/set-declarations/default"
        assert (await api.put(change, params={"declaration": "act.one"})).status_code == 204
        assert (await api.put(change, params={"declaration": "act.one"})).status_code == 304
        assert (await api.put(change)).status_code == 400                               # no ?declaration=
        assert (await api.put(change, params={"declaration": "nope"})).status_code == 404
        assert (await api.get(change)).json() == ["act.one"]
        assert (await api.get(f"{API}/sets")).json() == ["default"]
        assert (await api.get(f"{API}/declaration-sets/act.one")).json() == ["default"]
        assert (await api.get(f"{API}/declaration-sets/cfg.one")).json() == []

        assign = f"{API}/enrollment-sets/{UDID}"
        assert (await api.put(assign, params={"set": "default"})).status_code == 204    # not enrolled yet: kept
        assert (await api.put(assign, params={"set": "default"})).status_code == 304
        assert (await api.put(assign, params={"set": "other"})).status_code == 204
        assert (await api.put(assign)).status_code == 400
        assert (await api.get(assign)).json() == ["default", "other"]
        assert (await api.delete(assign, params={"set": "other"})).status_code == 204
        assert (await api.delete(assign, params={"set": "other"})).status_code == 304

        # In a set, or named by another declaration: not deletable (KMFDDM: an error too).
        in_set = await api.delete(f"{API}/declarations/act.one")
        assert in_set.status_code == 409 and "default" in in_set.json()["error"]["message"]
        named = await api.delete(f"{API}/declarations/cfg.one")
        assert named.status_code == 409 and "act.one" in named.json()["error"]["message"]

        assert (await api.delete(f"{API}/enrollment-sets-all/{UDID}")).status_code == 204
        assert (await api.delete(f"{API}/enrollment-sets-all/{UDID}")).status_code == 304
        assert (await api.get(assign)).json() == []
        assert (await api.delete(change, params={"declaration": "act.one"})).status_code == 204
        assert (await api.delete(change, params={"declaration": "act.one"})).status_code == 304

        # Status of an enrollment that never reported: KMFDDM's empty shapes.
        assert (await api.get(f"{API}/declaration-status/{UDID},OTHER")).json() == {UDID: [], "OTHER": []}
        assert (await api.get(f"{API}/status-errors/{UDID}")).json() == {UDID: []}
        assert (await api.get(f"{API}/status-values/{UDID}")).json() == {UDID: []}
        assert (await api.get(f"{API}/status-report/{UDID}")).status_code == 404
        assert (await api.get(f"{API}/status-report/{UDID}", params={"index": "x"})).status_code == 400
        assert (await api.post(f"{API}/notify", params={"id": UDID})).status_code == 204


async def test_kmfddm_clients_authenticate_as_they_do_there(ddm):
    server = ddm.server
    async with httpx.AsyncClient(base_url=server.api_url, verify=server.ssl_context()) as anonymous:
        refused = await anonymous.get(f"{API}/declarations")
        assert refused.status_code == 401 and refused.json()["error"]["code"] == "unauthorized"
        kmfddm = await anonymous.get(f"{API}/declarations", auth=("kmfddm", server.api_key))
        assert kmfddm.status_code == 200 and kmfddm.json() == []
        unknown_route = await anonymous.get(f"{API}/nothing-here", auth=("kmfddm", server.api_key))
        assert unknown_route.status_code == 404 and unknown_route.json()["error"]["code"] == "not_found"


async def test_sets_assigned_before_enrollment_reach_the_device_when_it_enrolls(ddm):
    async with ddm.api() as api:
        await setup_set(api, "welcome", [configuration("cfg.welcome"), activation("act.welcome", "cfg.welcome")],
                        [UDID])
    await ddm.settled()
    assert await ddm.rows("SELECT * FROM queue") == []  # nobody to tell yet
    async with ddm.device(UDID) as device:
        await device.enroll()
        await ddm.settled()
        await ddm.pushes_to(device, 1)
        reply = await device.idle()
        synced = await DdmClient(device).follow(reply.command)
        assert {"cfg.welcome", "act.welcome"} <= set(synced.fetched)
        # The notify API tells it again even though nothing changed; no second command while one waits.
        await device.acknowledge(reply.command_uuid)
        async with ddm.api() as api:
            for _ in range(2):
                assert (await api.post(f"{API}/notify", params={"set": "welcome"})).status_code == 204
                await ddm.settled()
        assert len(await ddm.pending_ddm_commands(UDID)) == 1
        # ?nonotify=1 changes without telling anyone.
        async with ddm.api() as api:
            assert (await put(api, configuration("cfg.welcome", Echo="quiet"), nonotify="1")).status_code == 204
            await ddm.settled()
        reply = await device.idle()
        tokens = json.loads(reply.command["Command"]["Data"])["SyncTokens"]
        assert tokens["DeclarationsToken"] == synced.token  # the quiet change was not announced
        await device.acknowledge(reply.command_uuid)


async def test_hosted_assets_reach_only_the_devices_they_are_assigned_to(ddm):
    content = json.dumps({"UserName": "ann", "Password": "s3cret"}).encode()
    async with ddm.device(UDID) as device, ddm.device("DDM-API-OTHER") as other:
        await device.enroll()
        await other.enroll()
        async with ddm.api() as api:
            saved = await api.put(f"{API}/assets/cred.ann", content=content,
                                  params={"type": "com.apple.asset.credential.userpassword"},
                                  headers={"Content-Type": "application/json"})
            assert saved.status_code == 204, saved.text
            again = await api.put(f"{API}/assets/cred.ann", content=content,
                                  params={"type": "com.apple.asset.credential.userpassword"},
                                  headers={"Content-Type": "application/json"})
            assert again.status_code == 304
            await setup_set(api, "creds", [], [UDID])
            assert (await api.put(f"{API}/set-declarations/creds", params={"declaration": "cred.ann"})).status_code == 204
        client = DdmClient(device)
        await client.sync()
        asset = client.declarations["cred.ann"]
        reference = asset["Payload"]["Reference"]
        assert reference["Hash-SHA-256"] == hashlib.sha256(content).hexdigest() and reference["Size"] == len(content)
        assert asset["Payload"]["Authentication"] == {"Type": "MDM"}
        url = urlsplit(reference["DataURL"])
        query = {key: values[0] for key, values in parse_qs(url.query).items()}
        assert url.path == "/ddm/assets/cred.ann" and query["enrollment"] == UDID

        server = ddm.server
        async with httpx.AsyncClient(base_url=server.base_url, verify=server.ssl_context()) as web:
            # With the token of the DataURL (no MDM authentication): the content.
            fetched = await web.get(url.path, params=query)
            assert fetched.status_code == 200 and fetched.content == content
            assert fetched.headers["content-type"].startswith("application/json")
            # A wrong token, another enrollment's id with this token, no token: refused.
            assert (await web.get(url.path, params={**query, "token": "0" * 32})).status_code == 403
            assert (await web.get(url.path, params={**query, "enrollment": "DDM-API-OTHER"})).status_code == 403
            assert (await web.get(url.path)).status_code == 403
        # With MDM authentication (the device's identity signing the request): its own asset only.
        reply = await device.send(url.path, b"", method="GET", content_type=None)
        assert reply.status == 200 and reply.body == content
        reply = await other.send(url.path, b"", method="GET", content_type=None)
        assert reply.status == 404 and content not in reply.body

        async with ddm.api() as api:
            bad_type = await api.put(f"{API}/assets/x", content=b"x", params={"type": "com.apple.asset.useridentity"})
            assert bad_type.status_code == 400
            assert (await put(api, configuration("plain.cfg"))).status_code == 204
            not_hosted = await api.put(f"{API}/assets/plain.cfg", content=b"x")
            assert not_hosted.status_code == 409


async def test_wrong_asset_tokens_are_limited_per_address(ddm):
    server = ddm.server
    async with ddm.api() as api:
        assert (await api.put(f"{API}/assets/data.1", content=b"payload")).status_code == 204
    async with httpx.AsyncClient(base_url=server.base_url, verify=server.ssl_context()) as web:
        statuses = [(await web.get("/ddm/assets/data.1", params={"enrollment": UDID, "token": f"{i:032x}"})).status_code
                    for i in range(25)]
    assert statuses[:20] == [403] * 20 and set(statuses[20:]) == {429}


async def test_os_update_enforcement_is_built_assigned_and_shows_progress(ddm):
    async with ddm.device(UDID) as device:
        await device.enroll()
        async with ddm.api() as api:
            answer = await api.post(f"{API}/os-update", json={"version": "17.6", "deadline": "2027-01-15T18:00",
                                                              "enrollment_ids": [UDID]})
            assert answer.status_code == 200, answer.text
            result = answer.json()
            assert result["set"] == "os-update-17.6" and result["assigned"] == [UDID]
            assert result["progress"]["enrollments"] == 1 and result["progress"]["not_reported"] == 1
            bad = await api.post(f"{API}/os-update", json={"version": "17.6", "deadline": "soon"})
            assert bad.status_code == 400 and "deadline" in bad.json()["error"]["message"]
        await ddm.settled()
        client = DdmClient(device)
        reply = await device.idle()
        await client.follow(reply.command)
        enforcement = client.declarations["os-update-17.6"]
        assert enforcement["Type"] == "com.apple.configuration.softwareupdate.enforcement.specific"
        assert enforcement["Payload"] == {"TargetOSVersion": "17.6", "TargetLocalDateTime": "2027-01-15T18:00:00"}
        assert client.declarations["os-update-17.6.activation"]["Payload"]["StandardConfigurations"] == [
            "os-update-17.6"]
        await client.report_status()
        async with ddm.api() as api:
            progress = (await api.get(f"{API}/status-summary", params={"declaration": "os-update-17.6"})).json()
            assert progress["declarations"][0]["applied"] == 1
            # A newer enforcement replaces the older one on the same enrollments.
            newer = (await api.post(f"{API}/os-update", json={"version": "17.7", "deadline": "2027-03-01",
                                                              "enrollment_ids": [UDID]})).json()
            assert newer["replaced"] == [UDID]
            assert (await api.get(f"{API}/enrollment-sets/{UDID}")).json() == ["os-update-17.7"]
