"""Borrowed identities and re-enrollment (docs/RELIABILITY.md): a certificate other than the one bound to
a device gets none of its state.

A new identity sending Authenticate for a known UDID re-enrolls it: pending commands on every channel, the
bootstrap token, the unlock token and the push token go, results stay, the old certificate is refused from
then on, and a webhook event says so. Only a renewal proven by the bound identity keeps the queue and the
bootstrap token: a SCEP RenewalReq signed by it, or a one-time challenge the appliance tied to it."""

from __future__ import annotations

import functools
import hashlib

import pytest
import trio
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from appliance.service import enrollment
from tests.support import scep_client
from tests.support.device_sim import DeviceSim
from tests.support.harness import free_port
from tests.support.mdm_support import start_mdm_server
from tests.support.webhook_receiver import Receiver

REENROLLMENT_TOPIC = "appliance.Reenrollment"


@pytest.fixture
async def site(nursery, tmp_path):
    """The appliance (its own SCEP CA, static challenge "test-challenge", plus a trusted test device CA)
    delivering webhooks to a local receiver."""
    receiver = Receiver(port=free_port())
    stop = trio.Event()
    await nursery.start(receiver.run, stop)
    mdm = await start_mdm_server(nursery, tmp_path, webhook={"url": f"http://127.0.0.1:{receiver.port}/hook"})
    yield mdm, receiver
    mdm.server.stop()
    stop.set()


def _sha256(cert: x509.Certificate) -> str:
    return hashlib.sha256(cert.public_bytes(Encoding.DER)).hexdigest()


def _device(mdm, cert, key, udid: str) -> DeviceSim:
    return DeviceSim(mdm.server.base_url, mdm.server.ssl_context(), cert, key, udid)


async def _scep(mdm, requester: scep_client.Requester, *, signer=None) -> scep_client.CertRep:
    """One PKIOperation as a device's SCEP client sends it: a PKCSReq, or a RenewalReq signed by `signer`."""
    async with mdm.server.client() as http:
        ca_der = (await http.get("/scep", params={"operation": "GetCACert"})).content
        ca = x509.load_der_x509_certificate(ca_der)
        request = scep_client.pkcs_req(requester, ca, message_type=19 if signer is None else 17, signer=signer)
        response = await http.post("/scep?operation=PKIOperation", content=request.der,
                                   headers={"Content-Type": "application/x-pki-message"})
        assert response.status_code == 200, response.text
        return scep_client.read_cert_rep(response.content, ca, request)


async def _scep_identity(mdm, name: str, *, challenge: str | None = "test-challenge", signer=None):
    """(certificate, key) issued by the appliance's SCEP CA to a new key."""
    requester = scep_client.Requester(common_name=name, challenge=challenge)
    answer = await _scep(mdm, requester, signer=signer)
    assert answer.status == 0, answer.fail_info
    (cert,) = answer.certificates
    return cert, requester.key


async def _enrolled_with_state(mdm, device: DeviceSim, tag: str) -> None:
    """Enrolled on the device channel and a user channel, with a bootstrap token, an unlock token, one
    command done (history), one in flight, one waiting on each channel."""
    await device.enroll()
    assert (await device.token_update(UnlockToken=f"{tag}-unlock".encode())).status == 200
    assert (await device.user(f"{tag}-USER").token_update()).status == 200
    assert (await device.set_bootstrap_token(f"{tag}-bootstrap".encode())).status == 200
    await mdm.enqueue(f"{tag}-DONE", [device.udid])
    assert (await device.idle()).command_uuid == f"{tag}-DONE"
    assert (await device.acknowledge(f"{tag}-DONE")).command is None
    await mdm.enqueue(f"{tag}-SENT", [device.udid])
    assert (await device.idle()).command_uuid == f"{tag}-SENT"  # the device holds it now
    await mdm.enqueue(f"{tag}-WAITING", [device.udid])
    await mdm.enqueue(f"{tag}-USER-WAITING", [f"{device.udid}:{tag}-USER"])


async def _pending(mdm) -> list[tuple[str, str]]:
    rows = await mdm.rows("SELECT enrollment_id, command_uuid FROM queue ORDER BY id")
    return [(r["enrollment_id"], r["command_uuid"]) for r in rows]


async def _bound(mdm, udid: str) -> str | None:
    rows = await mdm.rows("SELECT sha256 FROM cert_bindings WHERE device_id = ?", udid)
    return rows[0]["sha256"] if rows else None


