"""Client certificates passed by a reverse proxy, and which peers may pass them."""

import base64
import datetime as dt
import subprocess
from urllib.parse import quote

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.identity.errors import CertificateHeaderMalformed, IdentityError
from appliance.identity.peer import is_trusted_proxy, parse_client_cert_header
from appliance.identity.trust import TrustAnchors
from tests.support.identity_pki import issue, make_ca


@pytest.fixture(scope="module")
def device():
    return issue(make_ca("Proxy Test CA", "ec"), "device", "ec")


def nginx_escaped(pem: bytes) -> str:
    # What nginx's $ssl_client_escaped_cert produces: the PEM percent-encoded, newlines, spaces,
    # "+", "/" and "=" included ("-----BEGIN%20CERTIFICATE-----%0AMIIB...%2B...%3D%0A-----END...").
    return quote(pem.decode(), safe="-")


def test_rfc9440_client_cert(device):
    header = ":" + base64.b64encode(device.der).decode() + ":"
    assert parse_client_cert_header(header) == device.cert


def test_nginx_escaped_pem(device):
    header = nginx_escaped(device.pem)
    assert header.startswith("-----BEGIN%20CERTIFICATE-----%0A") and "\n" not in header
    assert parse_client_cert_header(header) == device.cert


def test_nginx_escaped_pem_with_chain_takes_first(device):
    ca = make_ca("Chain CA")
    assert parse_client_cert_header(nginx_escaped(device.pem + ca.pem)) == device.cert


def test_plain_pem_and_bare_base64_der(device):
    assert parse_client_cert_header(device.pem.decode().replace("\n", " ")) == device.cert
    assert parse_client_cert_header(base64.b64encode(device.der)) == device.cert


@pytest.mark.parametrize(
    "header",
    [
        "",
        "::",
        ":not base64!:",
        ":" + base64.b64encode(b"not a certificate").decode() + ":",
        "%2D%2D%2D%2D%2DBEGIN%20CERTIFICATE%2D%2D%2D%2D%2D%0Agarbage%0A",
        "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----",
        "some random text",
        "x" * 40000,
    ],
)
def test_garbage_headers_are_malformed(header):
    with pytest.raises(CertificateHeaderMalformed) as info:
        parse_client_cert_header(header)
    assert info.value.status == 400


def test_truncated_rfc9440(device):
    header = ":" + base64.b64encode(device.der[:-20]).decode() + ":"
    with pytest.raises(IdentityError):
        parse_client_cert_header(header)


@pytest.mark.parametrize(
    ("addr", "trusted", "expected"),
    [
        ("127.0.0.1", ["127.0.0.1"], True),
        ("127.0.0.2", ["127.0.0.1"], False),
        ("10.1.2.3", ["10.0.0.0/8"], True),
        ("11.1.2.3", ["10.0.0.0/8"], False),
        ("192.168.1.77", ["10.0.0.0/8", "192.168.1.0/24"], True),
        ("::1", ["::1"], True),
        ("::1", ["127.0.0.1"], False),
        ("fd00::5", ["fd00::/8"], True),
        ("::ffff:10.0.0.9", ["10.0.0.0/24"], True),
        ("fe80::1%eth0", ["fe80::/10"], True),
        ("127.0.0.1", [], False),
        (None, ["0.0.0.0/0"], False),
        ("", ["0.0.0.0/0"], False),
        ("/run/mdm.sock", ["0.0.0.0/0"], False),
        ("not-an-ip", ["0.0.0.0/0"], False),
    ],
)
def test_is_trusted_proxy(addr, trusted, expected):
    assert is_trusted_proxy(addr, trusted) is expected


def test_bad_trusted_proxy_entry_is_a_config_error():
    with pytest.raises(ValueError):
        is_trusted_proxy("127.0.0.1", ["localhost"])


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=300) | st.binary(max_size=300))
def test_random_headers_only_raise_identity_errors(header):
    with pytest.raises(IdentityError):
        parse_client_cert_header(header)


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_mutated_certificates_only_raise_identity_errors(device, data):
    # Whatever a proxy forwards, parsing plus the trust check ends in a certificate or an
    # IdentityError (cryptography decodes lazily; a late decode error must not escape as a 500).
    anchors = TrustAnchors([], dt.timedelta(0))
    der = bytearray(device.der)
    for _ in range(data.draw(st.integers(1, 3))):
        der[data.draw(st.integers(0, len(der) - 1))] = data.draw(st.integers(0, 255))
    try:
        anchors.check(parse_client_cert_header(":" + base64.b64encode(bytes(der)).decode() + ":"))
    except IdentityError:
        pass
    else:
        pytest.fail("no anchors: nothing may be trusted")


def test_certificate_with_zero_serial_refused(tmp_path):
    # RFC 5280 violation that cryptography still loads with a deprecation warning: refused now.
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
         "-keyout", str(tmp_path / "key.pem"), "-subj", "/CN=zero", "-set_serial", "0", "-days", "1",
         "-outform", "DER", "-out", str(tmp_path / "zero.der")],
        check=True, capture_output=True,
    )
    der = (tmp_path / "zero.der").read_bytes()
    with pytest.raises(CertificateHeaderMalformed):
        parse_client_cert_header(":" + base64.b64encode(der).decode() + ":")
