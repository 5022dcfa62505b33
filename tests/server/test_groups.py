"""Groups against the real server: static groups changed over the API, dynamic groups following the facts
simulated devices report, group:NAME in enqueue and push (NanoMDM's routes and the JSON one) with the
membership recorded with the command, and every refusal changing nothing."""

from __future__ import annotations

import plistlib
from datetime import timedelta

import pytest
import trio

from appliance.clock import OffsetClock
from tests.server.test_inventory import start_with_apns, wait_for_queue
from tests.server.test_retention import _pass_after
from tests.support.ddm_support import notifier_settled
from tests.support.fleet_seed import command_plist, seed_devices
from tests.support.mdm_support import start_mdm_server


@pytest.fixture
async def fleet(nursery, tmp_path):
    mdm, standin = await start_with_apns(nursery, tmp_path, inventory={"commands": ["DeviceInformation"]})
    yield mdm, standin
    mdm.server.stop()


async def snapshot(mdm) -> str:
    # A membership change is followed by the DDM notifier in a transaction of its own: compare once it is done.
    await notifier_settled(mdm.rows)
    return await mdm.dump()


async def test_static_groups_over_the_api_and_refusals_that_change_nothing(fleet):
    mdm, _ = fleet
    ids = await mdm.server.runtime.store.write(lambda conn: seed_devices(conn, 4))
    async with mdm.server.api_client() as api:
        created = await api.post("/v1/groups", json={"name": "Lab-Macs", "description": "room 101"})
        assert created.status_code == 201, created.text
        assert created.json() | {"created_at": None, "updated_at": None} == {
            "name": "Lab-Macs", "kind": "static", "filter": None, "description": "room 101",
            "created_at": None, "updated_at": None, "member_count": 0}
        added = await api.put(f"/v1/groups/lab-macs/members/{ids[0]},{ids[1]},{ids[0]}")
        assert added.json() == {"name": "Lab-Macs", "added": 2, "member_count": 2}
        before = await snapshot(mdm)
        for method, path, body, status, code in [
            ("PUT", f"/v1/groups/lab-macs/members/{ids[2]},NOPE", None, 404, "unknown_device"),
            ("PUT", f"/v1/groups/nope/members/{ids[2]}", None, 404, "group_not_found"),
            ("POST", "/v1/groups", {"name": "LAB-MACS"}, 409, "group_exists"),
            ("POST", "/v1/groups", {"name": "group:x"}, 400, "bad_group_name"),
            ("POST", "/v1/groups", {"name": ""}, 400, "bad_group_name"),
            ("POST", "/v1/groups", {"name": "x", "filter": "os_version <"}, 400, "bad_filter"),
            ("POST", "/v1/groups", {"name": "x", "filter": 7}, 400, "bad_request"),
            ("POST", "/v1/groups", {"name": "x", "colour": "red"}, 400, "bad_request"),
            ("POST", "/v1/groups", {"name": "x", "filter": "last_seen < 3d ago"}, 400, "bad_filter"),
            ("PATCH", "/v1/groups/lab-macs", {"filter": "os_version < 15"}, 400, "group_not_dynamic"),
            ("DELETE", "/v1/groups/nope", None, 404, "group_not_found"),
        ]:
            response = await api.request(method, path, json=body)
            assert (response.status_code, response.json()["error"]["code"]) == (status, code), (path, body)
        assert await snapshot(mdm) == before
        refused = await api.post("/v1/groups", json={"name": "x", "filter": 'os_version < "17'})
        assert refused.json()["error"]["position"] == 14 and "never closed" in refused.json()["error"]["message"]

        listed = (await api.get("/v1/groups")).json()["groups"]
        assert [(g["name"], g["member_count"]) for g in listed] == [("Lab-Macs", 2)]
        members = (await api.get("/v1/devices", params={"group": "LAB-MACS"})).json()["devices"]
        assert [d["id"] for d in members] == ids[:2]
        device = (await api.get(f"/v1/devices/{ids[0]}")).json()
        assert device["groups"] == ["Lab-Macs"]
        removed = await api.delete(f"/v1/groups/lab-macs/members/{ids[0]},{ids[3]}")
        assert removed.json() == {"name": "Lab-Macs", "removed": 1, "member_count": 1}
        patched = await api.patch("/v1/groups/lab-macs", json={"description": ""})
        assert patched.json()["description"] is None
        deleted = await api.delete("/v1/groups/Lab-Macs")
        assert deleted.json() == {"name": "Lab-Macs", "deleted": True, "members_removed": 1}
        assert (await api.get("/v1/groups/lab-macs")).status_code == 404