async def _state(mdm) -> list[str]:
    """The database, but for the webhook outbox (its worker delivers and deletes events meanwhile)."""
    return [line for line in (await mdm.dump()).splitlines() if not line.startswith('INSERT INTO "outbox"')]


def _topics(receiver: Receiver) -> list[str]:
    return [delivery.event["topic"] for delivery in receiver.accepted]


def _device_topics(receiver: Receiver, udid: str) -> list[str]:
    """Topics of the events about the device channel, in the order they arrived."""
    topics = []
    for delivery in receiver.accepted:
        event = delivery.event
        (inner,) = [value for key, value in event.items() if key.endswith("_event")]
        if inner.get("ids", {}).get("id") == udid:
            topics.append(event["topic"])
    return topics


# --- the attack ------------------------------------------------------------------------------------------

async def test_a_borrowed_identity_naming_another_device_gets_nothing_of_it(site):
    mdm, receiver = site
    async with mdm.device("UDID-A") as a:
        await _enrolled_with_state(mdm, a, "A")
        # B holds a valid identity from a trusted CA, bound to nothing, and claims A's UDID.
        b_cert, b_key = mdm.ca.issue("B's own identity")
        async with _device(mdm, b_cert, b_key, "UDID-A") as b:
            assert (await b.authenticate()).status == 200  # to the protocol, a re-enrollment
            # A's secrets and queue went with the old enrollment, on every channel; its history stays.
            assert await _pending(mdm) == []
            secrets = await mdm.rows("SELECT bootstrap_token, unlock_token FROM devices WHERE id = 'UDID-A'")
            assert secrets == [{"bootstrap_token": None, "unlock_token": None}]
            channels = await mdm.rows("SELECT id, token, push_magic, active FROM enrollments ORDER BY id")
            assert channels == [{"id": "UDID-A", "token": None, "push_magic": None, "active": 0},
                                {"id": "UDID-A:A-USER", "token": None, "push_magic": None, "active": 0}]

            reply = await b.get_bootstrap_token()
            assert (reply.status, reply.body) == (200, b"")
            assert (await b.token_update()).status == 200
            assert (await b.idle()).command is None
            b_user = b.user("A-USER")
            assert (await b_user.token_update()).status == 200
            assert (await b_user.idle()).command is None
            # A report on the command A was holding is kept as a stray report, never as A's result.
            assert (await b.acknowledge("A-SENT")).status == 200

        results = await mdm.rows("SELECT enrollment_id, command_uuid FROM results")
        assert results == [{"enrollment_id": "UDID-A", "command_uuid": "A-DONE"}]
        strays = await mdm.rows("SELECT enrollment_id, command_uuid FROM stray_reports")
        assert strays == [{"enrollment_id": "UDID-A", "command_uuid": "A-SENT"}]
        # A's own certificate no longer speaks for it, not even to Authenticate again.
        assert (await a.idle()).status == 403
        assert (await a.authenticate()).status == 403

    await receiver.wait_for(lambda: REENROLLMENT_TOPIC in _topics(receiver))
    (event,) = [d.event for d in receiver.accepted if d.event["topic"] == REENROLLMENT_TOPIC]
    assert event["reenrollment_event"] == {
        "udid": "UDID-A", "ids": {"id": "UDID-A", "type": "Device"},
        "previous_certificate_sha256": _sha256(a.cert), "certificate_sha256": _sha256(b_cert),
        "certificate_subject": "CN=B's own identity",
        "cleared": {"commands": 3, "bootstrap_token": True, "unlock_token": True},
    }
    # Told just before the Authenticate that caused it (one enrollment's events arrive in order).
    await receiver.wait_for(lambda: _device_topics(receiver, "UDID-A").count("mdm.Authenticate") == 2)
    topics = _device_topics(receiver, "UDID-A")
    assert topics[topics.index(REENROLLMENT_TOPIC) + 1] == "mdm.Authenticate"
    assert topics.index(REENROLLMENT_TOPIC) > topics.index("mdm.Authenticate")


async def test_a_refused_identity_changes_nothing(site):
    mdm, _ = site
    async with mdm.device("UDID-OWNER") as owner, mdm.device("UDID-OTHER") as other:
        await owner.enroll()
        await other.enroll()
        await mdm.enqueue("OWNERS-1", ["UDID-OWNER"])
        replaced_cert, replaced_key = owner.cert, owner.key
        new_cert, new_key = mdm.ca.issue("owner, re-enrolled")
        async with _device(mdm, new_cert, new_key, "UDID-OWNER") as reenrolled:
            await reenrolled.enroll()
        before = await _state(mdm)
        attempts = [
            # the replaced certificate, for its own device and for another
            _device(mdm, replaced_cert, replaced_key, "UDID-OWNER"),
            _device(mdm, replaced_cert, replaced_key, "UDID-NEW"),
            # a certificate bound to another device
            _device(mdm, other.cert, other.key, "UDID-OWNER"),
        ]
        for attempt in attempts:
            async with attempt:
                reply = await attempt.authenticate()
                assert reply.status == 403, reply.text
                assert (await attempt.idle()).status == 403
        assert await _state(mdm) == before


