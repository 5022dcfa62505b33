"""Identity renewal (issue 10, part 1) against the real server: a device whose identity from the appliance CA
comes due is sent the enrollment profile again (InstallProfile, a one-time challenge tied to its binding),
really runs SCEP with it, and goes on with the new identity, keeping its queue, bootstrap token and history;
the old identity is refused afterwards. Time moves by the test clock; certificates last a day."""

from __future__ import annotations

import hashlib
import plistlib
from dataclasses import dataclass
from datetime import timedelta

import pytest
import trio
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from appliance.clock import OffsetClock
from appliance.store.timefmt import from_text
from tests.support import scep_client
from tests.support.apns_certs import make_ca, make_push_cert, make_server
from tests.support.apns_standin import StandIn
from tests.support.device_sim import DeviceSim, ScepRefused
from tests.support.harness import free_port
from tests.support.mdm_support import MdmServer, start_mdm_server
from tests.support.push_support import import_cert, metric_lines, scrape

HALF_A_DAY = timedelta(hours=12, minutes=5)  # past the half-life of a one-day identity: renewal is due
RETRY = timedelta(hours=1, minutes=1)  # past [renewal] retry_initial


def _sha256(cert: x509.Certificate) -> str:
    return hashlib.sha256(cert.public_bytes(Encoding.DER)).hexdigest()


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    folder = tmp_path_factory.mktemp("renewal-apns")
    server_ca, push_ca = make_ca("Stand-in server CA"), make_ca("Stand-in Apple push CA")
    (folder / "apns-ca.pem").write_bytes(server_ca.cert_pem)
    return {"server": make_server(server_ca), "push_ca": push_ca, "ca_file": folder / "apns-ca.pem"}


@dataclass
class Site:
    mdm: MdmServer
    clock: OffsetClock
    apns: StandIn
    topic: str

    @property
    def server(self):
        return self.mdm.server

    async def scep_identity(self, name: str) -> tuple[x509.Certificate, object]:
        """An identity from the appliance's SCEP CA (static challenge), as a first enrollment gets it."""
        async with self.server.client() as http:
            ca = x509.load_der_x509_certificate((await http.get("/scep", params={"operation": "GetCACert"})).content)
            requester = scep_client.Requester(common_name=name, challenge="test-challenge")
            request = scep_client.pkcs_req(requester, ca)
            answer = await http.post("/scep?operation=PKIOperation", content=request.der,
                                     headers={"Content-Type": "application/x-pki-message"})
        (cert,) = scep_client.read_cert_rep(answer.content, ca, request).certificates
        return cert, requester.key

    async def enrolled(self, udid: str) -> DeviceSim:
        cert, key = await self.scep_identity(udid)
        device = DeviceSim(self.server.base_url, self.server.ssl_context(), cert, key, udid, topic=self.topic)
        await device.enroll()
        return device

    async def identity(self, udid: str) -> dict:
        async with self.server.api_client() as api:
            answer = await api.get(f"/v1/devices/{udid}")
        assert answer.status_code == 200, answer.text
        return answer.json()["identity_certificate"]

    async def renewal_becomes(self, udid: str, predicate) -> dict:
        """The device's renewal, once `predicate(renewal)` holds (the worker runs on its own after an advance)."""
        with trio.fail_after(15):
            while True:
                renewal = (await self.identity(udid))["renewal"]
                if predicate(renewal):
                    return renewal
                await trio.sleep(0.05)

    def pushes_to(self, device: DeviceSim) -> int:
        return self.apns.tokens().count(device.push_token.hex())


async def _site(nursery, tmp_path, pki, **overrides) -> Site:
    apns = StandIn.create(pki["server"].cert_pem, pki["server"].key_pem, pki["push_ca"].cert_pem)
    await nursery.start(apns.serve)
    clock = OffsetClock()
    port = free_port()
    enrollment = {"certificate_validity_days": 1, **overrides.pop("enrollment", {})}
    mdm = await start_mdm_server(
        nursery, tmp_path, clock=clock,
        server={"listen": f"127.0.0.1:{port}", "public_url": f"https://127.0.0.1:{port}"},
        apns={"url": apns.url, "ca_file": str(pki["ca_file"])},
        enrollment=enrollment, renewal={"retry_initial": "1h", "retry_max": "4h"}, **overrides)
    push = make_push_cert(pki["push_ca"])
    await import_cert(mdm.server, push)
    topic = push.cert.subject.get_attributes_for_oid(x509.NameOID.USER_ID)[0].value
    return Site(mdm, clock, apns, topic)


