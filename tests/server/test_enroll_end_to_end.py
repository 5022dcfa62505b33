"""End to end: a simulated device installs the served profile, gets its identity through SCEP with
the profile's challenge, checks in with that identity and receives a command."""

from __future__ import annotations

import hashlib
import plistlib
import uuid
from urllib.parse import urlsplit

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID

from tests.support import scep_client as client
from tests.support.device_sim import DeviceSim
from tests.server.test_enroll_server import by_type, download, enrollment_server


@pytest.mark.parametrize("one_time", [False, True])
async def test_device_enrolls_through_scep_and_receives_a_command(tmp_path, nursery, one_time):
    enrollment = {"one_time_challenge": True, "scep_challenge": None} if one_time else {}
    server, topic = await enrollment_server(nursery, tmp_path, **enrollment)
    udid = str(uuid.uuid4()).upper()
    try:
        async with server.client() as http:
            payloads = by_type(plistlib.loads(await download(http)))
            scep, mdm = payloads["com.apple.security.scep"]["PayloadContent"], payloads["com.apple.mdm"]

            # What the device's SCEP client does with the payload: GetCACert, then PKCSReq.
            scep_path = urlsplit(scep["URL"]).path
            ca_der = (await http.get(scep_path, params={"operation": "GetCACert"})).content
            ca = x509.load_der_x509_certificate(ca_der)
            assert payloads["com.apple.security.root"]["PayloadContent"] == ca_der
            # A device refuses a CA whose fingerprint differs from the payload's CAFingerprint.
            assert scep["CAFingerprint"] == hashlib.sha1(ca_der).digest()
            common_name = dict((k, v) for [[k, v]] in scep["Subject"])["CN"]
            requester = client.Requester(common_name=common_name, challenge=scep["Challenge"])
            request = client.pkcs_req(requester, ca, cipher="aes256", digest="sha256")
            response = await http.post(scep_path + "?operation=PKIOperation", content=request.der)
            answer = client.read_cert_rep(response.content, ca, request)
            assert answer.status == 0, answer.fail_info
            (identity,) = answer.certificates
            assert identity.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == common_name

        async with DeviceSim(server.base_url, server.ssl_context(), identity, requester.key, udid,
                             topic=mdm["Topic"], checkin_path=urlsplit(mdm["CheckInURL"]).path,
                             connect_path=urlsplit(mdm["ServerURL"]).path) as device:
            await device.enroll()
            command_uuid = str(uuid.uuid4())
            command = {"CommandUUID": command_uuid,
                       "Command": {"RequestType": "DeviceInformation", "Queries": ["SerialNumber"]}}
            async with server.api_client() as api:
                queued = await api.put(f"/v1/enqueue/{udid}", params={"nopush": "1"},
                                       content=plistlib.dumps(command))
            assert queued.status_code == 200, queued.text
            reply = await device.idle()
            assert reply.status == 200
            assert reply.command_uuid == command_uuid
            assert reply.command["Command"]["RequestType"] == "DeviceInformation"
            done = await device.acknowledge(command_uuid, QueryResponses={"SerialNumber": device.serial_number})
            assert done.status == 200 and done.command is None
    finally:
        server.stop()


async def test_identity_from_another_ca_cannot_check_in(tmp_path, nursery):
    """The converse: a self-made certificate (the SCEP request's own) is not an MDM identity."""
    server, topic = await enrollment_server(nursery, tmp_path)
    requester = client.Requester(challenge="test-challenge")
    try:
        async with DeviceSim(server.base_url, server.ssl_context(), requester.self_signed, requester.key,
                             "UNTRUSTED-UDID", topic=topic) as device:
            reply = await device.authenticate()
        assert reply.status in (400, 403)
    finally:
        server.stop()