# --- re-enrollment --------------------------------------------------------------------------------------

async def test_a_wiped_device_re_enrolls_through_scep_with_a_new_identity(site):
    mdm, receiver = site
    old_cert, old_key = await _scep_identity(mdm, "UDID-W")
    async with _device(mdm, old_cert, old_key, "UDID-W") as before_wipe:
        await _enrolled_with_state(mdm, before_wipe, "W")
    # Wiped: the key is gone; the enrollment profile is installed again, SCEP issues a new identity.
    new_cert, new_key = await _scep_identity(mdm, "UDID-W")
    async with _device(mdm, new_cert, new_key, "UDID-W") as wiped:
        await wiped.enroll()
        assert (await wiped.set_bootstrap_token(b"new-bootstrap")).status == 200
        await mdm.enqueue("AFTER-WIPE", ["UDID-W"])
        assert (await wiped.idle()).command_uuid == "AFTER-WIPE"
        assert (await wiped.acknowledge("AFTER-WIPE")).command is None
        assert (await wiped.get_bootstrap_token()).plist == {"BootstrapToken": b"new-bootstrap"}
    assert await _bound(mdm, "UDID-W") == _sha256(new_cert)
    rows = await mdm.rows("SELECT command_uuid FROM results ORDER BY received_at")
    assert [r["command_uuid"] for r in rows] == ["W-DONE", "AFTER-WIPE"]
    enrolled = await mdm.rows("SELECT active, token FROM enrollments WHERE id = 'UDID-W'")
    assert enrolled == [{"active": 1, "token": wiped.push_token}]
    async with _device(mdm, old_cert, old_key, "UDID-W") as stale:
        assert (await stale.idle()).status == 403
    await receiver.wait_for(lambda: REENROLLMENT_TOPIC in _topics(receiver))


# --- proven renewals ---------------------------------------------------------------------------------

async def _renewed_keeps_everything(mdm, receiver, old: DeviceSim, new: DeviceSim, first: str) -> None:
    """The successor presented first with Authenticate (+ TokenUpdate) or straight away with an Idle."""
    # Until the new certificate is seen, the bound one still speaks for the device.
    assert (await old.get_bootstrap_token()).status == 200
    if first == "authenticate":
        await new.enroll()
    assert (await new.idle()).command_uuid == "R-SENT"  # offered again: the device asked anew
    assert (await new.acknowledge("R-SENT")).command_uuid == "R-WAITING"
    assert (await new.user("R-USER").idle()).command_uuid == "R-USER-WAITING"
    assert (await new.get_bootstrap_token()).plist == {"BootstrapToken": b"R-bootstrap"}
    assert (await mdm.rows("SELECT unlock_token FROM devices"))[0]["unlock_token"] == b"R-unlock"
    assert await _bound(mdm, new.udid) == _sha256(new.cert)
    # Once the new certificate has been seen, the old one is refused.
    assert (await old.idle()).status == 403
    assert (await old.authenticate()).status == 403
    # Both GetBootstrapToken events came, so any event about this device before them has come too.
    await receiver.wait_for(lambda: _topics(receiver).count("mdm.GetBootstrapToken") == 2)
    assert REENROLLMENT_TOPIC not in _topics(receiver)


@pytest.mark.parametrize("first", ["authenticate", "idle"])
async def test_a_renewal_signed_by_the_bound_identity_keeps_queue_and_bootstrap_token(site, first):
    mdm, receiver = site
    cert, key = await _scep_identity(mdm, "UDID-R")
    async with _device(mdm, cert, key, "UDID-R") as old:
        await _enrolled_with_state(mdm, old, "R")
        # RenewalReq: a new key, the same subject, signed by the bound identity; no challenge needed.
        renewed_cert, renewed_key = await _scep_identity(mdm, "UDID-R", challenge=None, signer=(cert, key))
        async with _device(mdm, renewed_cert, renewed_key, "UDID-R") as new:
            await _renewed_keeps_everything(mdm, receiver, old, new, first)
    # The replaced identity cannot sign a renewal any more either.
    refused = await _scep(mdm, scep_client.Requester(common_name="UDID-R", challenge=None), signer=(cert, key))
    assert (refused.status, refused.fail_info) == (2, 2)