@pytest.fixture
async def site(nursery, tmp_path, pki):
    return await _site(nursery, tmp_path, pki)


async def _install_profile_command(site: Site, device: DeviceSim, renewal: dict) -> dict:
    """The device, pushed, comes and gets the InstallProfile the renewal queued."""
    reply = await device.idle()
    assert reply.command_uuid == renewal["command_uuid"], reply.text
    assert reply.command["Command"]["RequestType"] == "InstallProfile"
    return reply.command


async def _stored_payload(site: Site, command_uuid: str) -> bytes:
    (row,) = await site.mdm.rows("SELECT body FROM commands WHERE uuid = ?", command_uuid)
    return plistlib.loads(row["body"])["Command"]["Payload"]


# --- the renewal ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("device_behaviour", ["authenticate_again", "just_use_it"])
async def test_a_device_renews_its_identity_over_mdm_and_keeps_queue_token_and_history(site, device_behaviour):
    device = await site.enrolled("UDID-R")
    old_cert, old_key = device.cert, device.key
    assert (await device.set_bootstrap_token(b"R-bootstrap")).status == 200
    await site.mdm.enqueue("R-DONE", ["UDID-R"])
    assert (await device.idle()).command_uuid == "R-DONE"
    assert (await device.acknowledge("R-DONE")).command is None

    before = await site.identity("UDID-R")
    assert before["sha256"] == _sha256(old_cert) and before["issued_by_appliance"] is True
    assert before["renewal"]["state"] == "scheduled"
    # A one-day identity renews half way through its life, not 30 days before it ends.
    lifetime = from_text(before["not_after"]) - from_text(before["not_before"])
    assert from_text(before["renewal"]["renews_at"]) == from_text(before["not_before"]) + lifetime / 2

    site.clock.advance(HALF_A_DAY)
    renewal = await site.renewal_becomes("UDID-R", lambda r: r["state"] == "pending")
    assert renewal["attempts"] == 1
    with trio.fail_after(10):  # and the device is pushed to come for it
        while site.pushes_to(device) < 1:
            await trio.sleep(0.05)
    await site.mdm.enqueue("R-WAITING", ["UDID-R"])  # queued behind the renewal, still waiting after it

    command = await _install_profile_command(site, device, renewal)
    assert (await site.identity("UDID-R"))["renewal"]["state"] == "sent"
    # The enrollment profile again: same identifiers, URLs and Topic, and a fresh one-time challenge.
    new_cert, new_key, profile = await device.install_enrollment_profile(command["Command"]["Payload"])
    payloads = {p["PayloadType"]: p for p in profile["PayloadContent"]}
    mdm_payload = payloads["com.apple.mdm"]
    assert profile["PayloadIdentifier"] == site.server.config.enrollment.profile_identifier
    assert mdm_payload["PayloadIdentifier"] == f"{profile['PayloadIdentifier']}.mdm"
    assert mdm_payload["ServerURL"] == site.server.config.server.public_url + "/mdm/connect"
    assert mdm_payload["CheckInURL"] == site.server.config.server.public_url + "/mdm/checkin"
    assert mdm_payload["Topic"] == site.topic
    assert payloads["com.apple.security.scep"]["PayloadContent"]["Challenge"] != "test-challenge"
    assert new_cert.issuer == old_cert.issuer and _sha256(new_cert) != _sha256(old_cert)

    if device_behaviour == "authenticate_again":
        await device.enroll()  # Authenticate + TokenUpdate with the new identity: not a re-enrollment
        assert (await device.idle()).command_uuid == "R-WAITING"
        assert (await device.acknowledge("R-WAITING")).command is None
        assert (await device.acknowledge(command["CommandUUID"])).status == 200  # its late answer counts
    else:
        reply = await device.acknowledge(command["CommandUUID"])  # the first request with the new identity
        assert reply.command_uuid == "R-WAITING"
        assert (await device.acknowledge("R-WAITING")).command is None

    assert await _stored_payload(site, command["CommandUUID"]) == b""  # the challenge is not kept
    after = await site.identity("UDID-R")
    assert after["sha256"] == _sha256(new_cert)
    assert after["renewal"]["state"] == "done" and after["renewal"]["completed_at"] is not None
    assert from_text(after["not_after"]) > from_text(before["not_after"])
    assert (await device.get_bootstrap_token()).plist == {"BootstrapToken": b"R-bootstrap"}
    answered = ["R-WAITING", command["CommandUUID"]] if device_behaviour == "authenticate_again" \
        else [command["CommandUUID"], "R-WAITING"]
    results = await site.mdm.rows("SELECT command_uuid, status FROM results ORDER BY received_at")
    assert [(r["command_uuid"], r["status"]) for r in results] == [
        (uuid, "Acknowledged") for uuid in ["R-DONE", *answered]]
    # The old identity is refused from now on, even to Authenticate.
    async with DeviceSim(site.server.base_url, site.server.ssl_context(), old_cert, old_key, "UDID-R",
                         topic=site.topic) as old:
        assert (await old.idle()).status == 403
        assert (await old.authenticate()).status == 403
    async with site.server.api_client() as api:
        (listed,) = (await api.get("/v1/devices")).json()["devices"]
    assert (listed["identity_renewal"], listed["identity_not_after"]) == ("done", after["not_after"])
    await device.aclose()


