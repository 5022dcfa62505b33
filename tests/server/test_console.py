"""The web console on the real server: sign-in and its limits, cookies, CSRF, security headers, roles,
sending and cancelling commands, the push certificate, enrollment, users, and the audit log (also over
the admin API, which audits its own changes)."""

from __future__ import annotations

import plistlib

from cryptography.x509.oid import NameOID

from appliance.store import audit
from tests.support.apns_certs import make_ca, make_push_cert
from tests.support.console_users import PASSWORDS, Console, add_users, csrf_of
from tests.support.fleet_seed import command_plist, seed_devices, udid
from tests.support.harness import make_config, start_server


async def entries(server, **filters) -> list[dict]:
    return await server.runtime.store.read(lambda conn: audit.entries(conn, **filters))


async def pending_rows(server) -> list[tuple]:
    return await server.runtime.store.read(lambda conn: [tuple(r) for r in conn.execute(
        "SELECT enrollment_id, command_uuid FROM queue WHERE cancelled_at IS NULL ORDER BY id")])


# --- signing in ------------------------------------------------------------------------------------

async def test_sign_in_sets_a_locked_down_session_cookie_and_shows_the_overview(server):
    await add_users(server, admin="alice")
    async with Console(server) as console:
        answer = await console.login("alice", PASSWORDS["admin"])
        assert answer.status_code == 303 and answer.headers["location"] == "/console/"
        cookie = answer.headers["set-cookie"]
        assert cookie.startswith("__Host-mdm-console=")
        for flag in ("HttpOnly", "Secure", "SameSite=Strict", "Path=/"):
            assert flag.lower() in cookie.lower(), cookie
        page = await console.get("/console/")
        assert page.status_code == 200 and "devices enrolled" in page.text and "alice" in page.text
    assert [e["action"] for e in await entries(server, actor="user alice")] == ["sign_in"]


async def test_wrong_password_or_unknown_user_is_refused_and_not_signed_in(server):
    await add_users(server, admin="alice")
    async with Console(server) as console:
        for name, password in (("alice", "wrong password 99"), ("mallory", PASSWORDS["admin"])):
            answer = await console.login(name, password)
            assert answer.status_code == 401 and "Wrong name or password" in answer.text
        page = await console.get("/console/devices")
        assert page.status_code == 303 and page.headers["location"].startswith("/console/login?next=")


async def test_the_api_key_is_never_a_console_login(server):
    await add_users(server, admin="alice")
    async with Console(server) as console:
        headers = {"Authorization": f"Bearer {server.api_key}"}
        assert (await console.get("/console/", headers=headers)).status_code == 303
        for name in ("alice", "api", "nanomdm", ""):
            assert (await console.login(name, server.api_key)).status_code == 401


async def test_sign_ins_are_limited_per_address_even_with_the_right_password(server):
    await add_users(server, admin="alice")
    async with Console(server) as console:
        for n in range(10):
            assert (await console.login(f"guess{n}", "wrong password 99")).status_code == 401
        answer = await console.login("alice", PASSWORDS["admin"])
        assert answer.status_code == 429 and "Too many failed sign-ins" in answer.text
        assert (await console.get("/console/")).status_code == 303  # still signed out


async def test_a_new_password_or_a_removed_account_ends_open_sessions(server):
    await add_users(server, admin="alice", operator="oscar")
    async with Console(server) as alice, Console(server) as oscar:
        await alice.login("alice", PASSWORDS["admin"])
        await oscar.login("oscar", PASSWORDS["operator"])
        answer = await alice.post_form("/console/users", "/console/users",
                                       {"action": "passwd", "name": "oscar", "password": "a brand new one"})
        assert answer.status_code == 303
        assert (await oscar.get("/console/")).status_code == 303
        assert (await oscar.login("oscar", "a brand new one")).status_code == 303
        answer = await alice.post_form("/console/users", "/console/users", {"action": "remove", "name": "oscar"})
        assert answer.status_code == 303
        assert (await oscar.get("/console/")).status_code == 303
    actions = [(e["action"], e["target"]) for e in await entries(server, actor="user alice")]
    assert ("user.passwd", "oscar") in actions and ("user.remove", "oscar") in actions


# --- CSRF and headers ------------------------------------------------------------------------------

async def test_a_form_without_its_csrf_token_is_refused_and_changes_nothing(server):
    await add_users(server, operator="oscar")
    await server.runtime.store.write(lambda conn: seed_devices(conn, 1))
    async with Console(server) as console:
        await console.login("oscar", PASSWORDS["operator"])
        before = await entries(server)
        for token in (None, "0" * 64):
            data = {"ids": udid(0), "type": "ProfileList"}
            if token:
                data["csrf_token"] = token
            answer = await console.client.post("/console/commands", data=data)
            assert answer.status_code == 403 and "CSRF" in answer.text
        assert await pending_rows(server) == []
        assert await entries(server) == before


