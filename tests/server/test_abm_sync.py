"""Apple Business Manager sync against the DEP simulator (tests/support/dep_sim.py): token import, fetch and
sync with durable cursors, the echoed cursor, Retry-After, session and cursor expiry, assignment with its
failures and retries, several ABM servers, restart in the middle of a fetch, expiry warnings, webhooks."""

from __future__ import annotations

import json
from datetime import timedelta

import trio

from appliance.clock import OffsetClock
from appliance.identity import abm_token
from appliance.store import abm as abm_store
from appliance.store.db import connect_sync
from appliance.supervisor import status_line
from tests.support.abm_support import abm_appliance, abm_devices, connect, server_state, start_sim, wait_for_state
from tests.support.dep_sim import DepSim
from tests.support.harness import free_port, start_server
from tests.support.webhook_receiver import Receiver, Running


def assigned(count: int):
    return lambda state: state["devices"].get("assigned") == count


async def test_token_import_refuses_a_wrong_key_an_expired_token_and_junk_then_a_good_one_syncs_at_once(
        tmp_path, nursery):
    sim = DepSim()
    sim.add_server("main").add_devices(3)
    server = await abm_appliance(nursery, tmp_path, await start_sim(nursery, sim))
    async with server.api_client() as api:
        made = await api.post("/v1/abm/servers/main")
        assert made.status_code == 201 and "BEGIN CERTIFICATE" in made.json()["certificate"]
        again = await api.post("/v1/abm/servers/main")
        assert again.status_code == 409 and again.json()["error"]["code"] == "abm_server_exists"
        certificate = made.json()["certificate"].encode()
        assert (await api.get("/v1/abm/servers/main/certificate")).text == certificate.decode()

        other = abm_token.make_keypair("other", "Elsewhere")
        expired = {**sim.servers["main"].token_json(), "access_token_expiry": "2021-03-04T05:06:07Z"}
        for data, phrase in [(sim.token_file("main", other.certificate_pem), "encrypted to another certificate"),
                             (sim.token_file("main", certificate, token=expired), "expired on 2021-03-04"),
                             (b"not a token at all", "not a server token file")]:
            refused = await api.put("/v1/abm/servers/main/token", content=data)
            assert refused.status_code == 400, refused.text
            error = refused.json()["error"]
            assert error["code"] == "invalid_server_token" and phrase in error["message"]
            assert "\n" not in error["message"]
        state = await server_state(server, "main")
        assert not state["has_token"] and state["token_expires_at"] is None
        assert sim.calls("/session") == []  # nothing was used, nothing changed

        missing = await api.put("/v1/abm/servers/nobody/token", content=sim.token_file("main", certificate))
        assert missing.status_code == 404
        good = await api.put("/v1/abm/servers/main/token", content=sim.token_file("main", certificate, cipher="des3"))
        assert good.status_code == 200 and 364 <= good.json()["token_days_left"] <= 365
    # Used at once, without a restart: the worker authenticates, defines the profile, fetches and assigns.
    state = await wait_for_state(server, "main", assigned(3))
    assert state["account"]["server_name"] == "main (simulated)" and state["profile_uuid"]
    assert len(sim.calls("/session")) == 1
    server.stop()


