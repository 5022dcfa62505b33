"""The SCEP CA over real TLS, driven by the independent client in tests/support/scep_client.py."""

from __future__ import annotations

import base64
import datetime as dt
import os

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from appliance.store import scep as scep_store
from tests.support import scep_client as client
from tests.support.harness import make_config, start_server

PKI = "/scep?operation=PKIOperation"


async def _ca_cert(http) -> x509.Certificate:
    response = await http.get("/scep", params={"operation": "GetCACert"})
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/x-x509-ca-cert"
    return x509.load_der_x509_certificate(response.content)


async def _post(http, request: client.Request):
    response = await http.post(PKI, content=request.der,
                               headers={"Content-Type": "application/x-pki-message"})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/x-pki-message"
    return response.content


async def test_getcacaps_lists_only_what_is_implemented(server):
    async with server.client() as http:
        response = await http.get("/scep", params={"operation": "GetCACaps"})
    assert response.status_code == 200
    caps = response.text.split("\n")
    for cap in ("POSTPKIOperation", "SHA-256", "SHA-1", "AES", "DES3", "SCEPStandard", "Renewal"):
        assert cap in caps
    assert "GetNextCACert" not in caps


async def test_getcacert_is_the_appliance_ca(server):
    async with server.client() as http:
        ca = await _ca_cert(http)
    assert ca == server.runtime.ca.certificate


@pytest.mark.parametrize("cipher,digest", [
    ("aes128", "sha256"), ("aes256", "sha1"), ("des3", "sha1"), ("des", "sha256"), ("aes128", "sha1"),
])
async def test_pkcsreq_issues_a_client_identity(server, cipher, digest):
    requester = client.Requester(common_name=f"dev-{cipher}-{digest}", challenge="test-challenge")
    async with server.client() as http:
        ca = await _ca_cert(http)
        request = client.pkcs_req(requester, ca, cipher=cipher, digest=digest)
        answer = client.read_cert_rep(await _post(http, request), ca, request)
    assert answer.status == 0, answer.fail_info
    assert answer.recipient_nonce == request.sender_nonce
    assert answer.transaction_id == request.transaction_id
    (cert,) = answer.certificates
    cert.verify_directly_issued_by(ca)
    assert cert.subject == requester.csr.subject
    assert cert.public_key() == requester.key.public_key()
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.CLIENT_AUTH in eku
    lifetime = cert.not_valid_after_utc - dt.datetime.now(dt.timezone.utc)
    assert dt.timedelta(days=364) < lifetime <= dt.timedelta(days=366)
    recorded = await server.runtime.store.read(scep_store.by_transaction, request.transaction_id)
    assert recorded.serial == format(cert.serial_number, "x")
    assert recorded.subject == cert.subject.rfc4514_string()
    metrics = server.runtime.metrics.render().decode()
    assert 'mdm_scep_certificates_issued_total{message_type="PKCS_REQ"} 1.0' in metrics


async def test_wrong_or_missing_challenge_is_failure_bad_request(server):
    async with server.client() as http:
        ca = await _ca_cert(http)
        for challenge in ("wrong", None):
            request = client.pkcs_req(client.Requester(challenge=challenge), ca)
            answer = client.read_cert_rep(await _post(http, request), ca, request)
            assert (answer.status, answer.fail_info) == (2, 2)
            assert answer.recipient_nonce == request.sender_nonce
            assert await server.runtime.store.read(scep_store.by_transaction, request.transaction_id) is None
    assert await server.runtime.store.read(scep_store.count_issued) == 0


