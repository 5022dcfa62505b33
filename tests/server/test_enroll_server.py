"""GET /mdm/enroll, the enroll-profile and challenge commands, against the real server."""

from __future__ import annotations

import hashlib
import json
import plistlib
import subprocess

import trio
from click.testing import CliRunner
from cryptography import x509
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import ExtendedKeyUsageOID

from appliance.cli import main as cli
from appliance.store import push as push_store
from appliance.store import scep as scep_store
from appliance.store.timefmt import now as utc_now
from tests.support import apns_certs
from tests.support import scep_client as client
from tests.support.harness import free_port, make_config, start_server

SECRET = "test-enroll-secret"


async def import_push_certificate(server, force: bool = False) -> str:
    """Set up another area's state the way its import does: a push certificate with a topic
    (`force`: the operator's `push-cert import --force`, which may change the topic)."""
    push = apns_certs.make_push_cert(apns_certs.make_ca())
    pem = push.cert_pem
    await server.runtime.store.write(
        lambda conn: push_store.store_certificate(
            conn, topic=push.cert.subject.get_attributes_for_oid(x509.NameOID.USER_ID)[0].value,
            certificate_pem=pem, key_pem=push.key_pem, sha256=hashlib.sha256(pem).hexdigest(),
            not_before=push.cert.not_valid_before_utc, not_after=push.cert.not_valid_after_utc,
            force=force))
    return await server.runtime.store.read(push_store.current_topic)


async def enrollment_server(nursery, tmp_path, **enrollment):
    """A server whose public_url is where it really listens, so the profile's URLs can be called."""
    port = free_port()
    config = make_config(tmp_path, port=port, server={"public_url": f"https://127.0.0.1:{port}"},
                         apns={"url": "https://127.0.0.1:9"}, enrollment=enrollment)
    server = await start_server(nursery, config)
    topic = await import_push_certificate(server)
    return server, topic


async def download(http) -> bytes:
    response = await http.get("/mdm/enroll", params={"token": SECRET})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/x-apple-aspen-config"
    return response.content


def by_type(profile: dict) -> dict[str, dict]:
    return {payload["PayloadType"]: payload for payload in profile["PayloadContent"]}


def _run_cli(*args: str, env: dict | None = None):
    # The CLI's API client blocks: run it off the event loop that serves the request.
    return trio.to_thread.run_sync(
        lambda: CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False))


async def test_profile_needs_the_secret(server):
    async with server.client() as http:
        missing = await http.get("/mdm/enroll")
        wrong = await http.get("/mdm/enroll", params={"token": "nope"})
        basic_wrong = await http.get("/mdm/enroll", auth=("x", "nope"))
    for response in (missing, wrong, basic_wrong):
        assert response.status_code == 401
        assert response.headers["www-authenticate"].startswith("Basic")
        assert b"PayloadContent" not in response.content


async def test_profile_is_never_served_without_a_configured_secret(tmp_path, nursery):
    server = await start_server(nursery, make_config(tmp_path, enrollment={"secret": None}))
    try:
        async with server.client() as http:
            response = await http.get("/mdm/enroll", params={"token": ""})
        assert response.status_code == 403
        assert "secret" in response.text
    finally:
        server.stop()


async def test_no_push_certificate_no_profile(server):
    async with server.client() as http:
        by_token = await http.get("/mdm/enroll", params={"token": "test-enroll-secret"})
        by_basic = await http.get("/mdm/enroll", auth=("anyone", "test-enroll-secret"))
    for response in (by_token, by_basic):
        assert response.status_code == 409
        assert "mdm-appliance push-cert import" in response.text
    result = await _run_cli("enroll-profile", "--config", str(server.config_path), "--out", "-")
    assert result.exit_code == 1
    assert "push-cert import" in result.output and len(result.output.strip().splitlines()) == 1


async def test_challenge_command_mints_through_the_api(server):
    result = await _run_cli("challenge", "--config", str(server.config_path), "--json",
                            env={"MDM_APPLIANCE_URL": server.base_url})
    assert result.exit_code == 0, result.output
    answer = json.loads(result.output.strip().splitlines()[0])
    assert len(answer["challenge"]) >= 24 and answer["ttl_seconds"] == 3600
    spent = await server.runtime.store.write(scep_store.spend_challenge, answer["challenge"], utc_now(), "T")
    assert spent