async def test_a_fetch_of_2500_devices_in_pages_then_syncs_apply_what_changed(tmp_path, nursery):
    sim = DepSim()
    main = sim.add_server("main")
    serials = main.add_devices(2500)
    server = await abm_appliance(nursery, tmp_path, await start_sim(nursery, sim))
    await connect(server, sim, "main")
    state = await wait_for_state(server, "main", assigned(2500))
    assert state["phase"] == "sync" and state["last_full_fetch_at"]

    fetches = sim.calls("/server/devices")
    assert len(fetches) == 5 and [f.body["limit"] for f in fetches] == [500] * 5
    assert fetches[0].cursor is None
    assert [f.cursor for f in fetches[1:]] == [f.answered_cursor for f in fetches[:-1]]
    assert [len(f.answer["devices"]) for f in fetches] == [500] * 5
    assignments = sim.calls("/profile/devices")
    assert sorted(len(a.body["devices"]) for a in assignments) == [500, 1000, 1000]
    profile_uuid = state["profile_uuid"]
    assert all(device["profile_uuid"] == profile_uuid for device in main.devices.values())
    defined = sim.calls("/profile")[0].body
    assert defined["url"] == "https://127.0.0.1:8443/mdm/ade" and defined["is_mdm_removable"] is False
    assert defined["anchor_certs"]  # the appliance's own CA: the device must trust the url's TLS certificate

    renamed, gone = serials[0], serials[1]
    main.modify(renamed, description="Front desk Mac")
    main.remove(gone)
    new = main.add_devices(3, prefix="C02NEW")
    async with server.api_client() as api:
        started = await api.post("/v1/abm/servers/main/sync")
        assert started.status_code == 202
    state = await wait_for_state(server, "main", lambda s: s["devices"].get("assigned") == 2502
                                 and s["devices"].get("removed") == 1)
    syncs = sim.calls("/devices/sync")
    assert syncs and syncs[0].cursor == fetches[-1].answered_cursor  # the fetch's last cursor starts the syncs
    assert all(s.status == 200 for s in syncs)
    assert len(sim.calls("/server/devices")) == 5  # no second full fetch
    by_serial = {d["serial_number"]: d for d in await abm_devices(server, server="main")}
    assert by_serial[renamed]["description"] == "Front desk Mac"
    assert by_serial[gone]["assign_state"] == "removed" and by_serial[gone]["deleted_at"]
    assert by_serial[gone]["status"] == "removed from this MDM server in Apple Business Manager"
    assert all(by_serial[s]["assign_state"] == "assigned" and by_serial[s]["profile_uuid"] == profile_uuid
               for s in new)

    # The device list shows them before they enroll, marked as such, after the devices that did.
    async with server.api_client() as api:
        first = (await api.get("/v1/devices", params={"limit": 1000})).json()
        assert len(first["devices"]) == 1000 and first["next_cursor"]
        assert first["total"] == 2502  # the removed one is not counted
        row = first["devices"][0]
        assert row["id"] is None and row["enrolled"] is False and row["status"] == "not enrolled yet (profile assigned)"
        assert row["abm"]["server"] == "main"
        listed = len(first["devices"])
        cursor = first["next_cursor"]
        while cursor:
            page = (await api.get("/v1/devices", params={"limit": 1000, "cursor": cursor})).json()
            listed += len(page["devices"])
            cursor = page["next_cursor"]
        assert listed == 2502  # the removed one is not listed
        one = (await api.get("/v1/devices", params={"serial": new[0]})).json()["devices"]
        assert [d["serial_number"] for d in one] == [new[0]]
        assert (await api.get("/v1/devices", params={"active": "true"})).json()["devices"] == []
    server.stop()


async def test_every_device_gets_the_profile_after_failures_throttling_and_retry_after(tmp_path, nursery):
    clock = OffsetClock()
    sim = DepSim()
    main = sim.add_server("main")
    serials = main.add_devices(20)
    failing_once, failing_twice, cooling = serials[0], serials[1], serials[2]
    main.fail_assign = {failing_once: 1, failing_twice: 2}
    main.cooldown = {cooling}
    sim.fail("/profile/devices", 503, retry_after="600")
    server = await abm_appliance(nursery, tmp_path, await start_sim(nursery, sim), clock=clock,
                                 abm={"assign_retry_initial": "10m", "throttled_retry": "24h"})
    await connect(server, sim, "main")
    state = await wait_for_state(server, "main", lambda s: s["last_error"] and "503" in s["last_error"])
    assert state["devices"] == {"pending": 20}
    await trio.sleep(0.3)
    assert len(sim.calls("/profile/devices")) == 1  # Retry-After 600 s: no retry before the clock says so

    clock.advance(601)
    state = await wait_for_state(server, "main", assigned(17))
    assert state["devices"] == {"assigned": 17, "failed": 2, "throttled": 1} and state["last_error"] is None
    devices = {d["serial_number"]: d for d in await abm_devices(server)}
    assert devices[failing_once]["assign_reason"].startswith("FAILED") and devices[failing_once]["assign_attempts"] == 1
    assert devices[cooling]["assign_reason"].startswith("THROTTLED")
    assert devices[cooling]["status"].startswith("not enrolled yet (profile assignment throttled")

    clock.advance(timedelta(minutes=11))  # the failed ones' backoff is over
    state = await wait_for_state(server, "main", assigned(18))
    devices = {d["serial_number"]: d for d in await abm_devices(server)}
    assert devices[failing_twice]["assign_state"] == "failed" and devices[failing_twice]["assign_attempts"] == 2

    clock.advance(timedelta(minutes=21))  # doubled: 20 minutes after the second failure
    await wait_for_state(server, "main", assigned(19))
    main.cooldown.clear()
    assert (await abm_devices(server, serial=cooling))[0]["assign_state"] == "throttled"  # waits out the day
    clock.advance(timedelta(hours=24))
    await wait_for_state(server, "main", assigned(20))
    assert all(d["profile_uuid"] for d in main.devices.values())
    async with server.api_client() as api:
        metrics = (await api.get("/metrics")).text
    assert 'mdm_abm_assignments_total{result="THROTTLED",server="main"} 1.0' in metrics
    assert 'mdm_abm_requests_total{endpoint="/profile/devices",server="main",status="503"} 1.0' in metrics
    server.stop()