async def test_every_console_answer_carries_the_security_headers(server):
    await add_users(server, viewer="victor")
    async with Console(server) as console:
        await console.login("victor", PASSWORDS["viewer"])
        for path in ("/console/", "/console/login", "/console/devices/none", "/console/static/console.css",
                     "/console/nothing-here"):
            answer = await console.get(path)
            csp = answer.headers.get("content-security-policy", "")
            assert "frame-ancestors 'none'" in csp and "script-src 'self'" in csp, path
            assert "unsafe-inline" not in csp
            assert answer.headers["x-frame-options"] == "DENY"
            assert answer.headers["referrer-policy"] == "no-referrer"
            assert answer.headers["x-content-type-options"] == "nosniff"
        page = (await console.get("/console/")).text
        assert "<script>" not in page and " style=" not in page and "onclick" not in page


# --- roles -----------------------------------------------------------------------------------------

async def test_a_viewer_reads_but_cannot_send_cancel_or_administer(server):
    await add_users(server, viewer="victor")
    ids = await server.runtime.store.write(lambda conn: seed_devices(conn, 2))
    async with server.api_client() as api:
        uuid_, body = command_plist("DeviceInformation", Queries=["OSVersion"])
        assert (await api.put(f"/v1/enqueue/{ids[0]}?nopush=1", content=body)).status_code == 200
    async with Console(server) as console:
        await console.login("victor", PASSWORDS["viewer"])
        assert (await console.get("/console/devices")).status_code == 200
        device_page = await console.get(f"/console/devices/{ids[0]}")
        assert device_page.status_code == 200 and "Cancel" not in device_page.text
        assert (await console.get("/console/commands/new")).status_code == 403
        token = csrf_of(device_page.text)
        for action, data in (("/console/commands", {"ids": ids[1], "type": "ProfileList"}),
                             (f"/console/devices/{ids[0]}/cancel", {"enrollment_id": ids[0], "command_uuid": uuid_}),
                             ("/console/enrollment/challenge", {}),
                             ("/console/users", {"action": "add", "name": "eve", "role": "admin",
                                                 "password": "x" * 12})):
            answer = await console.client.post(action, data={**data, "csrf_token": token})
            assert answer.status_code == 403, action
        assert await pending_rows(server) == [(ids[0], uuid_)]
        assert (await console.get("/console/users")).status_code == 403


# --- commands --------------------------------------------------------------------------------------

async def test_an_operator_sends_a_command_to_a_selection_and_it_is_audited(server):
    await add_users(server, operator="oscar")
    ids = await server.runtime.store.write(lambda conn: seed_devices(conn, 3))
    async with Console(server) as console:
        await console.login("oscar", PASSWORDS["operator"])
        answer = await console.post_form(
            f"/console/commands/new?ids={ids[0]}&ids={ids[2]}", "/console/commands",
            {"ids": [ids[0], ids[2]], "type": "DeviceInformation", "key.Queries": ["OSVersion", "SerialNumber"]})
        assert answer.status_code == 303
        command_uuid = answer.headers["location"].rsplit("/", 1)[1]
        page = await console.get(answer.headers["location"])
        assert page.status_code == 200 and "DeviceInformation" in page.text and 'data-poll=' in page.text
        status = (await console.get(f"/console/commands/{command_uuid}/status.json")).json()
        assert status["pending"] == 2
    assert await pending_rows(server) == [(ids[0], command_uuid), (ids[2], command_uuid)]
    sent = await entries(server, action="command.send")
    assert sent[0]["actor"] == "user oscar" and sent[0]["target"] == f"{ids[0]},{ids[2]}"
    assert sent[0]["details"]["request_type"] == "DeviceInformation"


async def test_sending_to_every_device_a_search_matches(server):
    await add_users(server, operator="oscar")
    ids = await server.runtime.store.write(lambda conn: seed_devices(conn, 12))
    async with Console(server) as console:
        await console.login("oscar", PASSWORDS["operator"])
        form = await console.get("/console/commands/new?all=1&q=SER00001")
        assert "2 devices</strong> (every device matching" in form.text  # SER000010, SER000011
        answer = await console.post_form("/console/commands/new?all=1&q=SER00001", "/console/commands",
                                         {"all": "1", "q": "SER00001", "type": "ProfileList"})
        assert answer.status_code == 303
    assert sorted(eid for eid, _ in await pending_rows(server)) == [ids[10], ids[11]]


