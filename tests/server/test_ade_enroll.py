"""Automated Device Enrollment end to end: a device ABM assigned to us posts its signed machine info (a test
CA chain shaped like Apple's), gets its profile, its identity through SCEP with the profile's one-time
challenge, checks in, waits in Setup Assistant for its setup commands and DeviceConfigured. And every way
the endpoint refuses."""

from __future__ import annotations

import plistlib
import uuid

import trio
from urllib.parse import urlsplit

from cryptography import x509

from tests.server.test_enroll_server import by_type, import_push_certificate
from tests.support import scep_client
from tests.support.abm_support import connect, start_sim, wait_for_state
from tests.support.dep_sim import DepSim
from tests.support.device_sim import DeviceSim
from tests.support.harness import free_port, make_config, start_server
from tests.support.machine_info import DeviceChain, machine_info
from tests.support.push_support import metric_lines, scrape
from tests.support.webhook_receiver import Receiver, Running

SERIAL = "C02ADE000001"
SIGNED = {"Content-Type": "application/pkcs7-signature"}


async def ade_appliance(nursery, tmp_path, sim: DepSim, *, ade: dict, webhook: dict | None = None, **overrides):
    """An appliance listening where its public_url says (the profile's URLs are called), with a push
    certificate (the profile needs its Topic), synced with the simulator's server "main"."""
    port = free_port()
    config = make_config(tmp_path, port=port, server={"public_url": f"https://127.0.0.1:{port}"},
                         apns={"url": "https://127.0.0.1:9"},
                         abm={"api_url": await start_sim(nursery, sim), "sync_interval": "1h"},
                         ade=ade, **({"webhook": webhook} if webhook else {}), **overrides)
    server = await start_server(nursery, config)
    await import_push_certificate(server)
    await connect(server, sim, "main")
    await wait_for_state(server, "main", lambda s: s["devices"].get("assigned") == len(sim.servers["main"].devices))
    return server


async def scep_identity(http, profile: bytes, common_name: str):
    """What the device's SCEP client does with the profile's payload: GetCACert, then PKCSReq with its
    challenge. Returns (identity certificate, key, the MDM payload)."""
    payloads = by_type(plistlib.loads(profile))
    scep, mdm = payloads["com.apple.security.scep"]["PayloadContent"], payloads["com.apple.mdm"]
    ca = x509.load_der_x509_certificate((await http.get("/scep", params={"operation": "GetCACert"})).content)
    requester = scep_client.Requester(common_name=common_name, challenge=scep["Challenge"])
    request = scep_client.pkcs_req(requester, ca)
    issued = await http.post("/scep?operation=PKIOperation", content=request.der)
    (identity,) = scep_client.read_cert_rep(issued.content, ca, request).certificates
    return identity, requester.key, mdm


def _command_plist(tmp_path) -> str:
    path = tmp_path / "account.plist"
    path.write_bytes(plistlib.dumps({"CommandUUID": "from-the-file", "Command": {
        "RequestType": "AccountConfiguration", "SkipPrimarySetupAccountCreation": False,
        "SetPrimarySetupAccountAsRegularUser": True,
        "AutoSetupAdminAccounts": [{"shortName": "itadmin", "fullName": "IT", "hidden": True,
                                    "passwordHash": b"\x00hash"}]}}))
    return str(path)