async def test_an_echoed_cursor_stops_the_round_instead_of_looping(tmp_path, nursery):
    sim = DepSim()
    sim.add_server("main").add_devices(1500)
    server = await abm_appliance(nursery, tmp_path, await start_sim(nursery, sim))
    sim.echo_cursor = 1  # the second page answers the cursor it was sent, with more_to_follow true
    await connect(server, sim, "main")
    state = await wait_for_state(server, "main", lambda s: s["last_error"] and "cursor it was sent" in s["last_error"])
    await trio.sleep(0.3)
    fetches = sim.calls("/server/devices")
    assert len(fetches) == 2 and fetches[1].answered_cursor == fetches[1].cursor  # asked once, not again
    assert state["phase"] == "fetch"
    async with server.api_client() as api:
        assert 'mdm_abm_echoed_cursors_total{server="main"} 1.0' in (await api.get("/metrics")).text
        await api.post("/v1/abm/servers/main/sync")  # the next round goes on from the same cursor
    # The devices are assigned during the round; its clean end, which clears the error, comes after.
    await wait_for_state(server, "main", lambda s: assigned(1500)(s) and s["last_error"] is None)
    fetches = sim.calls("/server/devices")
    assert len(fetches) == 4 and fetches[2].cursor == fetches[1].cursor
    server.stop()


async def test_sessions_and_cursors_that_expire_are_renewed_and_a_full_fetch_catches_what_cooldown_hid(
        tmp_path, nursery):
    clock = OffsetClock()
    sim = DepSim(session_ttl=60)
    main = sim.add_server("main")
    serials = main.add_devices(10)
    server = await abm_appliance(nursery, tmp_path, await start_sim(nursery, sim), clock=clock,
                                 abm={"full_fetch_interval": "3d"})
    await connect(server, sim, "main")
    await wait_for_state(server, "main", assigned(10))
    assert len(sim.calls("/session")) == 1

    async def sync_now() -> None:
        before = len(sim.requests)
        async with server.api_client() as api:
            assert (await api.post("/v1/abm/servers/main/sync")).status_code == 202
        await sim.wait_for(lambda: any(r.path in ("/devices/sync", "/server/devices") for r in sim.requests[before:]))
        await wait_for_state(server, "main", lambda s: not s["devices"].get("pending"))

    # The session ends (401): a new one is opened and the call made again. A rotated session token is used.
    sim.advance(timedelta(seconds=120))
    sim.rotate_sessions = True
    await sync_now()
    assert len(sim.calls("/session")) == 2 and sim.calls("/devices/sync")[-1].status == 200
    await sync_now()
    assert len(sim.calls("/session")) == 2  # the rotated token carried the next call
    sim.sessions.clear()  # Apple forgot the session (403 FORBIDDEN, as depsim after a restart)
    await sync_now()
    assert len(sim.calls("/session")) == 3 and [r.status for r in sim.calls("/devices/sync")][-2:] == [403, 200]

    # A cursor Apple does not know any more: a full fetch.
    main.cursors.clear()
    fetched = len(sim.calls("/server/devices"))
    await sync_now()
    assert [r.status for r in sim.requests if r.path == "/devices/sync"][-1] == 400
    assert len(sim.calls("/server/devices")) > fetched
    assert (await server_state(server, "main"))["last_error"] is None

    # Cooldown: a device removed while in cooldown never shows in a sync...
    hidden = serials[0]
    main.cooldown.add(hidden)
    main.remove(hidden)
    await sync_now()
    assert (await abm_devices(server, serial=hidden))[0]["assign_state"] == "assigned"
    # ... and the periodic full fetch removes it.
    fetched = len(sim.calls("/server/devices"))
    sim.advance(timedelta(days=3, minutes=1))
    clock.advance(timedelta(days=3, minutes=1))
    await sim.wait_for(lambda: len(sim.calls("/server/devices")) > fetched)
    await wait_for_state(server, "main", lambda s: s["devices"].get("removed") == 1)
    removed = (await abm_devices(server, serial=hidden))[0]
    assert "not listed by a full fetch" in removed["assign_reason"]
    assert sim.calls("/server/devices")[fetched].cursor is None

    # A cursor older than 7 days is never sent: the round starts with a full fetch.
    requests = len(sim.requests)
    sim.advance(timedelta(days=7, hours=1))
    clock.advance(timedelta(days=7, hours=1))
    await sim.wait_for(lambda: any(r.path == "/server/devices" for r in sim.requests[requests:]))
    assert not any(r.path == "/devices/sync" for r in sim.requests[requests:])
    assert all(r.status != 400 for r in sim.requests[requests:])
    server.stop()