async def test_a_bad_command_is_refused_with_the_reason_and_nothing_is_queued(server):
    await add_users(server, operator="oscar")
    ids = await server.runtime.store.write(lambda conn: seed_devices(conn, 1))
    async with Console(server) as console:
        await console.login("oscar", PASSWORDS["operator"])
        for data, reason in (
            ({"ids": ids[0], "type": "DeviceInfo"}, "did you mean DeviceInformation"),
            ({"ids": ids[0], "type": "DeviceInformation"}, "Queries"),  # required key missing
            ({"ids": ids[0], "type": "DeviceInformation", "key.Queries": ["NoSuchQuery"]}, "NoSuchQuery"),
            ({"ids": ids[0], "type": "raw", "request_type": "X", "keys": "[1"}, "JSON object"),
            ({"type": "ProfileList"}, "Choose at least one device"),
            ({"ids": ids[0], "type": "EraseDevice"}, "type the number of devices (1)"),
            ({"ids": ids[0], "type": "EraseDevice", "confirm": "2"}, "type the number of devices (1)"),
        ):
            answer = await console.post_form("/console/commands/new", "/console/commands", data)
            assert answer.status_code == 400 and reason in answer.text, (data, answer.text[-3000:])
    assert await pending_rows(server) == []


async def test_form_values_are_typed_by_the_catalog_and_destructive_commands_need_the_count(server):
    await add_users(server, operator="oscar")
    ids = await server.runtime.store.write(lambda conn: seed_devices(conn, 2))
    async with Console(server) as console:
        await console.login("oscar", PASSWORDS["operator"])
        form = await console.get(f"/console/commands/new?ids={ids[0]}&ids={ids[1]}&type=DeviceLock")
        assert 'name="key.PIN"' in form.text and "is destructive" in form.text
        answer = await console.post_form(
            f"/console/commands/new?ids={ids[0]}&type=DeviceLock", "/console/commands",
            {"ids": ids, "type": "DeviceLock", "key.PIN": "012345", "key.Message": "Found? Call 555",
             "confirm": "2"})
        assert answer.status_code == 303, answer.text[-2000:]
    command_uuid = answer.headers["location"].rsplit("/", 1)[1]
    body = await server.runtime.store.read(lambda conn: bytes(conn.execute(
        "SELECT body FROM commands WHERE uuid = ?", (command_uuid,)).fetchone()[0]))
    command = plistlib.loads(body)["Command"]
    assert command == {"RequestType": "DeviceLock", "PIN": "012345", "Message": "Found? Call 555"}


async def test_cancel_one_pending_command_from_the_device_page(server):
    await add_users(server, operator="oscar")
    ids = await server.runtime.store.write(lambda conn: seed_devices(conn, 1))
    async with server.api_client() as api:
        first, body1 = command_plist("DeviceInformation", Queries=["OSVersion"])
        second, body2 = command_plist("ProfileList")
        for body in (body1, body2):
            assert (await api.put(f"/v1/enqueue/{ids[0]}?nopush=1", content=body)).status_code == 200
    async with Console(server) as console:
        await console.login("oscar", PASSWORDS["operator"])
        answer = await console.post_form(f"/console/devices/{ids[0]}", f"/console/devices/{ids[0]}/cancel",
                                         {"enrollment_id": ids[0], "command_uuid": first})
        assert answer.status_code == 303 and "cancelled" in answer.headers["location"]
    assert await pending_rows(server) == [(ids[0], second)]
    cancelled = await entries(server, action="command.cancel")
    assert cancelled[0]["actor"] == "user oscar" and cancelled[0]["details"] == {"command_uuid": first}


# --- admin pages -----------------------------------------------------------------------------------

async def test_an_admin_imports_a_push_certificate_pem(server):
    await add_users(server, admin="alice")
    cert = make_push_cert(make_ca())
    topic = cert.cert.subject.get_attributes_for_oid(NameOID.USER_ID)[0].value
    async with Console(server) as console:
        await console.login("alice", PASSWORDS["admin"])
        answer = await console.post_form("/console/push", "/console/push/import", {},
                                         files={"certificate": ("push.pem", cert.cert_pem + cert.key_pem)})
        assert answer.status_code == 303
        page = await console.get(answer.headers["location"])
        assert topic in page.text and "days left" in page.text
        bad = await console.post_form("/console/push", "/console/push/import", {},
                                      files={"certificate": ("junk.pem", b"-----BEGIN CERTIFICATE-----\nnope\n"
                                             b"-----END CERTIFICATE-----\n-----BEGIN PRIVATE KEY-----\n")})
        assert bad.status_code == 400 and "Not imported: certificate" in bad.text
        keyless = await console.post_form("/console/push", "/console/push/import", {},
                                          files={"certificate": ("cert.pem", cert.cert_pem)})
        assert keyless.status_code == 400 and "no private key" in keyless.text
    imported = await entries(server, action="pushcert.import")
    assert imported[0]["target"] == topic and imported[0]["actor"] == "user alice"


