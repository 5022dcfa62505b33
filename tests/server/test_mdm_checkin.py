"""Check-in messages over real TLS against the real server and SQLite file, sent by the device simulator."""

from __future__ import annotations

import logging
import plistlib

import pytest

from tests.support.mdm_support import start_mdm_server


@pytest.fixture
async def mdm(nursery, tmp_path):
    handle = await start_mdm_server(nursery, tmp_path)
    yield handle
    handle.server.stop()


async def _enrollment(mdm, enrollment_id):
    rows = await mdm.rows("SELECT * FROM enrollments WHERE id = ?", enrollment_id)
    return rows[0] if rows else None


async def test_authenticate_records_facts_and_stays_inactive(mdm):
    async with mdm.device("UDID-A", serial_number="C02AAA") as device:
        reply = await device.authenticate(OSVersion="14.5", DeviceName="Ann's Mac")
        assert (reply.status, reply.body) == (200, b"")
        assert "content-type" not in reply.headers  # an empty answer is zero bytes, no plist
    row = (await mdm.rows("SELECT * FROM devices WHERE id = 'UDID-A'"))[0]
    assert (row["serial_number"], row["os_version"], row["device_name"]) == ("C02AAA", "14.5", "Ann's Mac")
    assert plistlib.loads(row["authenticate_raw"])["MessageType"] == "Authenticate"
    enrollment = await _enrollment(mdm, "UDID-A")
    assert enrollment["active"] == 0 and enrollment["token"] is None
    assert (await mdm.rows("SELECT count(*) AS n FROM cert_bindings WHERE device_id = 'UDID-A'"))[0]["n"] == 1


async def test_first_token_update_enrolls_and_later_ones_refresh(mdm):
    async with mdm.device("UDID-B") as device:
        await device.authenticate()
        await mdm.server.runtime.store.write(
            lambda c: c.execute("UPDATE enrollments SET token_invalid_at = 'x', push_backoff_until = 'y'"))
        reply = await device.token_update(UnlockToken=b"unlock", AwaitingConfiguration=True)
        assert (reply.status, reply.body) == (200, b"")
        first = await _enrollment(mdm, "UDID-B")
        assert first["active"] == 1 and first["token_update_count"] == 1
        assert (first["token"], first["push_magic"], first["topic"]) == (device.push_token, device.push_magic,
                                                                         device.topic)
        assert first["awaiting_configuration"] == 1 and first["enrolled_at"] is not None
        assert first["token_invalid_at"] is None and first["push_backoff_until"] is None
        assert (await mdm.rows("SELECT unlock_token FROM devices"))[0]["unlock_token"] == b"unlock"

        device.push_token = b"\x07" * 32
        assert (await device.token_update()).status == 200
        later = await _enrollment(mdm, "UDID-B")
        assert later["token_update_count"] == 2 and later["token"] == b"\x07" * 32
        assert later["enrolled_at"] == first["enrolled_at"]
        # UnlockToken is not resent with every TokenUpdate: the stored one stays.
        assert (await mdm.rows("SELECT unlock_token FROM devices"))[0]["unlock_token"] == b"unlock"


async def test_user_channels(mdm):
    async with mdm.device("UDID-C") as device:
        await device.enroll()
        user = device.user("USER-GUID-1", "ann", "Ann Example")
        assert (await user.token_update()).status == 200
        ipad_user = device.user("FFFFFFFF-FFFF-FFFF-FFFF-FFFFFFFFFFFF", "ann@example.org")
        assert (await ipad_user.token_update()).status == 200
    user_row = await _enrollment(mdm, "UDID-C:USER-GUID-1")
    assert (user_row["device_id"], user_row["type"], user_row["user_short_name"], user_row["active"]) == \
        ("UDID-C", "User", "ann", 1)
    shared = await _enrollment(mdm, "UDID-C:ann@example.org")
    assert shared["type"] == "Shared iPad"


async def test_check_out_deactivates_device_and_user_channels(mdm):
    async with mdm.device("UDID-D") as device:
        await device.enroll()
        await device.user("U1").token_update()
        assert (await device.check_out()).status == 200
    rows = await mdm.rows("SELECT id, active, checked_out_at FROM enrollments ORDER BY id")
    assert [(r["id"], r["active"]) for r in rows] == [("UDID-D", 0), ("UDID-D:U1", 0)]
    assert all(r["checked_out_at"] for r in rows)


async def test_re_authenticate_starts_over_but_keeps_queue(mdm):
    async with mdm.device("UDID-E") as device:
        await device.enroll()
        await mdm.enqueue("KEEP-1", ["UDID-E"])
        assert (await device.authenticate()).status == 200
        assert (await _enrollment(mdm, "UDID-E"))["active"] == 0
        assert (await device.token_update()).status == 200
        row = await _enrollment(mdm, "UDID-E")
        assert row["active"] == 1 and row["token_update_count"] == 1  # told apart: enrolled again
        assert (await device.idle()).command_uuid == "KEEP-1"


