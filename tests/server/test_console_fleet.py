"""The console's fleet views on the real server: sending to a group (a destructive command confirmed by the
group's member count as it is when sent), the devices page's filter language and group choice, and a device
page showing what a simulated device really reported (inventory answers, DDM status) with its groups and
its identity's renewal."""

from __future__ import annotations

import html
import re

import trio

from appliance.store import audit
from tests.support.console_users import PASSWORDS, Console, add_users
from tests.support.ddm_client import DdmClient
from tests.support.ddm_support import activation, configuration, setup_set, start_ddm_server
from tests.support.fleet_seed import seed_devices

INVENTORY = ["DeviceInformation", "SecurityInfo", "ProfileList", "CertificateList", "InstalledApplicationList"]


async def pending_rows(server) -> list[tuple]:
    return await server.runtime.store.read(lambda conn: [tuple(r) for r in conn.execute(
        "SELECT enrollment_id, command_uuid FROM queue WHERE cancelled_at IS NULL ORDER BY id")])


async def make_group(server, name: str, members: list[str]) -> None:
    async with server.api_client() as api:
        assert (await api.post("/v1/groups", json={"name": name})).status_code in (200, 201)
        if members:
            assert (await api.put(f"/v1/groups/{name}/members/{','.join(members)}")).status_code == 200


def text_of(page: str) -> str:
    """The page's text without tags, whitespace folded (what a reader sees)."""
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", page)).split())


# --- sending to a group ----------------------------------------------------------------------------

async def test_a_destructive_command_to_a_group_is_confirmed_by_its_member_count_when_sent(server):
    await add_users(server, operator="oscar")
    ids = await server.runtime.store.write(lambda conn: seed_devices(conn, 4))
    await make_group(server, "lab", ids[:3])
    await make_group(server, "empty", [])
    async with Console(server) as console:
        await console.login("oscar", PASSWORDS["operator"])
        choose = await console.get("/console/commands/new")
        assert "lab (3 devices)" in choose.text and "empty (0 devices)" in choose.text
        form = await console.get("/console/commands/new?group=lab&type=EraseDevice")
        assert form.status_code == 200 and "3 devices (group lab)" in text_of(form.text)
        assert 'name="group" value="lab"' in form.text and "is destructive" in form.text

        # Typing 1 (what the old form counted for one group:NAME) or anything but 3 is refused.
        for typed in ("1", "", "three", "03x"):
            refused = await console.post_form("/console/commands/new?group=lab&type=EraseDevice",
                                              "/console/commands", {"group": "lab", "type": "EraseDevice",
                                                                    "confirm": typed})
            assert refused.status_code == 400, typed
            assert "type the number of devices (3)" in refused.text
        assert await pending_rows(server) == []

        # The group grows between reading the form and sending: counted again in the sending transaction.
        async with server.api_client() as api:
            assert (await api.put(f"/v1/groups/lab/members/{ids[3]}")).status_code == 200
        stale = await console.post_form("/console/commands/new?group=lab&type=EraseDevice", "/console/commands",
                                        {"group": "lab", "type": "EraseDevice", "confirm": "3"})
        assert stale.status_code == 400 and "type the number of devices (4)" in stale.text
        assert await pending_rows(server) == []

        sent = await console.post_form("/console/commands/new?group=lab&type=EraseDevice", "/console/commands",
                                       {"group": "lab", "type": "EraseDevice", "confirm": "4"})
        assert sent.status_code == 303, sent.text[-2000:]
        command_uuid = sent.headers["location"].rsplit("/", 1)[1]

        nobody = await console.post_form("/console/commands/new?group=empty", "/console/commands",
                                         {"group": "empty", "type": "ProfileList"})
        assert nobody.status_code == 400 and "Group empty has no members" in nobody.text
        unknown = await console.post_form("/console/commands/new", "/console/commands",
                                          {"group": "nope", "type": "ProfileList"})
        assert unknown.status_code == 400 and "No group named “nope”" in unknown.text
    assert sorted(await pending_rows(server)) == sorted((eid, command_uuid) for eid in ids)
    recorded = await server.runtime.store.read(lambda conn: conn.execute(
        "SELECT group_name, members FROM command_groups WHERE command_uuid = ?", (command_uuid,)).fetchall())
    assert [row[0] for row in recorded] == ["lab"]
    entries = await server.runtime.store.read(lambda conn: audit.entries(conn, action="command.send"))
    assert len(entries) == 1 and entries[0]["actor"] == "user oscar"
    assert entries[0]["details"]["group"] == "lab" and entries[0]["details"]["confirmed"] == 4
    assert sorted(entries[0]["target"].split(",")) == sorted(ids)