async def test_served_profile_has_every_key_and_its_urls_answer(tmp_path, nursery):
    server, topic = await enrollment_server(nursery, tmp_path)
    try:
        base = server.base_url
        async with server.client() as http:
            profile = plistlib.loads(await download(http))
            assert profile["PayloadType"] == "Configuration" and profile["PayloadVersion"] == 1
            assert profile["PayloadIdentifier"] == "org.mdm-appliance.enroll"
            assert profile["PayloadOrganization"] == "mdm-appliance"
            assert profile["PayloadUUID"] and profile["PayloadDisplayName"]
            payloads = by_type(profile)
            root = payloads["com.apple.security.root"]
            assert root["PayloadContent"] == server.runtime.ca.certificate_der
            scep = payloads["com.apple.security.scep"]["PayloadContent"]
            assert scep["URL"] == base + "/scep"
            assert scep["Challenge"] == "test-challenge"
            assert (scep["Keysize"], scep["Key Type"], scep["Key Usage"]) == (2048, "RSA", 5)
            assert scep["Subject"][0] == [["O", "mdm-appliance"]]
            ca_der = (await http.get("/scep", params={"operation": "GetCACert"})).content
            assert scep["CAFingerprint"] == hashlib.sha1(ca_der).digest()  # Apple: MD5 or SHA-1
            mdm = payloads["com.apple.mdm"]
            assert mdm["IdentityCertificateUUID"] == payloads["com.apple.security.scep"]["PayloadUUID"]
            assert mdm["Topic"] == topic
            assert mdm["ServerURL"] == base + "/mdm/connect"
            assert mdm["CheckInURL"] == base + "/mdm/checkin"
            assert mdm["SignMessage"] is True and mdm["CheckOutWhenRemoved"] is True
            assert mdm["AccessRights"] == 8191
            assert set(mdm["ServerCapabilities"]) == {"com.apple.mdm.per-user-connections",
                                                      "com.apple.mdm.bootstraptoken"}
            # The URLs it names exist (a device without an identity is refused, but not with 404).
            caps = await http.get(scep["URL"], params={"operation": "GetCACaps"})
            assert caps.status_code == 200
            for url in (mdm["ServerURL"], mdm["CheckInURL"]):
                response = await http.put(url, content=b"")
                assert response.status_code != 404 and response.status_code < 500, (url, response.status_code)
    finally:
        server.stop()


async def test_one_time_challenge_per_download_enrolls_once(tmp_path, nursery):
    server, _ = await enrollment_server(nursery, tmp_path, one_time_challenge=True, scep_challenge=None)
    try:
        async with server.client() as http:
            first = by_type(plistlib.loads(await download(http)))["com.apple.security.scep"]["PayloadContent"]
            second = by_type(plistlib.loads(await download(http)))["com.apple.security.scep"]["PayloadContent"]
            assert first["Challenge"] != second["Challenge"]
            ca = x509.load_der_x509_certificate(
                (await http.get("/scep", params={"operation": "GetCACert"})).content)
            answers = []
            for challenge in (first["Challenge"], first["Challenge"], second["Challenge"]):
                request = client.pkcs_req(client.Requester(challenge=challenge), ca)
                response = await http.post("/scep?operation=PKIOperation", content=request.der)
                answers.append(client.read_cert_rep(response.content, ca, request))
        assert [a.status for a in answers] == [0, 2, 0]
        assert answers[1].fail_info == 2
    finally:
        server.stop()


async def test_pkcs12_identity_profile(tmp_path, nursery):
    server, _ = await enrollment_server(nursery, tmp_path, identity="pkcs12")
    try:
        async with server.client() as http:
            payloads = by_type(plistlib.loads(await download(http)))
        assert "com.apple.security.scep" not in payloads
        p12 = payloads["com.apple.security.pkcs12"]
        assert payloads["com.apple.mdm"]["IdentityCertificateUUID"] == p12["PayloadUUID"]
        key, cert, extra = pkcs12.load_key_and_certificates(p12["PayloadContent"], p12["Password"].encode())
        assert len(p12["Password"]) >= 16
        cert.verify_directly_issued_by(server.runtime.ca.certificate)
        assert cert.public_key() == key.public_key()
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        assert ExtendedKeyUsageOID.CLIENT_AUTH in eku
        recorded = await server.runtime.store.read(scep_store.by_serial, format(cert.serial_number, "x"))
        assert recorded is not None and recorded.message_type == 0
    finally:
        server.stop()


async def test_signed_profile_verifies_with_openssl(tmp_path, nursery):
    server, topic = await enrollment_server(nursery, tmp_path, sign_profile=True)
    try:
        async with server.client() as http:
            signed = await download(http)
        done = subprocess.run(
            ["openssl", "cms", "-verify", "-inform", "DER", "-CAfile", str(server.ca_file), "-purpose", "any"],
            input=signed, capture_output=True, check=True)
        assert by_type(plistlib.loads(done.stdout))["com.apple.mdm"]["Topic"] == topic
    finally:
        server.stop()


async def test_cli_writes_the_same_profile_offline(tmp_path, nursery):
    server, topic = await enrollment_server(nursery, tmp_path)
    out = tmp_path / "enroll.mobileconfig"
    result = await _run_cli("enroll-profile", "--config", str(server.config_path), "--out", str(out))
    assert result.exit_code == 0, result.output
    server.stop()
    assert out.stat().st_mode & 0o777 == 0o600
    payloads = by_type(plistlib.loads(out.read_bytes()))
    assert payloads["com.apple.mdm"]["Topic"] == topic
    assert payloads["com.apple.mdm"]["ServerURL"] == server.base_url + "/mdm/connect"
    assert payloads["com.apple.security.scep"]["PayloadContent"]["Challenge"] == "test-challenge"


