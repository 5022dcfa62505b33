"""DDM sets assigned to groups of devices, against the real server: a member syncs the group's declarations
and a non-member cannot fetch them; joining and leaving (by hand, by an inventory answer, by the group's
deletion) each queue one DeclarativeManagement command (coalesced with a waiting one) and change what the
device holds."""

from __future__ import annotations

import json

import pytest

from tests.support.ddm_client import DdmClient
from tests.support.ddm_support import API, activation, configuration, setup_set, start_ddm_server
from tests.support.device_sim import DeviceSim

MEMBER, OUTSIDER = "DDM-GROUP-0001", "DDM-GROUP-0002"
LAB = [configuration("cfg.lab"), activation("act.lab", "cfg.lab")]


@pytest.fixture
async def ddm(nursery, tmp_path):
    handle = await start_ddm_server(nursery, tmp_path, inventory={"commands": ["DeviceInformation"]})
    yield handle
    handle.server.stop()


async def follow_command(ddm, device: DeviceSim, client: DdmClient):
    """The one waiting DeclarativeManagement command, fetched, followed and acknowledged (other commands, the
    inventory's, are answered as the device would)."""
    [waiting] = await ddm.pending_ddm_commands(device.udid)
    reply = await device.idle()
    while reply.command["Command"]["RequestType"] != "DeclarativeManagement":
        reply = await device.acknowledge(reply.command_uuid, **device.result_for(reply.command["Command"]))
    assert reply.command_uuid == waiting["command_uuid"]
    result = await client.follow(reply.command)
    await device.acknowledge(reply.command_uuid)
    return result


async def set_up(ddm, api, device: DeviceSim) -> DdmClient:
    await device.enroll()
    client = DdmClient(device)
    await client.sync()
    return client