async def test_dynamic_groups_follow_what_devices_report_and_say_so(fleet):
    mdm, _ = fleet
    runtime = mdm.server.runtime
    async with mdm.server.api_client() as api:
        created = await api.post("/v1/groups", json={
            "name": "old-macs", "filter": 'os_version < "14.5" and model_name contains "macbook"'})
        assert created.json()["kind"] == "dynamic" and created.json()["member_count"] == 0
        async with mdm.device("MAC-A") as a, mdm.device("MAC-B") as b:
            changed = runtime.group_changes.changed()
            await a.enroll()  # Authenticate says macOS 14.4 on a MacBook Pro: it joins at once
            await b.enroll()
            with trio.fail_after(5):
                await changed.wait()
            assert (await api.get("/v1/groups/old-macs")).json()["member_count"] == 2
            await wait_for_queue(mdm, "MAC-A", 1)
            a.os_version = "14.5"
            changed = runtime.group_changes.changed()
            await a.answer_commands()  # DeviceInformation: now 14.5, so it leaves
            assert changed.is_set()
        assert [d["id"] for d in (await api.get("/v1/devices?group=old-macs")).json()["devices"]] == ["MAC-B"]
        assert (await api.get("/v1/devices/MAC-A")).json()["groups"] == []
        # A new filter takes effect at once.
        patched = await api.patch("/v1/groups/old-macs", json={"filter": "os_version >= 14.5"})
        assert patched.json()["member_count"] == 1
    changes = await mdm.rows("SELECT group_name, device_id, change FROM group_changes ORDER BY id")
    assert [(c["device_id"], c["change"]) for c in changes] == [
        ("MAC-A", "joined"), ("MAC-B", "joined"), ("MAC-A", "left"), ("MAC-A", "joined"), ("MAC-B", "left")]


async def test_group_names_work_in_enqueue_and_push_and_the_membership_is_recorded(fleet):
    mdm, standin = fleet
    async with mdm.server.api_client() as api:
        assert (await api.post("/v1/groups", json={"name": "lab"})).status_code == 201
        assert (await api.post("/v1/groups", json={"name": "empty"})).status_code == 201
        async with mdm.device("MAC-C") as c, mdm.device("MAC-D") as d, mdm.device("MAC-E") as e:
            for device in (c, d, e):
                await device.enroll()
                await wait_for_queue(mdm, device.udid, 1)
            assert (await api.put("/v1/groups/lab/members/MAC-C,MAC-D")).status_code == 200
            pushes = len(standin.requests)

            # NanoMDM's raw enqueue: group:NAME next to a plain id; each member gets its own entry.
            uuid, body = command_plist("ProfileList")
            raw = await api.put("/v1/enqueue/group:LAB,MAC-E", content=body)
            assert raw.status_code == 200, raw.text
            assert set(raw.json()["status"]) == {"MAC-C", "MAC-D", "MAC-E"}
            assert all(entry.get("push_result") for entry in raw.json()["status"].values())
            assert {r.token for r in standin.requests[pushes:]} == {x.push_token.hex() for x in (c, d, e)}

            # The JSON route; the membership at enqueue time stays with the command after it changes.
            sent = await api.post("/v1/commands", json={"enrollment_ids": ["group:lab"], "no_push": True,
                                                        "command": {"RequestType": "CertificateList"}})
            assert set(sent.json()["status"]) == {"MAC-C", "MAC-D"}
            assert (await api.delete("/v1/groups/lab/members/MAC-D")).status_code == 200
            command = (await api.get(f"/v1/commands/{sent.json()['command_uuid']}")).json()
            assert [(g["name"], g["kind"], g["members"]) for g in command["groups"]] == [
                ("lab", "static", ["MAC-C", "MAC-D"])]
            assert (await api.get(f"/v1/commands/{uuid}")).json()["groups"][0]["members"] == ["MAC-C", "MAC-D"]

            # Unknown and empty groups say so per entry (NanoMDM's 500: every entry failed).
            uuid, body = command_plist("ProfileList")
            nobody = await api.put("/v1/enqueue/group:nope,group:empty", content=body)
            assert nobody.status_code == 500
            assert nobody.json()["status"] == {"group:nope": {"command_error": "unknown group"},
                                               "group:empty": {"command_error": "group has no members"}}
            assert (await api.get(f"/v1/commands/{uuid}")).status_code == 404  # nothing stored

            # Push: the group's members now, each answered by APNs.
            pushed = await api.post("/v1/push/group:lab,group:nope")
            assert pushed.status_code == 207
            assert set(pushed.json()["status"]) == {"MAC-C", "group:nope"}
            assert pushed.json()["status"]["MAC-C"]["push_result"]
            assert pushed.json()["status"]["group:nope"] == {"push_error": "unknown group"}

            answered = dict((t, u) for u, t in await c.answer_commands())
            assert {"ProfileList", "CertificateList"} <= set(answered)
            result = await mdm.rows("SELECT raw FROM results WHERE command_uuid = ?", answered["ProfileList"])
            assert plistlib.loads(result[0]["raw"])["ProfileList"]


async def test_the_membership_log_is_pruned_with_inventory_history_and_memberships_stay(nursery, tmp_path):
    mdm = await start_mdm_server(nursery, tmp_path, clock=OffsetClock(), retention={"inventory_history": "30d"})
    ids = await mdm.server.runtime.store.write(lambda conn: seed_devices(conn, 3))
    async with mdm.server.api_client() as api:
        assert (await api.post("/v1/groups", json={"name": "lab"})).status_code == 201
        assert (await api.put(f"/v1/groups/lab/members/{ids[0]},{ids[1]}")).status_code == 200
        await _pass_after(mdm.server, timedelta(days=20))
        assert (await api.put(f"/v1/groups/lab/members/{ids[2]}")).status_code == 200
        await _pass_after(mdm.server, timedelta(days=15))
        log = await mdm.rows("SELECT device_id, change FROM group_changes ORDER BY id")
        assert log == [{"device_id": ids[2], "change": "joined"}]
        assert (await api.get("/v1/groups/lab")).json()["member_count"] == 3
        # The newest change always stays: followers go by id, and an emptied log would hand out ids again.
        await _pass_after(mdm.server, timedelta(days=40))
        assert await mdm.rows("SELECT device_id, change FROM group_changes ORDER BY id") == log
    mdm.server.stop()