async def test_one_time_challenge_works_once(server):
    async with server.client() as http, server.api_client() as api:
        unauthorized = await http.post("/v1/challenges")
        assert unauthorized.status_code == 401
        minted = await api.post("/v1/challenges")
        assert minted.status_code == 201
        body = minted.json()
        expires = dt.datetime.fromisoformat(body["expires_at"].replace("Z", "+00:00"))
        assert dt.timedelta(minutes=59) < expires - dt.datetime.now(dt.timezone.utc) <= dt.timedelta(hours=1)
        ca = await _ca_cert(http)
        first = client.pkcs_req(client.Requester(challenge=body["challenge"]), ca)
        assert client.read_cert_rep(await _post(http, first), ca, first).status == 0
        second = client.pkcs_req(client.Requester(challenge=body["challenge"]), ca)
        answer = client.read_cert_rep(await _post(http, second), ca, second)
    assert (answer.status, answer.fail_info) == (2, 2)


async def test_expired_one_time_challenge_is_refused(tmp_path, nursery):
    server = await start_server(nursery, make_config(tmp_path, enrollment={"challenge_ttl": "1s"}))
    try:
        async with server.client() as http, server.api_client() as api:
            challenge = (await api.post("/v1/challenges")).json()["challenge"]
            ca = await _ca_cert(http)
            import trio

            await trio.sleep(1.2)
            request = client.pkcs_req(client.Requester(challenge=challenge), ca)
            answer = client.read_cert_rep(await _post(http, request), ca, request)
        assert (answer.status, answer.fail_info) == (2, 2)
    finally:
        server.stop()


async def test_replayed_transaction_gets_the_same_certificate(server):
    requester = client.Requester(challenge="test-challenge")
    async with server.client() as http:
        ca = await _ca_cert(http)
        request = client.pkcs_req(requester, ca)
        first = client.read_cert_rep(await _post(http, request), ca, request)
        # A resend: same CSR, same transaction, new envelope and nonce.
        again = client.pkcs_req(requester, ca, transaction_id=request.transaction_id, cipher="des3")
        second = client.read_cert_rep(await _post(http, again), ca, again)
        other = client.pkcs_req(client.Requester(challenge="test-challenge"), ca,
                                transaction_id=request.transaction_id)
        hijack = client.read_cert_rep(await _post(http, other), ca, other)
    assert first.status == second.status == 0
    assert first.certificates == second.certificates
    assert second.recipient_nonce == again.sender_nonce
    assert (hijack.status, hijack.fail_info) == (2, 2)
    assert await server.runtime.store.read(scep_store.count_issued) == 1


async def test_large_request_by_get_with_the_message_in_the_query(server):
    requester = client.Requester(challenge="test-challenge", extra_csr_bytes=9000)
    async with server.client() as http:
        ca = await _ca_cert(http)
        request = client.pkcs_req(requester, ca)
        query = request.get_query()
        assert len(query) > 8 * 1024
        response = await http.get("/scep?" + query)
        assert response.status_code == 200, response.text
        answer = client.read_cert_rep(response.content, ca, request)
        # '+' left unencoded (it arrives as a space) and the URL-safe alphabet also work.
        raw = base64.b64encode(client.pkcs_req(requester, ca).der).decode()
        loose = await http.get("/scep?operation=PKIOperation&message=" + raw.replace("/", "%2F").replace("=", "%3D"))
        urlsafe = await http.get("/scep", params={"operation": "PKIOperation",
                                                  "message": base64.urlsafe_b64encode(request.der).decode()})
    assert answer.status == 0
    assert loose.status_code == 200 and client.read_cert_rep(loose.content, ca, request).transaction_id
    assert urlsafe.status_code == 200


async def test_post_with_the_message_repeated_in_the_query(server):
    async with server.client() as http:
        ca = await _ca_cert(http)
        request = client.pkcs_req(client.Requester(challenge="test-challenge"), ca)
        response = await http.post("/scep?" + request.get_query(), content=request.der)
    assert response.status_code == 200
    assert client.read_cert_rep(response.content, ca, request).status == 0