async def test_a_restart_in_the_middle_of_a_fetch_goes_on_from_the_stored_cursor(tmp_path, nursery):
    sim = DepSim()
    sim.add_server("main").add_devices(2500)
    sim_url = await start_sim(nursery, sim)
    held = sim.hold("/server/devices", after=2)  # the third page waits while the appliance stops
    server = await abm_appliance(nursery, tmp_path, sim_url)
    await connect(server, sim, "main")
    with trio.fail_after(30):
        await sim.held.wait()
    state = await server_state(server, "main")
    assert state["phase"] == "fetch" and sum(state["devices"].values()) == 1000
    await server.aclose()
    held.set()
    await sim.wait_for(lambda: len(sim.calls("/server/devices")) == 3)
    stored_cursor = sim.calls("/server/devices")[1].answered_cursor

    again = await start_server(nursery, server.config_path)
    await wait_for_state(again, "main", assigned(2500))
    after_restart = sim.calls("/server/devices")[3:]
    assert after_restart[0].cursor == stored_cursor  # not a new fetch from the start
    assert all(r.cursor is not None for r in after_restart) and len(after_restart) == 3
    again.stop()


async def test_several_abm_servers_each_keep_their_token_cursor_and_profile_and_a_database_import_is_used(
        tmp_path, nursery):
    sim = DepSim()
    sim.add_server("school").add_devices(4, prefix="SCH")
    sim.add_server("office").add_devices(6, prefix="OFF")
    server = await abm_appliance(nursery, tmp_path, await start_sim(nursery, sim))
    await connect(server, sim, "school")
    await wait_for_state(server, "school", assigned(4))

    # office: its key pair and token written straight into the database (as the CLI does when it finds no
    # server answering): the running server notices within seconds, no restart.
    pair = abm_token.make_keypair("office", "Example")
    conn = connect_sync(server.config.data_dir / "appliance.db")
    try:
        conn.execute("BEGIN IMMEDIATE")
        abm_store.create_server(conn, "office", pair.certificate_pem, pair.private_key_pem)
        token = abm_token.decrypt_server_token(sim.token_file("office", pair.certificate_pem), pair)
        abm_store.set_token(conn, "office", token.as_json(), token.expires_at)
        conn.execute("COMMIT")
    finally:
        conn.close()
    office = await wait_for_state(server, "office", assigned(6))
    school = await server_state(server, "school")
    assert office["profile_uuid"] != school["profile_uuid"]
    assert set(sim.servers["office"].profiles) == {office["profile_uuid"]}
    assert {d["abm_server"] for d in await abm_devices(server, server="office")} == {"office"}
    assert len(await abm_devices(server, server="school")) == 4
    async with server.api_client() as api:
        listed = (await api.get("/v1/abm/servers")).json()["servers"]
        assert [s["name"] for s in listed] == ["office", "school"]
        assert (await api.delete("/v1/abm/servers/school")).json()["devices_forgotten"] == 4
    assert len(await abm_devices(server)) == 6
    server.stop()


