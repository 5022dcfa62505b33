"""Every class of bad input gets a clear 4xx and leaves the database exactly as it was; certificate
binding refuses one device speaking for another; the body limit answers 413 without reading the rest."""

from __future__ import annotations

import base64
import datetime as dt
import plistlib

import h11
import pytest
import trio

from appliance.web import device as device_endpoints
from tests.support.device_sim import CHECKIN_TYPE, DeviceSim, TestCA, client_context, mdm_signature
from tests.support.mdm_support import start_mdm_server


@pytest.fixture
async def mdm(nursery, tmp_path):
    handle = await start_mdm_server(nursery, tmp_path, server={"max_body_size": 65536})
    yield handle
    handle.server.stop()


async def _enrolled(mdm, udid):
    device = mdm.device(udid)
    await device.enroll()
    return device


def _signed_bad_bodies():
    dumps = plistlib.dumps
    checkin = [
        b"this is not a plist",
        b"<?xml version='1.0'?><plist><dict><key>UDID</key>",  # truncated
        dumps(["an", "array"]),
        dumps({"UDID": "VICTIM"}),  # no MessageType
        dumps({"MessageType": "TokenUpdate", "PushMagic": "M", "Topic": "T", "Token": b"t"}),  # no UDID
        dumps({"MessageType": "TokenUpdate", "UDID": 42, "PushMagic": "M", "Topic": "T", "Token": b"t"}),
        dumps({"MessageType": "TokenUpdate", "UDID": "VICTIM", "PushMagic": "M", "Topic": "T", "Token": "str"}),
        dumps({"MessageType": "TokenUpdate", "UDID": "VICTIM", "PushMagic": 5, "Topic": "T", "Token": b"t"}),
        dumps({"MessageType": "Authenticate", "UDID": "VICTIM", "UserID": "U", "Topic": "T"}),  # user channel
        dumps({"MessageType": ["Authenticate"], "UDID": "VICTIM"}),
        dumps({"MessageType": "NoSuchType", "UDID": "VICTIM"}),
    ]
    report = [
        b"",
        b"\x00\xff" * 10,
        dumps("a string"),
        dumps({"UDID": "VICTIM"}),  # no Status
        dumps({"UDID": "VICTIM", "Status": "Acknowledged"}),  # no CommandUUID
        dumps({"UDID": "VICTIM", "Status": "Acknowledged", "CommandUUID": 7}),
        dumps({"UDID": "VICTIM", "Status": 1}),
        dumps({"UDID": "VICTIM", "Status": "Sure"}),
        dumps({"Status": "Idle"}),  # no UDID
        dumps({"UDID": "VICTIM", "Status": "Error", "CommandUUID": "Q-1", "ErrorChain": {"not": "array"}}),
        dumps({"UDID": "VICTIM", "Status": "Idle", "UserID": "FFFFFFFF-FFFF-FFFF-FFFF-FFFFFFFFFFFF"}),
    ]
    return checkin, report


async def test_malformed_messages_are_400_and_change_nothing(mdm):
    victim = await _enrolled(mdm, "VICTIM")
    await mdm.enqueue("Q-1", ["VICTIM"])
    before = await mdm.dump()
    checkin, report = _signed_bad_bodies()
    for body in checkin:
        reply = await victim.send("/mdm/checkin", body, content_type=CHECKIN_TYPE)
        assert reply.status == 400, (body, reply.status, reply.text)
        assert reply.text.strip() and reply.content_type.startswith("text/plain")
    for body in report:
        reply = await victim.send("/mdm/connect", body)
        assert reply.status == 400, (body, reply.status, reply.text)
    assert await mdm.dump() == before
    await victim.aclose()


async def test_reasons_name_what_is_wrong(mdm):
    victim = await _enrolled(mdm, "VICTIM")
    reply = await victim.send("/mdm/connect", plistlib.dumps({"UDID": "VICTIM", "Status": "Acknowledged"}))
    assert reply.text.strip() == "missing key CommandUUID"
    reply = await victim.checkin("TokenUpdate", Token="text", PushMagic="M", Topic="T")
    assert reply.text.strip() == "key Token must be data, got a string"
    await victim.aclose()


