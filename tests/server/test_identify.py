"""Who is speaking, end to end: the real runtime and app served over real TLS by the real listener
setup, plus one probe route that answers the identified certificate's SHA-256 (or the refusal)."""

import base64
import datetime as dt
import hashlib
from functools import partial
from urllib.parse import quote

import httpx
import pytest
import trio
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from quart import request

from appliance.config import ConfigError, parse_config
from appliance.identity.errors import IdentityError
from appliance.supervisor import hypercorn_config
from appliance.web import tls_peer
from appliance.web.app import create_app
from appliance.web.app import runtime as server_runtime
from appliance.web.errors import text_error
from appliance.web.identify import device_certificate
from tests.support.harness import make_config, start_server
from tests.support.identity_pki import NOW, Identity, issue, make_ca, new_key, openssl_sign

BODY = b'<?xml version="1.0"?><plist version="1.0"><dict><key>Status</key><string>Idle</string></dict></plist>'
HEADER = "X-Client-Cert"


@pytest.fixture(scope="module")
def site_ca():
    return make_ca("Site Device CA", "ec")


@pytest.fixture(scope="module")
def site_device(site_ca):
    return issue(site_ca, "site-device")


async def probe():
    body = await request.get_data()
    try:
        certificate = device_certificate(server_runtime(), request.scope, request.headers, body)
    except IdentityError as exc:
        return text_error(exc.status, exc.reason)
    return hashlib.sha256(certificate.public_bytes(Encoding.DER)).hexdigest()


async def start(nursery, tmp_path, site_ca, trusted_proxies):
    (tmp_path / "site-ca.pem").write_bytes(site_ca.pem)
    config_path = make_config(
        tmp_path,
        identity={"trusted_ca_files": ["site-ca.pem"], "cert_header": HEADER, "trusted_proxies": trusted_proxies},
    )
    server = await start_server(nursery, config_path)
    # A second listener on the same runtime, with the probe route, set up as the supervisor does.
    app = create_app(server.runtime)
    app.add_url_rule("/probe", "probe", probe, methods=["PUT"])
    hc = hypercorn_config(server.runtime, "127.0.0.1:0")
    bundle = tmp_path / "client-cas.pem"
    bundle.write_bytes(server.runtime.trust.ca_bundle_pem())
    tls_peer.request_client_certificates(hc, bundle)
    stop = trio.Event()
    binds = await nursery.start(partial(tls_peer.serve, app, hc, shutdown_trigger=stop.wait))
    return server, binds[0] + "/probe", stop


@pytest.fixture
async def probe_server(nursery, tmp_path, site_ca):
    server, url, stop = await start(nursery, tmp_path, site_ca, ["127.0.0.1"])
    yield server, url
    stop.set()
    server.stop()


@pytest.fixture
async def untrusted_proxy_server(nursery, tmp_path, site_ca):
    server, url, stop = await start(nursery, tmp_path, site_ca, ["10.0.0.0/8"])
    yield server, url
    stop.set()
    server.stop()


def client(server, tmp_path, identity: Identity | None = None) -> httpx.AsyncClient:
    kwargs = {}
    if identity is not None:
        (tmp_path / "client.pem").write_bytes(identity.pem + identity.key_pem)
        kwargs = {"certfile": str(tmp_path / "client.pem")}
    return httpx.AsyncClient(verify=server.ssl_context(**kwargs), timeout=10)


def fingerprint(identity: Identity) -> str:
    return hashlib.sha256(identity.der).hexdigest()


def appliance_issued(server) -> Identity:
    key = new_key("rsa")
    cert = server.runtime.ca.issue(key.public_key(), x509.Name.from_rfc4514_string("CN=enrolled-device"))
    return Identity(key, cert)


