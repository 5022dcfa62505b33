"""The CLI's device search and groups as operators run them (`python -m appliance ...` in a subprocess)
against the real server: `devices --filter/--search/--group/--sort`, `groups`, `group ...`, and group:NAME
in `enqueue`."""

from __future__ import annotations

import json

from tests.server.test_cli_admin import cli
from tests.support.fleet_seed import seed_devices
from tests.support.harness import free_port, make_config, start_server


def _seed(conn) -> list[str]:
    ids = seed_devices(conn, 6)
    for index, (device, version) in enumerate(zip(ids, ["17.10", "17.9", "16.1", "17.10", "9.3.5", "17.2"])):
        conn.execute("UPDATE devices SET os_version = ?, model_name = ? WHERE id = ?",
                     (version, "iPad" if index % 2 else "MacBook Air", device))
    return ids


async def test_cli_searches_devices_and_manages_groups(nursery, tmp_path):
    config = make_config(tmp_path, port=free_port())
    server = await start_server(nursery, config)
    ids = await server.runtime.store.write(_seed)

    code, out, err = await cli(config, "devices", "--filter", 'os_version < "17.5"', "--sort", "os", "--json")
    assert code == 0, err
    assert [d["os_version"] for d in json.loads(out)] == ["9.3.5", "16.1", "17.2"]
    code, out, err = await cli(config, "devices", "--filter", "model_name contains ipad", "--sort", "os", "--desc",
                               "--limit", "2", "--json")
    assert code == 0 and [d["os_version"] for d in json.loads(out)] == ["17.10", "17.9"]
    code, out, err = await cli(config, "devices", "--search", "ser000004")
    assert code == 0 and ids[4] in out and "1 device(s)" in err

    code, out, err = await cli(config, "devices", "--filter", "os_versoin > 17")
    assert code == 1 and out == ""
    assert err.count("\n") == 1 and "did you mean os_version" in err and "position 1" in err

    code, out, err = await cli(config, "group", "create", "lab", "--description", "Room 101")
    assert (code, out.strip()) == (0, "static group lab created with 0 member(s)"), err
    code, out, err = await cli(config, "group", "add", "lab", "-", stdin=f"{ids[0]}\n{ids[1]}\n".encode())
    assert code == 0 and "2 device(s) added" in out, err
    code, out, err = await cli(config, "group", "create", "old", "--filter", "os_version < 17")
    assert code == 0 and "dynamic group old created with 2 member(s)" in out, err
    code, out, err = await cli(config, "groups")
    lines = out.splitlines()
    assert code == 0 and lines[0].split()[:3] == ["NAME", "KIND", "MEMBERS"]
    assert lines[1].split()[:3] == ["lab", "static", "2"] and lines[2].split()[:3] == ["old", "dynamic", "2"]

    code, out, err = await cli(config, "devices", "--group", "lab", "--json")
    assert code == 0 and [d["id"] for d in json.loads(out)] == ids[:2]
    code, out, err = await cli(config, "group", "show", "old", "--json")
    assert code == 0 and json.loads(out)["members"] == sorted([ids[2], ids[4]])
    code, out, err = await cli(config, "device", ids[0])
    assert code == 0 and "groups:         lab" in out and "inventory:      none yet" in out

    code, out, err = await cli(config, "enqueue", "group:lab", ids[5], "--type", "ProfileList", "--nopush", "--json")
    assert code == 0, err
    answer = json.loads(out)
    assert set(answer["status"]) == {ids[0], ids[1], ids[5]}
    recorded = await server.runtime.store.read(lambda conn: conn.execute(
        "SELECT group_name, members FROM command_groups WHERE command_uuid = ?", (answer["command_uuid"],)).fetchall())
    assert [(row[0], json.loads(row[1])) for row in recorded] == [("lab", ids[:2])]

    code, out, err = await cli(config, "group", "add", "old", ids[0])
    assert code == 1 and "dynamic group" in err
    code, out, err = await cli(config, "group", "set", "old", "--filter", "os_version <")
    assert code == 1 and "position" in err
    code, out, err = await cli(config, "group", "remove", "lab", ids[0])
    assert code == 0 and "1 device(s) removed; lab has 1" in out
    code, out, err = await cli(config, "group", "delete", "lab")
    assert code == 0 and "group lab deleted (1 member(s) removed)" in out
    code, out, err = await cli(config, "group", "show", "lab")
    assert code == 1 and "no group named" in err