async def test_a_static_groups_set_reaches_its_members_only_and_follows_membership(ddm):
    async with ddm.device(MEMBER) as member, ddm.device(OUTSIDER) as outsider, ddm.api() as api:
        member_client, outsider_client = await set_up(ddm, api, member), await set_up(ddm, api, outsider)
        await setup_set(api, "lab-set", LAB, [])
        assert (await api.post("/v1/groups", json={"name": "Lab"})).status_code == 201
        assert (await api.put(f"/v1/groups/lab/members/{MEMBER}")).status_code == 200
        for method, path, status in [("PUT", "group-sets/nope", 404), ("GET", "group-sets/nope", 404),
                                     ("PUT", "group-sets/bad%20name", 400)]:
            answer = await api.request(method, f"{API}/{path}", params={"set": "lab-set"})
            assert answer.status_code == status, (path, answer.text)
        assert (await api.put(f"{API}/group-sets/lab", params={"set": "lab-set"})).status_code == 204
        assert (await api.put(f"{API}/group-sets/LAB", params={"set": "lab-set"})).status_code == 304
        assert (await api.get(f"{API}/group-sets/lab")).json() == ["lab-set"]
        await ddm.settled()
        assert await ddm.pending_ddm_commands(OUTSIDER) == []

        synced = await follow_command(ddm, member, member_client)
        assert {"cfg.lab", "act.lab"} <= set(synced.fetched)
        assert member_client.declarations["cfg.lab"]["Payload"] == {"Echo": "cfg.lab"}
        outsider_items = await outsider_client.declaration_items()
        assert "cfg.lab" not in json.dumps(outsider_items)
        assert (await outsider_client.declaration("configuration", "cfg.lab")).status == 404
        overview = (await api.get(f"{API}/enrollments/{MEMBER}")).json()
        assert (overview["sets"], overview["groups"]) == (["lab-set"], {"Lab": ["lab-set"]})
        [summary] = (await api.get(f"{API}/status-summary", params={"declaration": "cfg.lab"})).json()["declarations"]
        assert summary["enrollments"] == 1

        # Joining while a DeclarativeManagement command already waits: still one, carrying the new tokens.
        assert (await api.post(f"{API}/notify", params={"id": OUTSIDER})).status_code == 204
        await ddm.settled()
        [before] = await ddm.pending_ddm_commands(OUTSIDER)
        assert (await api.put(f"/v1/groups/lab/members/{OUTSIDER}")).status_code == 200
        await ddm.settled()
        [after] = await ddm.pending_ddm_commands(OUTSIDER)
        assert after["command_uuid"] == before["command_uuid"] and after["body"] != before["body"]
        joined = await follow_command(ddm, outsider, outsider_client)
        assert {"cfg.lab", "act.lab"} <= set(joined.fetched)
        [summary] = (await api.get(f"{API}/status-summary", params={"declaration": "cfg.lab"})).json()["declarations"]
        assert summary["enrollments"] == 2
        # The same summary for one group's devices only (a group without sets of its own: nobody is told).
        assert (await api.post("/v1/groups", json={"name": "front"})).status_code == 201
        assert (await api.put(f"/v1/groups/front/members/{MEMBER}")).status_code == 200
        for group, reached in (("FRONT", 1), ("lab", 2)):
            answer = await api.get(f"{API}/status-summary", params={"declaration": "cfg.lab", "group": group})
            assert answer.json()["declarations"][0]["enrollments"] == reached, (group, answer.text)
        assert (await api.get(f"{API}/status-summary", params={"group": "nope"})).status_code == 404
        assert (await api.delete("/v1/groups/front")).status_code == 200
        await ddm.settled()

        # Leaving: one command, and the declarations are gone from its manifest.
        assert (await api.delete(f"/v1/groups/lab/members/{OUTSIDER}")).status_code == 200
        await ddm.settled()
        left = await follow_command(ddm, outsider, outsider_client)
        assert sorted(left.removed) == ["act.lab", "cfg.lab"]
        assert (await outsider_client.declaration("configuration", "cfg.lab")).status == 404
        assert await ddm.pending_ddm_commands(MEMBER) == []  # the member was not told: nothing changed for it
        # notify?id=group:NAME tells the group's members now; an unknown group is a 404 and tells nobody.
        assert (await api.post(f"{API}/notify", params={"id": "group:nope"})).status_code == 404
        assert (await api.post(f"{API}/notify", params={"id": "group:lab"})).status_code == 204
        await ddm.settled()
        assert len(await ddm.pending_ddm_commands(MEMBER)) == 1 and await ddm.pending_ddm_commands(OUTSIDER) == []

        # Deleting the group takes its assignment with it (a new group of that name starts without sets).
        assert (await api.delete("/v1/groups/lab")).status_code == 200
        await ddm.settled()
        gone = await follow_command(ddm, member, member_client)
        assert sorted(gone.removed) == ["act.lab", "cfg.lab"]
        assert (await api.post("/v1/groups", json={"name": "lab"})).status_code == 201
        assert (await api.get(f"{API}/group-sets/lab")).json() == []
        assert await ddm.rows("SELECT * FROM ddm_group_sets") == []


async def test_a_dynamic_groups_set_follows_what_the_inventory_answers(ddm):
    async with ddm.device(MEMBER) as device, ddm.api() as api:
        await setup_set(api, "new-macs", LAB, [])
        created = await api.post("/v1/groups", json={"name": "new-macs", "filter": 'os_version >= "14.5"'})
        assert created.status_code == 201, created.text
        assert (await api.put(f"{API}/group-sets/new-macs", params={"set": "new-macs"})).status_code == 204
        client = await set_up(ddm, api, device)  # macOS 14.4: not a member
        assert "cfg.lab" not in client.declarations

        device.os_version = "14.5"
        assert [t for _, t in await device.answer_commands()] == ["DeviceInformation"]
        await ddm.settled()
        assert (await api.get(f"{API}/group-sets/new-macs")).json() == ["new-macs"]
        joined = await follow_command(ddm, device, client)
        assert {"cfg.lab", "act.lab"} <= set(joined.fetched)

        device.os_version = "14.4"
        asked = await api.post("/v1/commands", json={"enrollment_ids": [MEMBER], "no_push": True,
                                                     "command": {"RequestType": "DeviceInformation",
                                                                 "Queries": ["OSVersion"]}})
        assert asked.status_code == 200, asked.text
        assert [t for _, t in await device.answer_commands()] == ["DeviceInformation"]
        await ddm.settled()
        assert len(await ddm.pending_ddm_commands(MEMBER)) == 1
        left = await follow_command(ddm, device, client)
        assert sorted(left.removed) == ["act.lab", "cfg.lab"]