async def test_signature_from_trusted_ca_file(probe_server, tmp_path, site_device):
    server, url = probe_server
    signature = base64.b64encode(openssl_sign(site_device, BODY, "-md", "sha1")).decode()
    async with client(server, tmp_path) as http:
        answer = await http.put(url, content=BODY, headers={"Mdm-Signature": signature})
    assert (answer.status_code, answer.text) == (200, fingerprint(site_device))


async def test_signature_from_appliance_ca(probe_server, tmp_path):
    server, url = probe_server
    device = appliance_issued(server)
    signature = base64.b64encode(openssl_sign(device, BODY)).decode()
    async with client(server, tmp_path) as http:
        answer = await http.put(url, content=BODY, headers={"Mdm-Signature": signature})
    assert (answer.status_code, answer.text) == (200, fingerprint(device))


async def test_signature_over_other_body_is_403(probe_server, tmp_path, site_device):
    server, url = probe_server
    signature = base64.b64encode(openssl_sign(site_device, BODY)).decode()
    async with client(server, tmp_path) as http:
        answer = await http.put(url, content=BODY + b"\n", headers={"Mdm-Signature": signature})
    assert answer.status_code == 403
    assert "message digest" in answer.text


async def test_garbage_signature_is_400(probe_server, tmp_path):
    server, url = probe_server
    async with client(server, tmp_path) as http:
        answer = await http.put(url, content=BODY, headers={"Mdm-Signature": "bm90IGNtcw=="})
    assert answer.status_code == 400


async def test_signature_from_unknown_ca_is_403(probe_server, tmp_path):
    server, url = probe_server
    stranger = issue(make_ca("Stranger CA"), "stranger")
    signature = base64.b64encode(openssl_sign(stranger, BODY)).decode()
    async with client(server, tmp_path) as http:
        answer = await http.put(url, content=BODY, headers={"Mdm-Signature": signature})
    assert answer.status_code == 403
    assert "trusted CA" in answer.text


async def test_expired_certificate_is_403_over_signature_and_tls(probe_server, tmp_path, site_ca):
    server, url = probe_server
    expired = issue(site_ca, "expired", not_before=NOW - dt.timedelta(days=30), not_after=NOW - dt.timedelta(days=1))
    signature = base64.b64encode(openssl_sign(expired, BODY)).decode()
    async with client(server, tmp_path) as http:
        answer = await http.put(url, content=BODY, headers={"Mdm-Signature": signature})
    assert (answer.status_code, answer.text.strip()) == (403, "certificate has expired")
    async with client(server, tmp_path, expired) as http:
        answer = await http.put(url, content=BODY)
    assert (answer.status_code, answer.text.strip()) == (403, "certificate has expired")


async def test_tls_client_certificate(probe_server, tmp_path, site_device):
    server, url = probe_server
    device = appliance_issued(server)
    for identity in (device, site_device):
        async with client(server, tmp_path, identity) as http:
            answer = await http.put(url, content=BODY)
        assert (answer.status_code, answer.text) == (200, fingerprint(identity))
    registry = server.runtime.metrics.registry
    assert registry.get_sample_value("mdm_device_identity_total", {"source": "tls", "outcome": "ok"}) == 2


async def test_signature_wins_over_tls_certificate(probe_server, tmp_path, site_device):
    server, url = probe_server
    device = appliance_issued(server)
    signature = base64.b64encode(openssl_sign(site_device, BODY)).decode()
    async with client(server, tmp_path, device) as http:
        answer = await http.put(url, content=BODY, headers={"Mdm-Signature": signature})
    assert answer.text == fingerprint(site_device)


async def test_no_identity_is_403(probe_server, tmp_path):
    server, url = probe_server
    async with client(server, tmp_path) as http:
        answer = await http.put(url, content=BODY)
    assert answer.status_code == 403
    assert "no device identity" in answer.text
    registry = server.runtime.metrics.registry
    assert registry.get_sample_value("mdm_device_identity_total", {"source": "none", "outcome": "NoDeviceIdentity"}) == 1


