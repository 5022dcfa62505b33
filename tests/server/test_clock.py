"""The server keeps the time it is handed (appliance.clock): the store thread's timestamps, the CA's
certificate dates, challenge expiry and the device trust check all follow a clock the test advances."""

from __future__ import annotations

from datetime import timedelta

from cryptography import x509

from appliance.clock import OffsetClock
from appliance.store.timefmt import from_text
from tests.support import scep_client
from tests.support.device_sim import DeviceSim
from tests.support.mdm_support import start_mdm_server

AHEAD = timedelta(days=400)


def _near(moment, expected, slack=timedelta(minutes=5)) -> bool:
    return abs(moment - expected) < slack


async def test_the_server_keeps_the_time_of_the_clock_it_was_handed(nursery, tmp_path):
    clock = OffsetClock()
    mdm = await start_mdm_server(nursery, tmp_path, clock=clock)
    clock.advance(AHEAD)

    # Trust follows the clock: an identity valid for a year from the real today has expired by now.
    short_cert, short_key = mdm.ca.issue("UDID-SHORT", days=365)
    async with DeviceSim(mdm.server.base_url, mdm.server.ssl_context(), short_cert, short_key, "UDID-SHORT") as d:
        reply = await d.authenticate()
        assert (reply.status, reply.text.strip()) == (403, "certificate has expired")

    # Timestamps written on the store thread follow it.
    long_cert, long_key = mdm.ca.issue("UDID-CLOCK", days=3650)
    async with DeviceSim(mdm.server.base_url, mdm.server.ssl_context(), long_cert, long_key, "UDID-CLOCK") as d:
        await d.enroll()
    async with mdm.server.api_client() as api:
        device = (await api.get("/v1/devices/UDID-CLOCK")).json()
        assert _near(from_text(device["authenticated_at"]), clock.now())
        assert _near(from_text(device["enrolled_at"]), clock.now())
        # Challenge expiry follows it.
        minted = (await api.post("/v1/challenges")).json()
        assert _near(from_text(minted["expires_at"]), clock.now() + timedelta(hours=1))

    # The CA issues on it: a SCEP certificate's validity starts at the clock's now (less the backdating).
    async with mdm.server.client() as http:
        ca = x509.load_der_x509_certificate((await http.get("/scep", params={"operation": "GetCACert"})).content)
        requester = scep_client.Requester(common_name="UDID-SCEP", challenge=minted["challenge"])
        request = scep_client.pkcs_req(requester, ca)
        answer = await http.post("/scep?operation=PKIOperation", content=request.der,
                                 headers={"Content-Type": "application/x-pki-message"})
    (issued,) = scep_client.read_cert_rep(answer.content, ca, request).certificates
    assert _near(issued.not_valid_before_utc, clock.now() - timedelta(hours=1))
    assert _near(issued.not_valid_after_utc, clock.now() + timedelta(days=365))