def _without_per_download_values(profile: dict) -> dict:
    """What differs between two downloads: UUIDs, the identity's CN, a one-time challenge."""
    profile = dict(profile, PayloadUUID=None)
    payloads = []
    for payload in profile["PayloadContent"]:
        payload = dict(payload, PayloadUUID=None)
        if "IdentityCertificateUUID" in payload:
            payload["IdentityCertificateUUID"] = None
        if payload["PayloadType"] == "com.apple.security.scep":
            payload["PayloadContent"] = dict(payload["PayloadContent"], Challenge=None,
                                             Subject=payload["PayloadContent"]["Subject"][:1])
        payloads.append(payload)
    profile["PayloadContent"] = payloads
    return profile


async def test_cli_profile_equals_the_served_one_and_its_one_time_challenge_enrolls_once(tmp_path, nursery):
    server, _ = await enrollment_server(nursery, tmp_path, one_time_challenge=True, scep_challenge=None)
    out = tmp_path / "cli.mobileconfig"
    try:
        result = await _run_cli("enroll-profile", "--config", str(server.config_path), "--out", str(out))
        assert result.exit_code == 0, result.output
        from_cli = plistlib.loads(out.read_bytes())
        async with server.client() as http:
            served = plistlib.loads(await download(http))
            assert _without_per_download_values(from_cli) == _without_per_download_values(served)
            challenge = by_type(from_cli)["com.apple.security.scep"]["PayloadContent"]["Challenge"]
            assert challenge != by_type(served)["com.apple.security.scep"]["PayloadContent"]["Challenge"]
            # The CLI minted it in the running server's database: it enrolls once, then never again.
            ca = x509.load_der_x509_certificate(
                (await http.get("/scep", params={"operation": "GetCACert"})).content)
            statuses = []
            for _ in range(2):
                request = client.pkcs_req(client.Requester(challenge=challenge), ca)
                response = await http.post("/scep?operation=PKIOperation", content=request.der)
                statuses.append(client.read_cert_rep(response.content, ca, request).status)
        assert statuses == [0, 2]
    finally:
        server.stop()


async def test_start_warns_when_profile_urls_changed(tmp_path, nursery, caplog):
    server, _ = await enrollment_server(nursery, tmp_path)
    async with server.client() as http:
        await download(http)
    with trio.fail_after(30):
        await server.aclose()  # the first run has closed its database before the second starts
    moved = make_config(tmp_path, server={"public_url": "https://mdm.elsewhere.example:8443"},
                        apns={"url": "https://127.0.0.1:9"})
    caplog.clear()
    second = await start_server(nursery, moved)
    warnings = [r.fields["problem"] for r in caplog.records if r.getMessage() == "enrollment_urls_changed"]
    assert any("server_url" in w and "mdm.elsewhere.example" in w for w in warnings), warnings
    assert any("checkin_url" in w for w in warnings)
    async with second.client() as http:
        health = (await http.get("/healthz")).json()
        assert health["checks"]["enrollment"]["status"] == "warning"
        assert health["checks"]["enrollment"]["profile_url_changes"]
        listed = await _run_cli("enrollment-urls", "--config", str(moved))
        assert listed.exit_code == 0 and "warning: " in listed.output and "127.0.0.1" in listed.output
        # The operator re-enrolled those devices: forgetting the old set ends the warning.
        forgot = await _run_cli("enrollment-urls", "--config", str(moved), "--forget-changed")
        assert forgot.exit_code == 0, forgot.output
        assert "forgot https://127.0.0.1" in forgot.output and "warning: " not in forgot.output
        check = (await http.get("/healthz")).json()["checks"]["enrollment"]
    assert (check["status"], check["profile_url_changes"]) == ("ok", [])
    second.stop()


async def test_cli_refuses_an_http_public_url(tmp_path):
    config = make_config(tmp_path, server={"public_url": "http://mdm.internal", "tls": False})
    result = await _run_cli("enroll-profile", "--config", str(config), "--out", str(tmp_path / "p"))
    assert result.exit_code == 1
    assert "https" in result.output and len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "p").exists()


async def test_health_warns_when_the_push_topic_changes_after_profiles_went_out(tmp_path, nursery):
    server, old_topic = await enrollment_server(nursery, tmp_path)
    try:
        async with server.client() as http:
            await download(http)
            assert (await http.get("/healthz")).json()["checks"]["enrollment"]["status"] == "ok"
            new_topic = await import_push_certificate(server, force=True)  # another topic, forced
            assert new_topic != old_topic
            check = (await http.get("/healthz")).json()["checks"]["enrollment"]
        assert check["status"] == "warning"
        assert any("topic" in p and old_topic in p and new_topic in p for p in check["profile_url_changes"])
    finally:
        server.stop()