async def test_token_expiry_is_warned_like_the_push_certificate_and_an_expired_one_is_not_used(tmp_path, nursery):
    clock = OffsetClock()
    sim = DepSim()
    main = sim.add_server("main")
    main.add_devices(2)
    main.token.expiry = sim.now() + timedelta(days=10)
    server = await abm_appliance(nursery, tmp_path, await start_sim(nursery, sim), clock=clock)
    await connect(server, sim, "main")
    await wait_for_state(server, "main", assigned(2))
    async with server.api_client() as api:
        health = (await api.get("/healthz")).json()
        assert health["checks"]["abm"]["status"] == "warning"
        assert health["checks"]["abm"]["servers"][0]["token_days_left"] in (9, 10)
        assert "mdm_abm_token_days_left{server=\"main\"} 9." in (await api.get("/metrics")).text
    assert "WARNING: ABM token main expires in" in await status_line(server.runtime)

    clock.advance(timedelta(days=11))
    requests = len(sim.requests)
    async with server.api_client() as api:
        await api.post("/v1/abm/servers/main/sync")
        state = await wait_for_state(server, "main", lambda s: s["last_error"] and "expired" in s["last_error"])
        assert state["token_state"] == "expired"
        health = (await api.get("/healthz")).json()
    assert health["checks"]["abm"]["status"] == "error" and health["status"] == "error"
    assert "ERROR: ABM token main EXPIRED" in await status_line(server.runtime)
    assert len(sim.requests) == requests  # an expired token is not sent to Apple
    server.stop()


async def test_webhooks_tell_of_devices_and_failures_and_operators_assign_and_unassign(tmp_path, nursery):
    sim = DepSim()
    main = sim.add_server("main")
    serials = main.add_devices(3)
    receiver = Receiver(port=free_port())
    async with Running(receiver):
        server = await abm_appliance(nursery, tmp_path, await start_sim(nursery, sim),
                                     webhook={"url": f"http://127.0.0.1:{receiver.port}/hook"})
        await connect(server, sim, "main")
        await wait_for_state(server, "main", assigned(3))
        await receiver.wait_for(lambda: len(receiver.accepted) >= 3)
        added = [d.event for d in receiver.accepted if d.event["topic"] == "abm.DeviceAdded"]
        assert sorted(e["abm_event"]["serial_number"] for e in added) == serials
        assert added[0]["abm_event"]["abm_server"] == "main" and added[0]["abm_event"]["model"] == "MacBook Air"

        async with server.api_client() as api:
            # Unassigned by an operator: taken off in ABM, and not assigned again by the next syncs.
            off = (await api.post("/v1/abm/devices/unassign", json={"serials": [serials[0]]})).json()
            assert off["devices"][serials[0]] == {"state": "unassigned", "result": "SUCCESS"}
            assert main.devices[serials[0]]["profile_status"] == "empty"
            await api.post("/v1/abm/servers/main/sync")
            await wait_for_state(server, "main", lambda s: s["devices"] == {"assigned": 2, "unassigned": 1})
            on = (await api.post("/v1/abm/devices/assign", json={"serials": [serials[0], "NOPE"]})).json()
            assert on["devices"][serials[0]]["state"] == "pending" and "error" in on["devices"]["NOPE"]
            await wait_for_state(server, "main", assigned(3))

            # Disowned in ABM without a sync saying so: the assignment answers NOT_ACCESSIBLE.
            main.devices.pop(serials[1])
            await api.post("/v1/abm/devices/assign", json={"serials": [serials[1]]})
            await wait_for_state(server, "main", lambda s: s["devices"].get("not_accessible") == 1)
            device = (await api.get(f"/v1/abm/devices/{serials[1]}")).json()
            assert device["status"].startswith("not accessible")
            bad = await api.post("/v1/abm/devices/assign", json={"serials": []})
            assert bad.status_code == 400
        await receiver.wait_for(lambda: any(d.event["topic"] == "abm.AssignmentFailed" for d in receiver.accepted))
        failed = next(d.event for d in receiver.accepted if d.event["topic"] == "abm.AssignmentFailed")
        assert failed["abm_event"]["serial_number"] == serials[1]
        assert failed["abm_event"]["assign_state"] == "not_accessible"
        assert json.dumps(failed)  # a JSON event in the one envelope
        server.stop()