async def test_bootstrap_token_set_get_delete(mdm):
    async with mdm.device("UDID-F") as device:
        await device.enroll()
        reply = await device.get_bootstrap_token()
        assert (reply.status, reply.body) == (200, b"")
        assert (await device.set_bootstrap_token(b"secret-token")).status == 200
        reply = await device.get_bootstrap_token()
        assert reply.status == 200 and reply.content_type == "application/xml; charset=UTF-8"
        assert reply.plist == {"BootstrapToken": b"secret-token"}
        assert (await device.set_bootstrap_token(b"")).status == 200  # empty means delete
        assert (await device.get_bootstrap_token()).body == b""
        assert (await device.set_bootstrap_token(b"again")).status == 200
        assert (await device.set_bootstrap_token(None)).status == 200  # missing means delete too
        assert (await mdm.rows("SELECT bootstrap_token FROM devices"))[0]["bootstrap_token"] is None


async def test_user_authenticate_declined_by_default(mdm):
    async with mdm.device("UDID-G") as device:
        await device.enroll()
        reply = await device.user("U1").checkin("UserAuthenticate")
        assert reply.status == 410 and "declined" in reply.text


async def test_user_authenticate_accepted_when_configured(nursery, tmp_path):
    mdm = await start_mdm_server(nursery, tmp_path, checkin={"user_authenticate": "accept"})
    async with mdm.device("UDID-H") as device:
        await device.enroll()
        user = device.user("U1", "ann")
        first = await user.checkin("UserAuthenticate")
        assert first.status == 200 and first.plist == {"DigestChallenge": ""}
        assert first.content_type == "application/xml; charset=UTF-8"
        second = await user.checkin("UserAuthenticate", DigestResponse="")
        assert (second.status, second.body) == (200, b"")
    mdm.server.stop()


@pytest.mark.parametrize("message_type, keys, status, reason", [
    # Apple: a service type the server does not recognize is answered 400.
    ("GetToken", {"TokenServiceType": "com.apple.maid"}, 400,
     "GetToken: TokenServiceType com.apple.maid is not offered"),
])
async def test_services_not_offered_yet(mdm, message_type, keys, status, reason):
    async with mdm.device("UDID-I") as device:
        await device.enroll()
        reply = await device.checkin(message_type, **keys)
        assert (reply.status, reply.content_type) == (status, "text/plain; charset=utf-8")
        assert reason in reply.text


async def test_unknown_message_type_is_400_naming_it(mdm):
    async with mdm.device("UDID-J") as device:
        await device.enroll()
        before = await mdm.dump()
        reply = await device.checkin("Frobnicate")
        assert reply.status == 400 and "Frobnicate" in reply.text
        assert await mdm.dump() == before


async def test_checkin_url_and_server_url_both_route_by_content_type(mdm):
    # A profile without CheckInURL sends check-ins to ServerURL: same handling.
    async with mdm.device("UDID-K", checkin_path="/mdm/connect", connect_path="/mdm/checkin") as device:
        await device.enroll()
        await mdm.enqueue("ROUTE-1", ["UDID-K"])
        assert (await device.idle()).command_uuid == "ROUTE-1"
    assert (await _enrollment(mdm, "UDID-K"))["active"] == 1


async def test_webhook_outbox_rows_written_with_the_change(nursery, tmp_path):
    mdm = await start_mdm_server(nursery, tmp_path, webhook={"url": "http://127.0.0.1:9/hook"})
    async with mdm.device("UDID-W") as device:
        await device.enroll()
        await mdm.enqueue("W-1", ["UDID-W"])
        await device.idle()
        await device.acknowledge("W-1")
    rows = await mdm.rows("SELECT enrollment_id, topic FROM outbox ORDER BY id")
    assert [r["topic"] for r in rows][:4] == ["mdm.Authenticate", "mdm.TokenUpdate", "mdm.Connect", "mdm.Connect"]
    assert all(r["enrollment_id"] == "UDID-W" for r in rows[:4])
    mdm.server.stop()


async def test_user_enrollment_ids_over_the_wire(mdm):
    async with mdm.device("IGNORED") as device:
        device.channel = {"EnrollmentID": "ENR-1"}
        await device.enroll()
        device.channel = {"EnrollmentID": "ENR-1", "EnrollmentUserID": "EU-1"}
        assert (await device.token_update()).status == 200
        await mdm.enqueue("UE-1", ["ENR-1:EU-1"])
        assert (await device.idle()).command_uuid == "UE-1"
    rows = await mdm.rows("SELECT id, device_id, type, active FROM enrollments ORDER BY id")
    assert [(r["id"], r["device_id"], r["type"], r["active"]) for r in rows] == [
        ("ENR-1", "ENR-1", "User Enrollment (Device)", 1), ("ENR-1:EU-1", "ENR-1", "User Enrollment", 1)]


async def test_request_log_line_names_enrollment_and_command(mdm):
    records = []

    class Collect(logging.Handler):
        def emit(self, record):
            records.append(getattr(record, "fields", {}))

    handler = Collect()
    logger = logging.getLogger("appliance.http")
    logger.addHandler(handler)
    try:
        async with mdm.device("LOGGED") as device:
            await device.enroll()
            await mdm.enqueue("LOG-1", ["LOGGED"])
            await device.idle()
            await device.acknowledge("LOG-1")
    finally:
        logger.removeHandler(handler)
    lines = [(r.get("path"), r.get("enrollment_id"), r.get("command_uuid")) for r in records if r.get("path")]
    assert ("/mdm/connect", "LOGGED", "LOG-1") in lines  # the Idle that sent it, and the report about it
    assert lines.count(("/mdm/connect", "LOGGED", "LOG-1")) == 2
    assert ("/mdm/checkin", "LOGGED", None) in lines
