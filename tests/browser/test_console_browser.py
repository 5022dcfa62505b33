"""The console as a person uses it, in headless Chromium: signing in, a forged form, searching devices,
sending DeviceInformation to a simulated device and watching its answer arrive, cancelling a pending
command, importing a push certificate, and a viewer who cannot send. A screenshot of every page."""

from __future__ import annotations

import trio

from tests.browser.conftest import WAIT_MS, in_browser, screenshot, sign_in
from tests.support.apns_certs import make_ca, make_push_cert
from tests.support.console_users import PASSWORDS, add_users
from tests.support.fleet_seed import command_plist, seed_devices
from tests.support.mdm_support import start_mdm_server


async def queued(server) -> list[tuple]:
    return await server.runtime.store.read(lambda conn: [tuple(r) for r in conn.execute(
        "SELECT enrollment_id, command_uuid FROM queue WHERE cancelled_at IS NULL ORDER BY id")])


async def test_sign_in_with_a_wrong_then_the_right_password(server):
    await add_users(server, admin="alice")

    def flow(page, base):
        page.goto(f"{base}/console/")
        assert page.url.startswith(f"{base}/console/login")
        page.get_by_label("User name").fill("alice")
        page.get_by_label("Password").fill("not the password")
        page.get_by_role("button", name="Sign in").click()
        page.get_by_role("alert").filter(has_text="Wrong name or password").wait_for()
        screenshot(page, "login")
        page.get_by_label("Password").fill(PASSWORDS["admin"])
        page.get_by_role("button", name="Sign in").click()
        page.get_by_role("heading", name="Overview").wait_for()
        screenshot(page, "overview")
        cookies = {c["name"]: c for c in page.context.cookies()}
        return cookies["__Host-mdm-console"]

    cookie = await in_browser(flow, server.api_url)
    assert cookie["httpOnly"] and cookie["secure"] and cookie["sameSite"] == "Strict"


async def test_a_forged_form_without_its_csrf_token_is_refused(server):
    await add_users(server, operator="oscar")
    ids = await server.runtime.store.write(lambda conn: seed_devices(conn, 1))

    def flow(page, base):
        sign_in(page, base, "oscar", PASSWORDS["operator"])
        # What a forged page would post: the right fields, but no CSRF token (it cannot read ours).
        page.evaluate("""([action, id]) => {
            const form = document.createElement("form");
            form.method = "post"; form.action = action;
            for (const [name, value] of [["ids", id], ["type", "RestartDevice"], ["confirm", "1"]]) {
                const input = document.createElement("input");
                input.type = "hidden"; input.name = name; input.value = value; form.appendChild(input);
            }
            document.body.appendChild(form); form.submit();
        }""", [f"{base}/console/commands", ids[0]])
        page.get_by_text("missing or wrong CSRF token").wait_for()
        return page.get_by_role("heading", level=1).inner_text()

    assert await in_browser(flow, server.api_url) == "Not allowed"
    assert await queued(server) == []


async def test_search_and_sort_devices(server):
    await add_users(server, viewer="victor")
    await server.runtime.store.write(lambda conn: seed_devices(conn, 120))

    def flow(page, base):
        sign_in(page, base, "victor", PASSWORDS["viewer"])
        page.get_by_role("link", name="Devices", exact=True).click()
        page.get_by_text("120 devices match").wait_for()
        page.get_by_role("link", name="Next page").click()
        page.get_by_role("link", name="First page").wait_for()
        page.get_by_label("Search name, serial, UDID, model or OS").fill("ser00004")
        page.get_by_role("button", name="Search").click()
        page.get_by_text("10 devices match").wait_for()
        page.get_by_role("link", name="Serial").click()  # sorted by serial, ascending
        page.get_by_role("link", name="Serial").click()  # and descending
        page.wait_for_url("**dir=desc**")
        screenshot(page, "devices")
        return page.locator("tbody tr td.mono").all_inner_texts()

    serials = await in_browser(flow, server.api_url)
    assert serials == [f"SER0000{n}" for n in range(49, 39, -1)]