async def test_enrollment_page_shows_link_and_qr_code_to_admins_only(server):
    await add_users(server, admin="alice", viewer="victor")
    async with Console(server) as alice, Console(server) as victor:
        await alice.login("alice", PASSWORDS["admin"])
        await victor.login("victor", PASSWORDS["viewer"])
        page = (await alice.get("/console/enrollment")).text
        assert "/mdm/enroll?token=test-enroll-secret" in page and "<svg" in page
        page = (await victor.get("/console/enrollment")).text
        assert "test-enroll-secret" not in page and "<svg" not in page
        minted = await alice.post_form("/console/enrollment", "/console/enrollment/challenge", {})
        assert minted.status_code == 200 and "valid once" in minted.text
    assert [e["action"] for e in await entries(server, action="challenge.mint")] == ["challenge.mint"]


# --- the audit log over the API --------------------------------------------------------------------

async def test_admin_api_changes_are_audited_as_the_api_key_and_paged(server):
    ids = await server.runtime.store.write(lambda conn: seed_devices(conn, 2))
    async with server.api_client() as api:
        uuid_, body = command_plist("ProfileList")
        assert (await api.put(f"/v1/enqueue/{ids[0]},{ids[1]},nobody?nopush=1", content=body)).status_code == 207
        assert (await api.delete(f"/v1/devices/{ids[1]}/queue/{uuid_}")).status_code == 200
        again = await api.delete(f"/v1/devices/{ids[1]}/queue/{uuid_}")
        assert again.status_code == 404 and again.json()["error"]["code"] == "command_not_pending"
        assert (await api.get("/v1/devices")).status_code == 200  # reads are not audited
        page = (await api.get("/v1/audit?limit=1")).json()
        assert page["entries"][0]["action"] == "command.cancel" and page["entries"][0]["actor"] == "api key"
        assert page["entries"][0]["target"] == ids[1]
        older = (await api.get(f"/v1/audit?before={page['next_before']}")).json()
        assert [(e["action"], e["target"]) for e in older["entries"]] == [("command.send", f"{ids[0]},{ids[1]}")]
        assert older["entries"][0]["details"]["command_uuid"] == uuid_ and older["next_before"] is None
        assert (await api.get("/v1/audit?limit=0")).status_code == 400
    assert await pending_rows(server) == [(ids[0], uuid_)]


async def test_ddm_api_changes_are_audited_too(server):
    async with server.api_client() as api:
        answer = await api.put("/api/v1/ddm/enrollment-sets/SOME-UDID", params={"set": "default"})
        assert answer.status_code == 204
        assert (await api.get("/api/v1/ddm/sets")).status_code == 200
    found = await entries(server, actor="api key")
    assert [(e["action"], e["target"], e["details"]) for e in found] == [
        ("PUT /api/v1/ddm/enrollment-sets/<enrollment_id>", "SOME-UDID", {"query": {"set": "default"}})]


async def test_console_lives_only_on_the_api_listener_when_one_is_set(nursery, tmp_path):
    from tests.support.harness import free_port

    server = await start_server(nursery, make_config(tmp_path, api={"listen": f"127.0.0.1:{free_port()}"}))
    try:
        await add_users(server, admin="alice")
        async with Console(server, server.base_url) as device_side:
            assert (await device_side.get("/console/login")).status_code == 404
        async with Console(server) as api_side:
            assert (await api_side.login("alice", PASSWORDS["admin"])).status_code == 303
    finally:
        server.stop()


async def test_a_session_idle_for_thirty_minutes_is_signed_out(nursery, tmp_path):
    from appliance.clock import OffsetClock

    clock = OffsetClock()
    server = await start_server(nursery, make_config(tmp_path), clock)
    try:
        await add_users(server, viewer="victor")
        async with Console(server) as console:
            await console.login("victor", PASSWORDS["viewer"])
            clock.advance(29 * 60)
            assert (await console.get("/console/")).status_code == 200  # used: the idle time starts again
            clock.advance(29 * 60)
            assert (await console.get("/console/")).status_code == 200
            clock.advance(31 * 60)
            answer = await console.get("/console/")
            assert answer.status_code == 303 and answer.headers["location"].startswith("/console/login")
    finally:
        server.stop()