async def test_a_renewal_profile_with_a_pkcs12_identity_is_signed_and_keeps_the_queue(nursery, tmp_path, pki):
    site = await _site(nursery, tmp_path, pki, enrollment={"identity": "pkcs12", "sign_profile": True})
    ca_file = site.server.config.data_dir / "ca.crt"
    # The first identity comes the way such a device gets it: the signed enrollment profile's PKCS#12.
    device = DeviceSim(site.server.base_url, site.server.ssl_context(), None, None, "UDID-P", topic=site.topic)
    async with site.server.client() as http:
        enroll = await http.get("/mdm/enroll", params={"token": "test-enroll-secret"})
    first_cert, _, _ = await device.install_enrollment_profile(enroll.content, ca_file)
    await device.enroll()

    site.clock.advance(HALF_A_DAY)
    renewal = await site.renewal_becomes("UDID-P", lambda r: r["state"] == "pending")
    await site.mdm.enqueue("P-WAITING", ["UDID-P"])
    command = await _install_profile_command(site, device, renewal)
    assert command["Command"]["Payload"][:1] == b"\x30"  # CMS, verified against the appliance CA below
    new_cert, _, profile = await device.install_enrollment_profile(command["Command"]["Payload"], ca_file)
    assert "com.apple.security.pkcs12" in {p["PayloadType"] for p in profile["PayloadContent"]}
    assert _sha256(new_cert) != _sha256(first_cert)
    assert (await device.idle()).command_uuid == "P-WAITING"  # just using it: the binding moves, queue kept
    assert (await site.identity("UDID-P"))["renewal"]["state"] == "done"
    await device.aclose()


# --- retries ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("answer", ["NotNow", "Error", "silence"])
async def test_a_renewal_the_device_does_not_complete_is_tried_again_later(site, answer):
    device = await site.enrolled("UDID-N")
    site.clock.advance(HALF_A_DAY)
    first = await site.renewal_becomes("UDID-N", lambda r: r["state"] == "pending")
    old_profile = None
    if answer != "silence":
        command = await _install_profile_command(site, device, first)
        old_profile = command["Command"]["Payload"]
        if answer == "NotNow":
            assert (await device.not_now(first["command_uuid"])).status == 200
            renewal = (await site.identity("UDID-N"))["renewal"]
            assert renewal["state"] == "pending" and "NotNow" in renewal["reason"]
        else:
            assert (await device.error(first["command_uuid"])).status == 200
            renewal = (await site.identity("UDID-N"))["renewal"]
            assert renewal["state"] == "failed" and "Simulated failure" in renewal["reason"]
    pushes = site.pushes_to(device)

    site.clock.advance(RETRY)
    second = await site.renewal_becomes("UDID-N", lambda r: r["attempts"] == 2)
    assert second["state"] == "pending" and second["command_uuid"] != first["command_uuid"]
    why = {"NotNow": "NotNow", "Error": "answered Error", "silence": "has not fetched"}[answer]
    assert why in second["last_failure"] and why in second["reason"]
    with trio.fail_after(10):
        while site.pushes_to(device) <= pushes:
            await trio.sleep(0.05)
    # The first attempt is over: its command is not offered again, and its challenge issues nothing.
    pending = await site.mdm.rows("SELECT command_uuid FROM queue WHERE cancelled_at IS NULL")
    assert [row["command_uuid"] for row in pending] == [second["command_uuid"]]
    assert await _stored_payload(site, first["command_uuid"]) == b""  # its profile is not kept either
    if old_profile is not None:
        async with DeviceSim(site.server.base_url, site.server.ssl_context(), device.cert, device.key,
                             "UDID-N") as late:
            with pytest.raises(ScepRefused):
                await late.install_enrollment_profile(old_profile)

    command = await _install_profile_command(site, device, second)
    await device.install_enrollment_profile(command["Command"]["Payload"])
    assert (await device.acknowledge(command["CommandUUID"])).status == 200
    assert (await site.identity("UDID-N"))["renewal"]["state"] == "done"
    await device.aclose()