async def test_send_device_information_and_see_the_answer_arrive(nursery, tmp_path):
    mdm = await start_mdm_server(nursery, tmp_path)
    server = mdm.server
    await add_users(server, operator="oscar")
    device = mdm.device("BROWSER-DEVICE-1")
    await device.enroll()
    answered, page_shown = trio.Event(), trio.Event()

    async def the_device() -> None:
        # The device comes by (as a push would make it) until the console's command is there, then answers.
        with trio.fail_after(WAIT_MS / 1000 * 3):
            while True:
                reply = await device.idle()
                if reply.command is not None:
                    break
                await trio.sleep(0.2)
        assert reply.command["Command"]["Queries"] == ["OSVersion", "SerialNumber"]
        with trio.fail_after(WAIT_MS / 1000):
            await page_shown.wait()  # the command's page is up without the answer: it must arrive by itself
        final = await device.acknowledge(reply.command_uuid, QueryResponses={
            "OSVersion": "14.4.1", "SerialNumber": "C02BROWSER01"})
        assert final.status == 200
        answered.set()

    def flow(page, base):
        sign_in(page, base, "oscar", PASSWORDS["operator"])
        page.goto(f"{base}/console/devices/BROWSER-DEVICE-1")
        screenshot(page, "device")
        page.get_by_role("link", name="Send a command to this device").click()
        page.get_by_label("Command").select_option("DeviceInformation")  # the script submits the choice
        page.get_by_role("checkbox", name="OSVersion", exact=True).check()
        page.get_by_role("checkbox", name="SerialNumber", exact=True).check()
        screenshot(page, "send")
        page.get_by_role("button", name="Send to 1").click()
        page.get_by_role("heading", name="DeviceInformation").wait_for()
        navigations = []
        page.on("framenavigated", lambda frame: navigations.append(frame.url))
        assert "C02BROWSER01" not in page.locator("#command-rows").inner_text()
        trio.from_thread.run_sync(page_shown.set)
        page.locator("#command-rows").get_by_text("C02BROWSER01").wait_for()
        screenshot(page, "command")
        return navigations, page.locator("#command-rows").inner_text()

    async with trio.open_nursery() as both:
        both.start_soon(the_device)
        navigations, shown = await in_browser(flow, server.api_url)
    assert answered.is_set()
    assert navigations == []  # the answer appeared without a reload
    assert "Acknowledged" in shown and "14.4.1" in shown
    await device.aclose()


async def test_cancel_a_pending_command(server):
    await add_users(server, operator="oscar")
    ids = await server.runtime.store.write(lambda conn: seed_devices(conn, 1))
    uuid_, body = command_plist("ProfileList")
    async with server.api_client() as api:
        assert (await api.put(f"/v1/enqueue/{ids[0]}?nopush=1", content=body)).status_code == 200

    def flow(page, base):
        sign_in(page, base, "oscar", PASSWORDS["operator"])
        page.goto(f"{base}/console/devices/{ids[0]}")
        page.get_by_role("button", name=f"Cancel ProfileList {uuid_}").click()
        page.get_by_role("status").filter(has_text="Command cancelled.").wait_for()
        return page.get_by_text("Nothing pending.").is_visible()

    assert await in_browser(flow, server.api_url)
    assert await queued(server) == []


async def test_import_a_push_certificate_and_see_the_admin_pages(server, tmp_path):
    await add_users(server, admin="alice")
    cert = make_push_cert(make_ca())
    pem = tmp_path / "MDM_Push.pem"
    pem.write_bytes(cert.cert_pem + cert.key_pem)

    def flow(page, base):
        sign_in(page, base, "alice", PASSWORDS["admin"])
        page.get_by_role("link", name="Push certificate", exact=True).click()
        page.get_by_label("Certificate: a .pem (with or without its key) or a .p12").set_input_files(str(pem))
        page.get_by_role("button", name="Import").click()
        notice = page.get_by_role("status").inner_text()
        screenshot(page, "push")
        for name, heading in (("Enrollment", "Enrollment"), ("Audit log", "Audit log"), ("Users", "Users")):
            page.get_by_role("link", name=name, exact=True).click()
            page.get_by_role("heading", name=heading, level=1).wait_for()
            screenshot(page, name.lower().replace(" ", "-"))
        page.goto(f"{base}/console/audit")
        return notice, page.locator("tbody").inner_text()

    notice, audit_text = await in_browser(flow, server.api_url)
    topic = server.runtime.push.status()["topic"]
    assert topic.startswith("com.apple.mgmt.") and topic in notice and "days" in notice
    assert "pushcert.import" in audit_text and "user alice" in audit_text


async def test_a_viewer_cannot_send_commands(server):
    await add_users(server, viewer="victor")
    ids = await server.runtime.store.write(lambda conn: seed_devices(conn, 1))

    def flow(page, base):
        sign_in(page, base, "victor", PASSWORDS["viewer"])
        has_link = page.get_by_role("link", name="Send a command").count()
        page.goto(f"{base}/console/devices/{ids[0]}")
        buttons = page.get_by_role("link", name="Send a command to this device").count()
        response = page.goto(f"{base}/console/commands/new?ids={ids[0]}&type=RestartDevice")
        return has_link, buttons, response.status, page.get_by_role("alert").inner_text()

    has_link, buttons, status, reason = await in_browser(flow, server.api_url)
    assert (has_link, buttons, status) == (0, 0, 403)
    assert "Your role (viewer) cannot do this" in reason
    assert await queued(server) == []
