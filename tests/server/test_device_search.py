"""GET /v1/devices as a search: text, the filter language, group, last seen, sorted and paged by keyset,
on a fleet written with plain SQL; the parameters it always took keep working."""

from __future__ import annotations

import base64
import json

import pytest

from tests.support.fleet_seed import seed_devices

OS_VERSIONS = ["17.10", "17.9", "16.7.8", "17.4.1", "9.3.5"]


def seed(conn) -> list[str]:
    ids = seed_devices(conn, 40)
    ids += seed_devices(conn, 5, start=100, active=False)
    for index, device in enumerate(ids):
        ipad = index % 2 == 0
        conn.execute(
            "UPDATE devices SET os_version = ?, model_name = ?, model = ?, device_name = ? WHERE id = ?",
            (OS_VERSIONS[index % 5], "iPad" if ipad else "MacBook Air", "iPad13,18" if ipad else "Mac14,2",
             f"{'Lab iPad' if ipad else 'Staff Mac'} {index:02d}", device))
        conn.execute("UPDATE enrollments SET last_seen_at = ? WHERE id = ?",
                     (f"2026-0{1 + index % 5}-15T10:00:00.000000Z", device))
        conn.execute("INSERT INTO device_inventory (device_id, supervised, battery_level, inventory_at)"
                     " VALUES (?, ?, ?, ?)", (device, int(ipad), index / 50, "2026-05-01T00:00:00.000000Z"))
    return ids


@pytest.fixture
async def fleet(server):
    ids = await server.runtime.store.write(seed)
    async with server.api_client() as api:
        yield api, ids


async def every_page(api, **params) -> list[dict]:
    rows, cursor = [], None
    while True:
        answer = (await api.get("/v1/devices", params={**params, "limit": 7, **({"cursor": cursor} if cursor else {})}))
        assert answer.status_code == 200, answer.text
        page = answer.json()
        rows += page["devices"]
        cursor = page["next_cursor"]
        if cursor is None:
            return rows


async def test_filter_by_os_version_as_versions_and_model_name(fleet):
    api, ids = fleet
    rows = await every_page(api, filter='os_version < "17.5" and model_name contains "iPad"')
    assert rows and all(r["model_name"] == "iPad" and r["os_version"] in ("16.7.8", "17.4.1", "9.3.5") for r in rows)
    newer = await every_page(api, filter="os_version > 17.9")
    assert {r["os_version"] for r in newer} == {"17.10"} and len(newer) == 9
    answer = (await api.get("/v1/devices", params={"filter": "os_version > 17.9", "limit": 2})).json()
    assert answer["total"] == 9 and len(answer["devices"]) == 2


@pytest.mark.parametrize("sort", ["name", "serial", "model", "os", "last_seen", "last_inventory", "id"])
@pytest.mark.parametrize("order", ["asc", "desc"])
async def test_every_sort_pages_through_every_device_once_in_order(fleet, sort, order):
    api, ids = fleet
    rows = await every_page(api, sort=sort, order=order)
    assert sorted(r["id"] for r in rows) == sorted(ids)
    if sort == "os":
        from appliance.store.device_filter import version_key
        keys = [(version_key(r["os_version"]), r["id"]) for r in rows]
        assert keys == sorted(keys, reverse=order == "desc")
        assert (rows[0]["os_version"] if order == "asc" else rows[-1]["os_version"]) == "9.3.5"


async def test_search_by_name_serial_group_and_last_seen(fleet):
    api, ids = fleet
    assert [r["id"] for r in await every_page(api, q="lab ipad 04")] == [ids[4]]
    assert [r["serial_number"] for r in await every_page(api, filter="serial = ser000007")] == ["SER000007"]
    assert (await api.post("/v1/groups", json={"name": "pilot"})).status_code == 201
    assert (await api.put(f"/v1/groups/pilot/members/{ids[1]},{ids[3]}")).status_code == 200
    assert [r["id"] for r in await every_page(api, group="PILOT", sort="id")] == sorted([ids[1], ids[3]])
    assert [r["id"] for r in await every_page(api, filter="group = pilot and os_version = 17.9")] == [ids[1]]
    stale = await every_page(api, filter='last_seen < "2026-02-01"', sort="last_seen")
    assert stale and all(r["last_seen_at"] < "2026-02-01" for r in stale)
    fresh = await every_page(api, filter="last_seen >= 2026-05-01 and not active = false")
    assert {r["last_seen_at"][:7] for r in fresh} == {"2026-05"} and all(r["active"] for r in fresh)
    low = await every_page(api, filter="battery < 10 and supervised = true")
    assert {r["id"] for r in low} == {ids[0], ids[2], ids[4]}


async def test_the_parameters_it_always_took_still_work(fleet):
    api, ids = fleet
    page = (await api.get("/v1/devices", params={"limit": 3})).json()
    assert [r["id"] for r in page["devices"]] == sorted(ids)[:3]  # by id, as before
    for key in ("serial_number", "model", "os_version", "enrolled", "active", "last_seen_at", "last_push_result",
                "pending_commands", "has_bootstrap_token", "authenticated_at"):
        assert key in page["devices"][0]
    old_cursor = base64.urlsafe_b64encode(json.dumps(sorted(ids)[2]).encode()).decode().rstrip("=")
    after = (await api.get("/v1/devices", params={"limit": 3, "cursor": old_cursor})).json()
    assert [r["id"] for r in after["devices"]] == sorted(ids)[3:6]
    assert [r["id"] for r in (await api.get("/v1/devices", params={"serial": "SER000003"})).json()["devices"]] \
        == [ids[3]]
    assert (await api.get("/v1/devices", params={"udid": ids[5]})).json()["devices"][0]["id"] == ids[5]
    inactive = (await api.get("/v1/devices", params={"active": "false"})).json()
    assert inactive["total"] == 5 and not any(r["active"] for r in inactive["devices"])


@pytest.mark.parametrize("params, code", [
    ({"filter": "os_version <"}, "bad_filter"),
    ({"filter": "x" * 3000}, "bad_filter"),
    ({"filter": "name = 'a' or"}, "bad_filter"),
    ({"sort": "password"}, "bad_parameter"),
    ({"order": "up"}, "bad_parameter"),
    ({"q": "x" * 201}, "bad_parameter"),
    ({"cursor": "bm90IGpzb24"}, "bad_cursor"),
    ({"sort": "name", "cursor": base64.urlsafe_b64encode(b'"an-id"').decode()}, "bad_cursor"),
    ({"group": "nope"}, "group_not_found"),
])
async def test_bad_search_parameters_are_refused_clearly(fleet, params, code):
    api, _ = fleet
    answer = await api.get("/v1/devices", params=params)
    assert answer.status_code in (400, 404) and answer.json()["error"]["code"] == code
    if code == "bad_filter":
        assert answer.json()["error"]["position"] >= 1