# --- the devices page ------------------------------------------------------------------------------

async def test_devices_page_filters_with_the_filter_language_and_a_group(server):
    await add_users(server, viewer="victor", operator="oscar")
    ids = await server.runtime.store.write(lambda conn: seed_devices(conn, 5))
    await server.runtime.store.write(lambda conn: conn.execute(
        "UPDATE devices SET os_version = '14.6', model_name = 'iPad Air' WHERE id IN (?, ?)", (ids[1], ids[3])))
    await make_group(server, "Lab", [ids[0], ids[1]])
    async with Console(server) as viewer, Console(server) as operator:
        await viewer.login("victor", PASSWORDS["viewer"])
        await operator.login("oscar", PASSWORDS["operator"])
        page = await viewer.get("/console/devices", params={"filter": 'os_version < 15 and model_name contains "ipad"'})
        assert page.status_code == 200 and "2 devices match" in page.text
        assert ids[1] in page.text and ids[3] in page.text and ids[0] not in page.text
        assert 'value="os_version &lt; 15 and model_name contains &#34;ipad&#34;"' in page.text  # kept to refine

        page = await viewer.get("/console/devices", params={"group": "lab"})  # names are case-insensitive
        assert "2 devices match" in page.text and "Lab (2)" in page.text
        assert ids[0] in page.text and ids[1] in page.text and ids[2] not in page.text
        page = await viewer.get("/console/devices", params={"group": "Lab", "filter": "os_version >= 15"})
        assert "1 device matches" in page.text and ids[0] in page.text and ids[1] not in page.text

        # An operator's "send to all" carries the whole query; a bare group becomes a group target.
        page = await operator.get("/console/devices", params={"group": "Lab"})
        assert 'href="/console/commands/new?group=Lab"' in page.text
        page = await operator.get("/console/devices", params={"group": "Lab", "filter": "os_version >= 15"})
        link = re.search(r'href="(/console/commands/new\?[^"]*all=1[^"]*)"', page.text).group(1)
        form = await operator.get(html.unescape(link))
        assert "1 device (every device where os_version >= 15 in group Lab)" in text_of(form.text)

        sorted_page = await viewer.get("/console/devices", params={"sort": "last_inventory", "dir": "desc"})
        assert sorted_page.status_code == 200 and '<option value="last_inventory" selected>' in sorted_page.text
        assert "Last inventory" in sorted_page.text

        for bad, position in (('os_version <', 13), ("nosuchfield = 1", 1), ("(" * 500 + "name = 1", None),
                              ("x" * 5000, None), ('name = "\x00', None)):
            refused = await viewer.get("/console/devices", params={"filter": bad})
            assert refused.status_code == 400, (bad[:40], refused.status_code)
            assert "The filter cannot be used" in refused.text and "at character" in refused.text
            if position is not None:
                assert f"at character {position})" in refused.text, refused.text[-1500:]
        missing = await viewer.get("/console/devices", params={"group": "nope"})
        assert missing.status_code == 404 and "No group named “nope”" in missing.text
        refused = await operator.get("/console/commands/new", params={"all": "1", "filter": "os_version <"})
        assert refused.status_code == 400 and "The filter cannot be used" in refused.text


# --- the device page -------------------------------------------------------------------------------

