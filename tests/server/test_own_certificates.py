"""The appliance's own certificates while it runs: the generated TLS certificate is renewed without a
restart (new connections get it, open ones keep theirs), an operator's certificate is reloaded when its
files change, and the CA's expiry is warned about a year ahead."""

from __future__ import annotations

import datetime as dt
import ipaddress
import logging
import re
import ssl
from datetime import timedelta

import httpx
import trio
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from appliance.clock import OffsetClock
from appliance.supervisor import status_line
from tests.support.device_sim import Connection
from tests.support.harness import make_config, start_server
from tests.support.push_support import metric_lines

# OpenSSL's X509_V_FLAG_NO_CHECK_TIME: the server's clock runs ahead of this process's, so a certificate it
# issues starts in our future; the chain and the names are still checked.
NO_CHECK_TIME = 0x200000


def _client_context(ca_file) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(ca_file))
    context.verify_flags |= NO_CHECK_TIME
    return context


async def _served_certificate(port: int, context: ssl.SSLContext) -> x509.Certificate:
    """The certificate a new TLS connection to the listener is served."""
    stream = await trio.open_ssl_over_tcp_stream("127.0.0.1", port, ssl_context=context, https_compatible=True)
    try:
        await stream.do_handshake()
        return x509.load_der_x509_certificate(stream.getpeercert(binary_form=True))
    finally:
        await stream.aclose()


async def _until_served_other_than(port: int, context: ssl.SSLContext, old: x509.Certificate) -> x509.Certificate:
    with trio.fail_after(15):
        while (served := await _served_certificate(port, context)) == old:
            await trio.sleep(0.05)
    return served


async def test_the_generated_tls_certificate_is_renewed_while_the_server_runs(nursery, tmp_path):
    clock = OffsetClock()
    server = await start_server(nursery, make_config(tmp_path), clock)
    context = _client_context(server.ca_file)
    first = await _served_certificate(server.port, context)
    # A connection opened now, kept alive across the renewal.
    kept = Connection(server.base_url, context)
    assert (await kept.request("GET", "/healthz", [], b"")).status == 200

    clock.advance(first.not_valid_after_utc - clock.now() - timedelta(days=29))  # within 30 days of its end
    renewed = await _until_served_other_than(server.port, context, first)

    ca = x509.load_pem_x509_certificate(server.ca_file.read_bytes())
    renewed.verify_directly_issued_by(ca)
    assert abs(renewed.not_valid_before_utc - (clock.now() - timedelta(hours=1))) < timedelta(minutes=5)
    names = x509.SubjectAlternativeName
    assert renewed.extensions.get_extension_for_class(names) == first.extensions.get_extension_for_class(names)
    assert x509.load_pem_x509_certificate((server.config.data_dir / "server.crt").read_bytes()) == renewed
    # The same process, still serving: the kept connection carries on with the certificate it was given,
    # and health shows the new expiry.
    assert (await kept.request("GET", "/healthz", [], b"")).status == 200
    assert x509.load_der_x509_certificate(kept.stream.getpeercert(binary_form=True)) == first
    await kept.close()
    assert not server.finished.is_set()
    async with httpx.AsyncClient(base_url=server.api_url, verify=context) as http:
        health = (await http.get("/healthz")).json()
    tls = health["checks"]["certificates"]["tls"]
    assert tls["generated"] is True and tls["days_left"] > 800


def _identity(ca_key, ca_cert, name: str, *, ca: bool = False, days: int = 365, key=None):
    key = key or rsa.generate_private_key(public_exponent=65537, key_size=2048)
    now = dt.datetime.now(dt.timezone.utc)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    builder = (x509.CertificateBuilder().subject_name(subject)
               .issuer_name(subject if ca else ca_cert.subject).public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(now - timedelta(hours=1)).not_valid_after(now + timedelta(days=days))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if not ca:
        names = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
        builder = (builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
                   .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False))
    cert = builder.sign(ca_key or key, hashes.SHA256())
    return cert, key


def _write(path, cert, key) -> None:
    path.with_suffix(".crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    path.with_suffix(".key").write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                           serialization.PrivateFormat.PKCS8,
                                                           serialization.NoEncryption()))


async def test_an_operators_tls_certificate_is_loaded_again_when_its_files_change(nursery, tmp_path):
    ca_cert, ca_key = _identity(None, None, "Operator CA", ca=True)
    (tmp_path / "operator-ca.pem").write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    first, first_key = _identity(ca_key, ca_cert, "localhost")
    _write(tmp_path / "tls", first, first_key)
    clock = OffsetClock()
    config = make_config(tmp_path, server={"tls_cert": str(tmp_path / "tls.crt"), "tls_key": str(tmp_path / "tls.key")})
    server = await start_server(nursery, config, clock)
    context = ssl.create_default_context(cafile=str(tmp_path / "operator-ca.pem"))
    assert await _served_certificate(server.port, context) == first

    renewed, renewed_key = _identity(ca_key, ca_cert, "localhost")  # certbot, say, renewed them in place
    _write(tmp_path / "tls", renewed, renewed_key)
    clock.advance(timedelta(hours=1, minutes=1))  # the next [renewal] check_interval
    assert await _until_served_other_than(server.port, context, first) == renewed


async def test_the_ca_expiry_is_warned_about_a_year_ahead(nursery, tmp_path, caplog):
    # A CA (the appliance's own files in data_dir) with 200 days left.
    ca_cert, ca_key = _identity(None, None, "Ageing appliance CA", ca=True, days=200)
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    _write(state / "ca", ca_cert, ca_key)
    caplog.set_level(logging.WARNING, logger="appliance.certificates")
    server = await start_server(nursery, make_config(tmp_path))

    assert any(record.getMessage() == "ca_certificate_expires_soon" for record in caplog.records)
    async with server.api_client() as api:
        health = (await api.get("/healthz")).json()
        metrics = (await api.get("/metrics")).text
    assert health["status"] == "warning"
    assert health["checks"]["certificates"]["status"] == "warning"
    assert health["checks"]["certificates"]["ca"]["days_left"] in (199, 200)
    assert 199 <= metric_lines(metrics, "mdm_ca_certificate_days_left")[""] <= 200
    assert re.search(r"appliance CA expires in (199|200) days", await status_line(server.runtime))


async def test_a_ca_with_years_left_is_not_warned_about(server):
    async with server.api_client() as api:
        health = (await api.get("/healthz")).json()
    assert health["checks"]["certificates"]["status"] == "ok"
    assert health["checks"]["certificates"]["ca"]["days_left"] > 3000
    assert "appliance CA" not in await status_line(server.runtime)