async def test_renewal_signed_by_our_certificate_needs_no_challenge(server):
    requester = client.Requester(challenge="test-challenge")
    async with server.client() as http:
        ca = await _ca_cert(http)
        first = client.pkcs_req(requester, ca)
        (issued,) = client.read_cert_rep(await _post(http, first), ca, first).certificates
        renewer = client.Requester(challenge=None)
        renewal = client.pkcs_req(renewer, ca, message_type=17, signer=(issued, requester.key))
        renewed = client.read_cert_rep(await _post(http, renewal), ca, renewal)
        stranger = client.pkcs_req(client.Requester(challenge=None), ca, message_type=17)
        refused = client.read_cert_rep(await _post(http, stranger), ca, stranger)
        other_name = client.Requester(common_name="someone-else", challenge=None)
        sideways = client.pkcs_req(other_name, ca, message_type=17, signer=(issued, requester.key))
        renamed = client.read_cert_rep(await _post(http, sideways), ca, sideways)
    assert renewed.status == 0
    assert renewed.certificates[0].public_key() == renewer.key.public_key()
    assert renewed.certificates[0].subject == issued.subject
    assert (refused.status, refused.fail_info) == (2, 2)
    assert (renamed.status, renamed.fail_info) == (2, 2)


async def test_certpoll_returns_the_issued_certificate(server):
    requester = client.Requester(challenge="test-challenge")
    async with server.client() as http:
        ca = await _ca_cert(http)
        request = client.pkcs_req(requester, ca)
        issued = client.read_cert_rep(await _post(http, request), ca, request).certificates
        poll = client.pkcs_req(requester, ca, message_type=20, transaction_id=request.transaction_id)
        polled = client.read_cert_rep(await _post(http, poll), ca, poll)
        unknown = client.pkcs_req(requester, ca, message_type=20)
        missing = client.read_cert_rep(await _post(http, unknown), ca, unknown)
    assert polled.status == 0 and polled.certificates == issued
    assert (missing.status, missing.fail_info) == (2, 4)


async def test_bad_signature_is_failure_bad_message_check(server):
    async with server.client() as http:
        ca = await _ca_cert(http)
        request = client.pkcs_req(client.Requester(challenge="test-challenge"), ca, tamper=True)
        answer = client.read_cert_rep(await _post(http, request), ca, request)
    assert (answer.status, answer.fail_info) == (2, 1)


async def test_certificate_validity_is_configurable(tmp_path, nursery):
    server = await start_server(nursery, make_config(tmp_path, enrollment={"certificate_validity_days": 30}))
    try:
        async with server.client() as http:
            ca = await _ca_cert(http)
            request = client.pkcs_req(client.Requester(challenge="test-challenge"), ca)
            (cert,) = client.read_cert_rep(await _post(http, request), ca, request).certificates
        lifetime = cert.not_valid_after_utc - dt.datetime.now(dt.timezone.utc)
        assert dt.timedelta(days=29) < lifetime <= dt.timedelta(days=30)
    finally:
        server.stop()


@pytest.mark.parametrize("method,url,body", [
    ("POST", PKI, b""),
    ("POST", PKI, os.urandom(3000)),
    ("POST", PKI, b"\x30\x82\x10\x00" + b"\x00" * 50),
    ("GET", PKI + "&message=%%%%", None),
    ("GET", PKI + "&message=not*base64", None),
    ("GET", PKI, None),
    ("GET", "/scep", None),
    ("GET", "/scep?operation=Bogus", None),
    ("PUT", "/scep?operation=GetCACaps", b""),
])
async def test_garbage_is_a_4xx_never_a_5xx(server, method, url, body):
    async with server.client() as http:
        response = await http.request(method, url, content=body)
    assert 400 <= response.status_code < 500, response.text