async def test_an_ade_device_enrolls_end_to_end_and_waits_in_setup_assistant_until_configured(tmp_path, nursery):
    chain = DeviceChain(tmp_path)
    sim = DepSim()
    sim.add_server("main").add(SERIAL, model="MacBook Pro", os="OSX", family="Mac")
    receiver = Receiver(port=free_port())
    async with Running(receiver):
        server = await ade_appliance(nursery, tmp_path, sim, webhook={"url": f"http://127.0.0.1:{receiver.port}/"}, ade={
            "await_device_configured": True, "device_ca_files": [str(chain.root_pem_path)],
            "skip_setup_items": ["Siri", "Privacy"], "support_email_address": "it@example.org",
            "setup_commands": [{"plist": _command_plist(tmp_path)},
                               {"command": {"RequestType": "Settings", "Settings": [
                                   {"Item": "DeviceName", "DeviceName": "Front desk"}]}}]})
        defined = sim.calls("/profile")[0].body
        assert defined["await_device_configured"] is True and defined["skip_setup_items"] == ["Siri", "Privacy"]
        assert defined["url"] == server.config.server.public_url + "/mdm/ade"

        # Setup Assistant: the device posts its machine info to the profile's url and gets its enrollment profile.
        udid = str(uuid.uuid4()).upper()
        async with server.client() as http:
            answer = await http.post(urlsplit(defined["url"]).path, content=chain.sign(machine_info(udid, SERIAL)),
                                     headers=SIGNED)
            assert answer.status_code == 200, answer.text
            assert answer.headers["content-type"] == "application/x-apple-aspen-config"
            scep = by_type(plistlib.loads(answer.content))["com.apple.security.scep"]["PayloadContent"]
            assert scep["Challenge"] != "test-challenge"  # a one-time challenge, not the static one
            # Its identity through SCEP with that challenge.
            identity, key, mdm = await scep_identity(http, answer.content, f"ADE {udid}")

        connect_path, checkin_path = urlsplit(mdm["ServerURL"]).path, urlsplit(mdm["CheckInURL"]).path
        # The identity was issued for this serial number: it cannot Authenticate as another device.
        async with DeviceSim(server.base_url, server.ssl_context(), identity, key, "OTHER-UDID",
                             serial_number="C02SOMEONE", topic=mdm["Topic"], checkin_path=checkin_path,
                             connect_path=connect_path) as impostor:
            refused = await impostor.authenticate()
            assert refused.status == 403 and "serial number" in refused.text

        async with DeviceSim(server.base_url, server.ssl_context(), identity, key, udid,
                             serial_number=SERIAL, topic=mdm["Topic"], checkin_path=checkin_path,
                             connect_path=connect_path) as device:
            assert (await device.authenticate()).status == 200
            assert (await device.token_update(AwaitingConfiguration=True)).status == 200
            async with server.api_client() as api:
                ade = (await api.get(f"/v1/abm/devices/{SERIAL}")).json()["ade"]
                assert ade["setup_state"] == "setup_commands" and len(ade["setup_commands"]) == 2
                assert ade["udid"] == udid and ade["signed"] is True

            # The setup commands in order, then DeviceConfigured in the answer to the last one's result.
            reply = await device.idle()
            seen = []
            while reply.command is not None:
                command = reply.command
                seen.append(command["Command"]["RequestType"])
                reply = await device.acknowledge(command["CommandUUID"])
                assert reply.status == 200
            assert seen == ["AccountConfiguration", "Settings", "DeviceConfigured"]
            assert "from-the-file" not in ade["setup_commands"]  # each device gets its own CommandUUIDs

        async with server.api_client() as api:
            ade_device = (await api.get(f"/v1/abm/devices/{SERIAL}")).json()
            assert ade_device["ade"]["setup_state"] == "configured" and ade_device["ade"]["configured_at"]
            assert ade_device["device_id"] == udid and ade_device["status"] == "enrolled"
            enrolled = (await api.get(f"/v1/devices/{udid}")).json()
            assert enrolled["abm"]["abm_server"] == "main" and enrolled["abm"]["ade"]["setup_state"] == "configured"
            # Joined by serial number: listed once, as the enrolled device, not again as "not enrolled yet".
            listed = (await api.get("/v1/devices", params={"serial": SERIAL})).json()["devices"]
            assert [d["id"] for d in listed] == [udid]
        metrics = await scrape(server)
        assert metric_lines(metrics, "mdm_ade_profile_requests_total")['{outcome="served"}'] == 1
        assert metric_lines(metrics, "mdm_ade_devices_configured_total")[""] == 1
        await receiver.wait_for(lambda: {"ade.ProfileServed", "ade.DeviceConfigured"}
                                <= {d.event["topic"] for d in receiver.accepted})
        served = next(d.event for d in receiver.accepted if d.event["topic"] == "ade.ProfileServed")
        assert served["ade_event"]["serial_number"] == SERIAL and served["ade_event"]["udid"] == udid
        server.stop()


async def test_machine_info_is_refused_unsigned_forged_untrusted_malformed_or_from_a_device_not_ours(
        tmp_path, nursery):
    chain = DeviceChain(tmp_path)
    (tmp_path / "stranger").mkdir()
    stranger = DeviceChain(tmp_path / "stranger")
    sim = DepSim()
    sim.add_server("main").add(SERIAL)
    server = await ade_appliance(nursery, tmp_path, sim, ade={"device_ca_files": [str(chain.root_pem_path)]})
    udid = str(uuid.uuid4()).upper()
    forged = chain.sign(machine_info(udid, SERIAL)).replace(SERIAL.encode(), b"C02ADE000002")
    cases = [
        (plistlib.dumps(machine_info(udid, SERIAL)), 403, "must be CMS-signed"),
        (stranger.sign(machine_info(udid, SERIAL)), 403, "does not chain"),
        (forged, 403, "does not match"),
        (b"\x30\x82\x01\x00" + b"\x00" * 50, 400, "not a valid DER CMS"),
        (chain.sign({"UDID": udid}), 400, "SERIAL"),
        (chain.sign(machine_info(udid, "C02NOTOURS")), 403, "not assigned to this MDM server"),
        (b"", 400, "no machine info"),
        (b"\x30" + b"\x00" * 70000, 413, "over the limit"),
    ]
    async with server.client() as http:
        for body, status, reason in cases:
            answer = await http.post("/mdm/ade", content=body, headers=SIGNED)
            assert (answer.status_code, reason in answer.text) == (status, True), (status, reason, answer.text)
        assert (await http.get("/mdm/ade")).status_code == 405
    async with server.api_client() as api:
        assert (await api.get(f"/v1/abm/devices/{SERIAL}")).json()["ade"] is None  # nothing handed out or recorded
    outcomes = metric_lines(await scrape(server), "mdm_ade_profile_requests_total")
    assert outcomes['{outcome="unsigned"}'] == 1 and outcomes['{outcome="untrusted"}'] == 1
    assert outcomes['{outcome="unknown_device"}'] == 1 and outcomes['{outcome="malformed"}'] == 2
    server.stop()