async def test_a_one_time_challenge_tied_to_the_device_proves_its_renewal(site):
    mdm, receiver = site
    cert, key = await _scep_identity(mdm, "UDID-R")
    async with _device(mdm, cert, key, "UDID-R") as old:
        await _enrolled_with_state(mdm, old, "R")
        # What the appliance sends the device over its authenticated channel (issue #10 schedules it as an
        # InstallProfile of the enrollment profile): a one-time challenge tied to this device's identity.
        mint = functools.partial(enrollment.mint_challenge_sync, config=mdm.server.config, renewal_of="UDID-R")
        challenge, _ = await mdm.server.runtime.store.write(mint)
        renewed_cert, renewed_key = await _scep_identity(mdm, "UDID-R", challenge=challenge)
        async with _device(mdm, renewed_cert, renewed_key, "UDID-R") as new:
            await _renewed_keeps_everything(mdm, receiver, old, new, "idle")
    # One time only.
    spent = await _scep(mdm, scep_client.Requester(common_name="UDID-R", challenge=challenge))
    assert (spent.status, spent.fail_info) == (2, 2)


async def test_a_tied_challenge_proves_only_the_binding_it_was_minted_for(site):
    mdm, receiver = site
    cert, key = await _scep_identity(mdm, "UDID-T")
    async with _device(mdm, cert, key, "UDID-T") as first:
        await first.enroll()
    mint = functools.partial(enrollment.mint_challenge_sync, config=mdm.server.config, renewal_of="UDID-T")
    challenge, _ = await mdm.server.runtime.store.write(mint)
    unspent, _ = await mdm.server.runtime.store.write(mint)
    late_cert, late_key = await _scep_identity(mdm, "UDID-T", challenge=challenge)
    # The device re-enrolls with another identity before the renewal is presented.
    wiped_cert, wiped_key = await _scep_identity(mdm, "UDID-T")
    async with _device(mdm, wiped_cert, wiped_key, "UDID-T") as wiped:
        await wiped.enroll()
        await mdm.enqueue("T-1", ["UDID-T"])
    # A tied challenge not spent yet went with the old binding: it issues nothing now.
    refused = await _scep(mdm, scep_client.Requester(common_name="UDID-T", challenge=unspent))
    assert (refused.status, refused.fail_info) == (2, 2)
    # Not a successor of the current binding: presented without Authenticate it is refused ...
    async with _device(mdm, late_cert, late_key, "UDID-T") as late:
        before = await _state(mdm)
        assert (await late.idle()).status == 403
        assert await _state(mdm) == before
        # ... and as another device it is refused, even with Authenticate: it was issued for UDID-T.
    async with _device(mdm, late_cert, late_key, "UDID-ELSEWHERE") as elsewhere:
        assert (await elsewhere.authenticate()).status == 403
        assert await _state(mdm) == before
    # With Authenticate for its own device it is one more re-enrollment: the queue goes.
    async with _device(mdm, late_cert, late_key, "UDID-T") as late:
        await late.enroll()
        assert (await late.idle()).command is None
    assert await _pending(mdm) == []


async def test_a_renewal_challenge_needs_a_bound_device(site):
    mdm, _ = site
    mint = functools.partial(enrollment.mint_challenge_sync, config=mdm.server.config, renewal_of="NO-SUCH-UDID")
    before = await _state(mdm)
    with pytest.raises(ValueError, match="NO-SUCH-UDID"):
        await mdm.server.runtime.store.write(mint)
    assert await _state(mdm) == before


async def test_a_successor_never_speaks_for_another_device(site):
    mdm, _ = site
    cert, key = await _scep_identity(mdm, "UDID-S")
    async with _device(mdm, cert, key, "UDID-S") as device:
        await device.enroll()
    renewed_cert, renewed_key = await _scep_identity(mdm, "UDID-S", challenge=None, signer=(cert, key))
    async with mdm.device("UDID-VICTIM") as victim:
        await victim.enroll()
        await mdm.enqueue("VICTIM-1", ["UDID-VICTIM"])
        before = await _state(mdm)
        async with _device(mdm, renewed_cert, renewed_key, "UDID-VICTIM") as thief:
            assert (await thief.idle()).status == 403
            reply = await thief.authenticate()
            assert reply.status == 403 and "another device" in reply.text
        assert await _state(mdm) == before
        assert (await victim.idle()).command_uuid == "VICTIM-1"