async def test_an_identity_that_expires_before_it_is_renewed_is_given_up(site):
    device = await site.enrolled("UDID-GONE")
    site.clock.advance(timedelta(days=2))  # offline the whole time: the identity ended unrenewed
    renewal = await site.renewal_becomes("UDID-GONE", lambda r: r["state"] == "failed")
    assert "expired" in renewal["reason"] and renewal["next_attempt_at"] is None
    assert (await device.idle()).status == 403  # it cannot speak to the appliance any more
    assert await site.mdm.rows("SELECT command_uuid FROM queue") == []
    await device.aclose()


# --- what is not renewed, and what operators see ---------------------------------------------------------

async def test_an_identity_from_another_ca_is_reported_with_its_expiry_and_not_renewed(site):
    cert, key = site.mdm.ca.issue("UDID-FOREIGN", days=20)
    async with DeviceSim(site.server.base_url, site.server.ssl_context(), cert, key, "UDID-FOREIGN",
                         topic=site.topic) as device:
        await device.enroll()
        identity = await site.identity("UDID-FOREIGN")
        assert identity["issued_by_appliance"] is False
        assert identity["issuer"] == site.mdm.ca.cert.subject.rfc4514_string()
        assert identity["not_after"] is not None and identity["renewal"]["state"] == "not_renewable"
        async with site.server.api_client() as api:
            health = (await api.get("/healthz")).json()
        assert health["checks"]["identities"]["status"] == "ok"

        site.clock.advance(timedelta(days=7))  # 13 days left: inside any renewal window, and the warning's
        async with site.server.api_client() as api:
            with trio.fail_after(15):
                while (health := (await api.get("/healthz")).json())["checks"]["identities"]["status"] == "ok":
                    await trio.sleep(0.05)
        checks = health["checks"]["identities"]
        assert health["status"] == "warning" and checks["expiring_within_14_days"] == 1
        assert checks["expiring"] == [{"device_id": "UDID-FOREIGN", "not_after": identity["not_after"]}]
        # Nothing was queued for it, however long the renewal worker has had.
        await site.server.runtime.renewals.check()
        assert (await device.idle()).command is None
        assert (await site.identity("UDID-FOREIGN"))["renewal"]["state"] == "not_renewable"
        text = await scrape(site.server)
        assert metric_lines(text, "mdm_identity_renewals")['{state="not_renewable"}'] == 1
        assert metric_lines(text, "mdm_identity_certificates_expiring")[""] == 1


async def test_renewal_state_shows_in_metrics_and_the_cli(site):
    device = await site.enrolled("UDID-M")
    site.clock.advance(HALF_A_DAY)
    await site.renewal_becomes("UDID-M", lambda r: r["state"] == "pending")
    text = await scrape(site.server)
    assert metric_lines(text, "mdm_identity_renewals")['{state="pending"}'] == 1
    assert metric_lines(text, "mdm_identity_renewal_attempts_total")['{outcome="queued"}'] == 1
    from tests.server.test_push_server import cli  # the real CLI in its own process

    code, out, err = await cli(site.server.config_path, "device", "UDID-M")
    assert code == 0, err
    (line,) = [line for line in out.splitlines() if line.startswith("renewal:")]
    assert "pending (attempt 1, next at " in line and "has not fetched the InstallProfile" in line
    await device.aclose()