async def test_unsigned_machine_info_and_unknown_devices_only_when_the_operator_says_so(tmp_path, nursery):
    chain = DeviceChain(tmp_path)
    sim = DepSim()
    sim.add_server("main").add(SERIAL)
    server = await ade_appliance(nursery, tmp_path, sim, ade={"require_signed_machine_info": False,
                                                              "allow_unknown_devices": True})
    async with server.client() as http:
        unsigned = await http.post("/mdm/ade", content=plistlib.dumps(machine_info("U-1", "C02ELSEWHERE")))
        assert unsigned.status_code == 200, unsigned.text
        # The default anchors are Apple's device CAs (shipped): a test chain's signature is not Apple's.
        untrusted = await http.post("/mdm/ade", content=chain.sign(machine_info("U-2", SERIAL)), headers=SIGNED)
        assert untrusted.status_code == 403 and "does not chain" in untrusted.text
        identity, key, mdm = await scep_identity(http, unsigned.content, "ADE U-1")
    # A device that says it awaits configuration is released, even though [ade] did not ask it to wait
    # (the profile in ABM had said so before the config changed): DeviceConfigured, no setup commands here.
    async with DeviceSim(server.base_url, server.ssl_context(), identity, key, "U-1", serial_number="C02ELSEWHERE",
                         topic=mdm["Topic"]) as device:
        await device.authenticate()
        assert (await device.token_update(AwaitingConfiguration=True)).status == 200
        reply = await device.idle()
        assert reply.command["Command"]["RequestType"] == "DeviceConfigured"
        assert (await device.acknowledge(reply.command_uuid)).command is None
    async with server.api_client() as api:
        assert (await api.get("/v1/devices/U-1")).json()["abm"] is None  # not an ABM device of ours
    server.stop()


async def test_inventory_and_groups_apply_from_an_ade_devices_first_check_in(tmp_path, nursery):
    """A device held in Setup Assistant gets its setup commands first; the inventory the appliance queues at
    enrollment reaches it too, its answer fills the record, and a dynamic group takes the device in."""
    chain = DeviceChain(tmp_path)
    sim = DepSim()
    main = sim.add_server("main")
    main.add(SERIAL, model="MacBook Pro", os="OSX", family="Mac")
    main.add("C02ADE000009", model="MacBook Air", os="OSX", family="Mac")  # assigned, never enrolls here
    server = await ade_appliance(nursery, tmp_path, sim, inventory={"commands": ["DeviceInformation"]}, ade={
        "await_device_configured": True, "device_ca_files": [str(chain.root_pem_path)],
        "setup_commands": [{"command": {"RequestType": "Settings", "Settings": [
            {"Item": "DeviceName", "DeviceName": "Front desk"}]}}]})
    async with server.api_client() as api:
        made = await api.post("/v1/groups", json={"name": "macbooks", "filter": 'model_name contains "MacBook"'})
        assert made.status_code == 201, made.text
    udid = str(uuid.uuid4()).upper()
    async with server.client() as http:
        answer = await http.post("/mdm/ade", content=chain.sign(machine_info(udid, SERIAL)), headers=SIGNED)
        assert answer.status_code == 200, answer.text
        identity, key, mdm = await scep_identity(http, answer.content, f"ADE {udid}")
    async with DeviceSim(server.base_url, server.ssl_context(), identity, key, udid, serial_number=SERIAL,
                         topic=mdm["Topic"]) as device:
        await device.authenticate()
        assert (await device.token_update(AwaitingConfiguration=True)).status == 200
        seen: list[str] = []
        with trio.fail_after(20):  # the inventory is queued by its worker, woken once TokenUpdate committed
            while not {"DeviceConfigured", "DeviceInformation"} <= set(seen):
                seen += [request_type for _, request_type in await device.answer_commands()]
                await trio.sleep(0.05)
    assert seen[0] == "Settings" and seen.index("DeviceConfigured") > 0, seen
    async with server.api_client() as api:
        record = (await api.get(f"/v1/devices/{udid}")).json()
        assert record["model_name"] == "MacBook Pro" and record["inventory"]["inventory_at"] is not None
        assert record["abm"]["ade"]["setup_state"] == "configured"
        members = (await api.get("/v1/devices", params={"group": "macbooks"})).json()["devices"]
        assert [d["id"] for d in members] == [udid]
        # One enrolled device fills a page of one; the device ABM assigned that has not enrolled comes next.
        first = (await api.get("/v1/devices", params={"limit": 1})).json()
        assert [d["id"] for d in first["devices"]] == [udid] and first["total"] == 2 and first["next_cursor"]
        rest = (await api.get("/v1/devices", params={"limit": 1, "cursor": first["next_cursor"]})).json()
        assert [(d["id"], d["serial_number"]) for d in rest["devices"]] == [(None, "C02ADE000009")]
        assert rest["total"] == 2 and rest["next_cursor"] is None
    server.stop()