async def test_garbage_signatures_are_refused_and_change_nothing(mdm, tmp_path):
    victim = await _enrolled(mdm, "VICTIM")
    await mdm.enqueue("Q-1", ["VICTIM"])
    before = await mdm.dump()
    idle = plistlib.dumps({"UDID": "VICTIM", "Status": "Idle"})
    other_body = plistlib.dumps({"UDID": "VICTIM", "Status": "Idle", "X": 1})
    (tmp_path / "stranger").mkdir()
    stranger_ca = TestCA("Not Trusted", directory=tmp_path / "stranger")
    stranger_cert, stranger_key = stranger_ca.issue("VICTIM")
    expired_cert, _ = mdm.ca.issue("VICTIM", days=1, not_before=dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=30))
    cases = [
        ("%%% not base64 %%%", 400),
        (base64.b64encode(b"\x30\x03\x02\x01\x00").decode(), 400),
        (base64.b64encode(b"random junk that is not DER").decode(), 400),
        ("", 400),
        (mdm_signature(other_body, victim.cert, victim.key), 403),  # valid signature over another body
        (mdm_signature(idle, stranger_cert, stranger_key), 403),  # untrusted CA
        (mdm_signature(idle, expired_cert, victim.key), 403),  # expired (and not its key)
        (None, 403),  # no identity at all
    ]
    for header, status in cases:
        headers = [("Mdm-Signature", header)] if header is not None else []
        reply = await victim.send("/mdm/connect", idle, headers=headers, sign=False)
        assert reply.status == status, (header[:40] if header else header, reply.status, reply.text)
        assert reply.status != 401 and reply.text.strip()
    assert await mdm.dump() == before
    await victim.aclose()


async def test_certificate_bound_to_one_device_cannot_speak_for_another(mdm):
    victim = await _enrolled(mdm, "VICTIM")
    await mdm.enqueue("VICTIMS-1", ["VICTIM"])
    attacker = await _enrolled(mdm, "ATTACKER")
    before = await mdm.dump()
    # The attacker's own certificate (trusted, bound to ATTACKER) naming VICTIM:
    spoof = DeviceSim(mdm.server.base_url, mdm.server.ssl_context(), attacker.cert, attacker.key, "VICTIM")
    attempts = [
        spoof.authenticate(),
        spoof.token_update(),
        spoof.idle(),
        spoof.acknowledge("VICTIMS-1"),
        spoof.check_out(),
        spoof.set_bootstrap_token(b"evil"),
        spoof.get_bootstrap_token(),
        spoof.user("VICTIM-USER").token_update(),
    ]
    for attempt in attempts:
        reply = await attempt
        assert reply.status == 403, (reply.status, reply.text)
    assert await mdm.dump() == before
    assert (await victim.idle()).command_uuid == "VICTIMS-1"
    for device in (victim, attacker, spoof):
        await device.aclose()


async def test_device_never_authenticated_is_refused(mdm):
    async with mdm.device("NEWCOMER") as device:
        before = await mdm.dump()
        reply = await device.token_update()
        assert reply.status == 403 and "Authenticate" in reply.text
        assert (await device.idle()).status == 403
        assert await mdm.dump() == before


async def test_new_certificate_re_enrolls_clearing_queue_and_bootstrap_token_but_keeping_history(mdm):
    # Not a renewal proven by the bound identity (tests/server/test_identity_takeover.py): a re-enrollment.
    old = await _enrolled(mdm, "RENEW")
    await old.set_bootstrap_token(b"bootstrap")
    await mdm.enqueue("HIST-1", ["RENEW"])
    await old.idle()
    await old.acknowledge("HIST-1")
    await mdm.enqueue("PENDING-1", ["RENEW"])
    cert, key = mdm.ca.issue("RENEW renewed")
    async with DeviceSim(mdm.server.base_url, mdm.server.ssl_context(), cert, key, "RENEW") as new:
        await new.enroll()
        assert (await old.idle()).status == 403  # the old certificate no longer speaks for it
        assert (await new.get_bootstrap_token()).body == b""
        assert (await new.idle()).command is None
    assert [r["command_uuid"] for r in await mdm.rows("SELECT command_uuid FROM results")] == ["HIST-1"]
    await old.aclose()


async def test_tls_client_certificate_identifies_the_device(mdm):
    cert, key = mdm.ca.issue("TLS-DEV")
    context = client_context(mdm.server.ca_file, cert, key)
    async with DeviceSim(mdm.server.base_url, context, cert, key, "TLS-DEV", sign=False) as device:
        await device.enroll()
        await mdm.enqueue("TLS-1", ["TLS-DEV"])
        assert (await device.idle()).command_uuid == "TLS-1"


async def test_ecdsa_device_identity(mdm):
    async with mdm.device("EC-DEV", key_type="ec") as device:
        await device.enroll()
        assert (await device.idle()).status == 200


# --- the body limit -----------------------------------------------------------------------------------

async def _raw_exchange(mdm, headers, body_parts, *, end=True, method="PUT", with_headers=False):
    """Send a request by hand (h11), possibly without its whole body, and read the answer."""
    stream = await trio.open_ssl_over_tcp_stream("127.0.0.1", mdm.server.port,
                                                 ssl_context=mdm.server.ssl_context(), https_compatible=True)
    conn = h11.Connection(h11.CLIENT)
    response_headers = {}
    try:
        await stream.send_all(conn.send(h11.Request(method=method, target="/mdm/connect",
                                                    headers=[("Host", "127.0.0.1"), *headers])))
        for part in body_parts:
            await stream.send_all(conn.send(h11.Data(data=part)))
        if end:
            await stream.send_all(conn.send(h11.EndOfMessage()))
        status, body = None, b""
        with trio.fail_after(10):
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    data = await stream.receive_some(65536)
                    if not data:
                        break
                    conn.receive_data(data)
                elif isinstance(event, h11.Response):
                    status = event.status_code
                    response_headers = {name.decode(): value.decode() for name, value in event.headers}
                elif isinstance(event, h11.Data):
                    body += event.data
                elif isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed)):
                    break
        return (status, body, response_headers) if with_headers else (status, body)
    finally:
        with trio.move_on_after(2):
            await stream.aclose()