@pytest.mark.parametrize("form", ["rfc9440", "nginx"])
async def test_proxy_header_from_trusted_proxy(probe_server, tmp_path, site_device, form):
    server, url = probe_server
    if form == "rfc9440":
        value = ":" + base64.b64encode(site_device.der).decode() + ":"
    else:
        value = quote(site_device.pem.decode(), safe="-")
    async with client(server, tmp_path) as http:
        answer = await http.put(url, content=BODY, headers={HEADER: value})
    assert (answer.status_code, answer.text) == (200, fingerprint(site_device))


async def test_empty_proxy_header_counts_as_absent(probe_server, tmp_path):
    # What nginx forwards for a client without a certificate.
    server, url = probe_server
    async with client(server, tmp_path) as http:
        answer = await http.put(url, content=BODY, headers={HEADER: ""})
    assert answer.status_code == 403
    assert "no device identity" in answer.text


async def test_proxy_header_garbage_is_400(probe_server, tmp_path):
    server, url = probe_server
    async with client(server, tmp_path) as http:
        answer = await http.put(url, content=BODY, headers={HEADER: ":bm90IGEgY2VydA==:"})
    assert answer.status_code == 400


async def test_proxy_header_with_untrusted_certificate_is_403(probe_server, tmp_path):
    server, url = probe_server
    stranger = issue(make_ca("Stranger CA"), "stranger")
    async with client(server, tmp_path) as http:
        answer = await http.put(url, content=BODY, headers={HEADER: ":" + base64.b64encode(stranger.der).decode() + ":"})
    assert answer.status_code == 403


async def test_proxy_header_from_untrusted_address_is_refused(untrusted_proxy_server, tmp_path, site_device):
    server, url = untrusted_proxy_server
    value = ":" + base64.b64encode(site_device.der).decode() + ":"
    async with client(server, tmp_path) as http:
        answer = await http.put(url, content=BODY, headers={HEADER: value})
    assert answer.status_code == 403
    assert "trusted proxy" in answer.text


async def test_device_listener_asks_for_client_certificates(probe_server, tmp_path, site_device):
    # The appliance's own device listener (not only the probe one) accepts a client certificate
    # from a trusted CA and refuses one from an unknown CA at the handshake.
    server, _ = probe_server
    async with client(server, tmp_path, site_device) as http:
        answer = await http.get(server.base_url + "/health")
    assert answer.status_code < 500
    stranger = issue(make_ca("Stranger CA"), "stranger")
    async with client(server, tmp_path, stranger) as http:
        with pytest.raises(httpx.TransportError):
            await http.get(server.base_url + "/health")


def identity_config(tmp_path, **identity):
    return parse_config({"server": {"public_url": "https://mdm.example.org"}, "identity": identity}, base_dir=tmp_path)


def test_config_accepts_ca_bundle(tmp_path, site_ca):
    (tmp_path / "cas.pem").write_bytes(site_ca.pem + make_ca("Second CA").pem)
    config = identity_config(tmp_path, trusted_ca_files=["cas.pem"])
    assert config.identity.trusted_ca_files == [tmp_path / "cas.pem"]


@pytest.mark.parametrize(
    ("identity", "problem"),
    [
        ({"trusted_ca_files": ["garbage.pem"]}, "no readable certificate"),
        ({"trusted_ca_files": ["device.pem"]}, "not a CA certificate"),
        ({"cert_header": "X-Client-Cert"}, "trusted_proxies"),
        ({"cert_header": "X Client Cert", "trusted_proxies": ["127.0.0.1"]}, "HTTP header name"),
        ({"trusted_proxies": ["proxy.example.org"]}, "not an IP address"),
    ],
)
def test_config_refuses_bad_identity_settings(tmp_path, site_device, identity, problem):
    (tmp_path / "garbage.pem").write_text("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
    (tmp_path / "device.pem").write_bytes(site_device.pem)
    with pytest.raises(ConfigError) as info:
        identity_config(tmp_path, **identity)
    assert problem in "; ".join(info.value.problems)