async def test_device_page_shows_groups_inventory_renewal_and_declarative_status(nursery, tmp_path):
    ddm = await start_ddm_server(nursery, tmp_path, inventory={"commands": INVENTORY})
    server, udid = ddm.server, "CONSOLE-MAC-1"
    try:
        await add_users(server, viewer="victor")
        async with ddm.device(udid) as device:
            await device.enroll()
            with trio.fail_after(15):
                while len(await ddm.rows("SELECT 1 FROM queue WHERE enrollment_id = ?", udid)) < len(INVENTORY):
                    await trio.sleep(0.02)
            await device.answer_commands()
            await make_group(server, "Staff-Macs", [udid])
            async with ddm.api() as api:
                await setup_set(api, "staff", [configuration("cfg.ok"), configuration("cfg.bad"),
                                               activation("act", "cfg.ok", "cfg.bad")], [udid])
            client = DdmClient(device)
            await client.sync()
            report = client.status_report(invalid={"cfg.bad": "Error.ConfigurationCannotBeApplied"})
            assert (await client.report_status(report)).status == 200
        async with Console(server) as console:
            await console.login("victor", PASSWORDS["viewer"])
            page = await console.get(f"/console/devices/{udid}")
        assert page.status_code == 200
        shown = text_of(page.text)
        assert 'href="/console/devices?group=Staff-Macs"' in page.text
        # Inventory as the simulated Mac answered it (tests/support/device_sim.py).
        for fact in ("Storage 301.2 GB free of 460.4 GB", "Battery 87 %", "Supervised yes", "Activation Lock off",
                     "FileVault on", "2 profiles installed"):
            assert fact in shown, fact
        assert re.search(r"\d+ apps? installed", shown) and re.search(r"\d+ certificates?", shown)
        assert "org.example.wifi.staff" in page.text and "us.zoom.xos" in page.text
        # The test device CA is not the appliance's: the renewal state says so, with its reason.
        assert 'id="renewal-state">not renewable<' in page.text and "issued by another CA" in shown
        # Declarative status per declaration: state, active, valid, reasons.
        rows = dict(re.findall(r'<tr data-declaration="([^"]+)">(.*?)</tr>', page.text, re.S))
        assert set(rows) >= {"cfg.ok", "cfg.bad", "act"}
        assert text_of(rows["cfg.ok"]).startswith("cfg.ok configuration applied yes valid ")
        assert text_of(rows["cfg.bad"]).startswith("cfg.bad configuration invalid ")
        assert "Error.ConfigurationCannotBeApplied" in rows["cfg.bad"]
    finally:
        server.stop()


async def test_device_page_shows_what_apple_business_manager_says_of_it(nursery, tmp_path):
    from tests.support.abm_support import abm_appliance, connect, start_sim, wait_for_state
    from tests.support.dep_sim import DepSim

    sim = DepSim()
    main = sim.add_server("main")
    serial = main.add_devices(2)[0]
    main.modify(serial, description="Front desk Mac")
    server = await abm_appliance(nursery, tmp_path, await start_sim(nursery, sim))
    try:
        await connect(server, sim, "main")
        await wait_for_state(server, "main", lambda s: s["devices"].get("assigned") == 2)
        await add_users(server, viewer="victor")
        ids = await server.runtime.store.write(lambda conn: seed_devices(conn, 2))
        await server.runtime.store.write(lambda conn: conn.execute(
            "UPDATE devices SET serial_number = ? WHERE id = ?", (serial, ids[0])))
        async with Console(server) as console:
            await console.login("victor", PASSWORDS["viewer"])
            enrolled = text_of((await console.get(f"/console/devices/{ids[0]}")).text)
            other = await console.get(f"/console/devices/{ids[1]}")
        assert "Apple Business Manager Status enrolled MDM server main" in enrolled
        assert "Front desk Mac" in enrolled and "Profile assigned" in enrolled
        assert other.status_code == 200 and 'id="abm"' not in other.text  # not in ABM: no such part
    finally:
        server.stop()