async def test_declared_length_over_limit_is_413_before_the_body_is_sent(mdm):
    before = await mdm.dump()
    # Content-Length promises 100 MiB; we send 1 KiB and wait: the answer must come without the rest.
    status, body = await _raw_exchange(mdm, [("Content-Length", str(100 * 1024 * 1024))], [b"x" * 1024], end=False)
    assert status == 413 and b"limit" in body
    assert await mdm.dump() == before


async def test_chunked_body_over_limit_is_413_without_the_rest(mdm):
    before = await mdm.dump()
    # No Content-Length: 96 KiB of chunks (limit 64 KiB), and the body never ends.
    status, body = await _raw_exchange(mdm, [("Transfer-Encoding", "chunked")], [b"y" * 16384] * 6, end=False)
    assert status == 413
    assert await mdm.dump() == before


async def test_signed_body_just_over_the_limit_is_413(mdm):
    async with mdm.device("BIG") as device:
        await device.enroll()
        before = await mdm.dump()
        big = plistlib.dumps({"UDID": "BIG", "Status": "Idle", "Pad": "p" * 70000})
        reply = await device.send("/mdm/connect", big)
        assert reply.status == 413
        small = plistlib.dumps({"UDID": "BIG", "Status": "Idle", "Pad": "p" * 60000})
        assert (await device.send("/mdm/connect", small)).status == 200
        assert before != await mdm.dump()  # the small one was served (last seen moved)


async def test_a_replaced_certificate_cannot_authenticate_as_another_device(mdm):
    old = await _enrolled(mdm, "RENEWED")
    cert, key = mdm.ca.issue("RENEWED v2")
    async with DeviceSim(mdm.server.base_url, mdm.server.ssl_context(), cert, key, "RENEWED") as new:
        await new.enroll()  # the old certificate is now replaced, bound to nothing
    before = await mdm.dump()
    async with DeviceSim(mdm.server.base_url, mdm.server.ssl_context(), old.cert, old.key, "SOMEONE-ELSE") as thief:
        reply = await thief.authenticate()
        assert reply.status == 403 and "another device" in reply.text
    assert await mdm.dump() == before
    await old.aclose()


# --- the device endpoints' own HTTP handling (raw ASGI, appliance.web.device) ---------------------------

async def test_other_methods_are_405_naming_put(mdm):
    status, body, headers = await _raw_exchange(mdm, [("Content-Length", "0")], [], method="GET", with_headers=True)
    assert (status, headers.get("allow")) == (405, "PUT") and b"PUT" in body


async def test_a_body_that_stalls_is_408_and_changes_nothing(mdm, monkeypatch):
    monkeypatch.setattr(device_endpoints, "BODY_TIMEOUT", 0.5)
    before = await mdm.dump()
    status, body, headers = await _raw_exchange(mdm, [("Content-Length", "100")], [b"x" * 10], end=False,
                                                with_headers=True)
    assert (status, headers.get("connection")) == (408, "close") and b"in time" in body
    assert await mdm.dump() == before


async def test_a_client_gone_mid_body_is_no_error(mdm, caplog):
    stream = await trio.open_ssl_over_tcp_stream("127.0.0.1", mdm.server.port,
                                                 ssl_context=mdm.server.ssl_context(), https_compatible=True)
    conn = h11.Connection(h11.CLIENT)
    await stream.send_all(conn.send(h11.Request(method="PUT", target="/mdm/connect",
                                                headers=[("Host", "127.0.0.1"), ("Content-Length", "100")])))
    await stream.send_all(conn.send(h11.Data(data=b"x" * 10)))
    await stream.aclose()
    async with mdm.device("AFTER") as device:  # the server carries on
        await device.enroll()
        assert (await device.idle()).status == 200
    assert not [r for r in caplog.records if r.levelname in ("ERROR", "CRITICAL")]


async def test_content_type_is_matched_without_case_or_parameters(mdm):
    async with mdm.device("CT") as device:
        await device.enroll()
        body = plistlib.dumps({"MessageType": "TokenUpdate", "UDID": "CT", "Token": b"\x02", "PushMagic": "M2",
                               "Topic": "com.apple.mgmt.External.test"})
        reply = await device.send("/mdm/connect", body,
                                  content_type="Application/X-Apple-Aspen-MDM-Checkin; charset=UTF-8")
        assert (reply.status, reply.body) == (200, b"")
    rows = await mdm.rows("SELECT push_magic, token_update_count FROM enrollments WHERE id = 'CT'")
    assert rows == [{"push_magic": "M2", "token_update_count": 2}]