async def test_concurrent_requests_on_one_one_time_challenge(server):
    """Two devices racing with one challenge: one certificate. A resend racing its original (same
    transaction, same CSR): both get that certificate."""
    import trio

    async with server.client() as http, server.api_client() as api:
        ca = await _ca_cert(http)
        challenge = (await api.post("/v1/challenges")).json()["challenge"]
        rivals = [client.pkcs_req(client.Requester(challenge=challenge), ca) for _ in range(2)]
        original = client.Requester(challenge=(await api.post("/v1/challenges")).json()["challenge"])
        first = client.pkcs_req(original, ca)
        resend = client.pkcs_req(original, ca, transaction_id=first.transaction_id)
        answers: dict[int, client.CertRep] = {}

        async def send(index: int, request: client.Request) -> None:
            answers[index] = client.read_cert_rep(await _post(http, request), ca, request)

        async with trio.open_nursery() as nursery:
            for index, request in enumerate([*rivals, first, resend]):
                nursery.start_soon(send, index, request)
    assert sorted(answers[i].status for i in (0, 1)) == [0, 2]
    assert answers[2].status == answers[3].status == 0
    assert answers[2].certificates == answers[3].certificates


async def _challenge_statuses(http, ca, challenges, headers=None) -> list[tuple[int, int | None]]:
    answers = []
    for challenge in challenges:
        request = client.pkcs_req(client.Requester(challenge=challenge), ca)
        response = await http.post(PKI, content=request.der, headers=headers or {})
        answer = client.read_cert_rep(response.content, ca, request)
        answers.append((answer.status, answer.fail_info))
    return answers


async def test_guessing_challenges_gets_the_address_refused(tmp_path, nursery, caplog):
    config = make_config(tmp_path, enrollment={"challenge_guess_limit": 3})
    server = await start_server(nursery, config)
    try:
        async with server.client() as http:
            ca = await _ca_cert(http)
            # A forged X-Forwarded-For from a peer that is no trusted proxy changes nothing.
            answers = await _challenge_statuses(http, ca, ["guess-1", "guess-2", "guess-3", "test-challenge"],
                                                headers={"X-Forwarded-For": "198.51.100.7"})
        # The right challenge is refused too, like a wrong one: the answer never confirms a hit.
        assert answers == [(2, 2)] * 4
        assert await server.runtime.store.read(scep_store.count_issued) == 0
        limited = [r for r in caplog.records if r.getMessage() == "scep_challenge_guessing_limited"]
        assert len(limited) == 1 and limited[0].fields["client"] == "127.0.0.1"
    finally:
        server.stop()


async def test_behind_a_trusted_proxy_the_forwarded_address_is_limited(tmp_path, nursery):
    config = make_config(tmp_path, enrollment={"challenge_guess_limit": 2},
                         identity={"trusted_proxies": ["127.0.0.1"]})
    server = await start_server(nursery, config)
    try:
        async with server.client() as http:
            ca = await _ca_cert(http)
            guesser = {"X-Forwarded-For": "203.0.113.9, 198.51.100.7"}  # the proxy appended the last
            guessed = await _challenge_statuses(http, ca, ["guess-1", "guess-2", "test-challenge"], guesser)
            # Another client behind the same proxy still enrolls, though it claims the guesser's
            # address first: only the proxy's entry counts.
            other = await _challenge_statuses(http, ca, ["test-challenge"],
                                              {"X-Forwarded-For": "198.51.100.7, 192.0.2.44"})
        assert guessed == [(2, 2)] * 3
        assert other == [(0, None)]
    finally:
        server.stop()


async def test_a_spent_one_time_challenge_still_admits_a_resend_of_its_own_transaction(server):
    """A resend that passed the replay check just before its original was recorded must reach the
    replay answer, not be refused for the challenge its own original spent (a race seen under load)."""
    async with server.client() as http, server.api_client() as api:
        ca = await _ca_cert(http)
        challenge = (await api.post("/v1/challenges")).json()["challenge"]
        request = client.pkcs_req(client.Requester(challenge=challenge), ca)
        assert client.read_cert_rep(await _post(http, request), ca, request).status == 0
    read, now = server.runtime.store.read, dt.datetime.now(dt.timezone.utc)
    assert await read(scep_store.challenge_usable, challenge, now, request.transaction_id)
    assert not await read(scep_store.challenge_usable, challenge, now, "another-transaction")
