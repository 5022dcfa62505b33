"""Loading and validating MDM push certificates; the CSR for renewal."""

from __future__ import annotations

import datetime as dt
import subprocess

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import NameOID

from appliance.push import pushcert
from appliance.push.pushcert import PushCertError
from tests.support.apns_certs import make_ca, make_push_cert


@pytest.fixture(scope="module")
def ca():
    return make_ca()


def test_pem_pair_gives_topic_and_expiry(ca):
    ident = make_push_cert(ca, "com.apple.mgmt.External.1234", days=100, rsa_key=True)
    pc = pushcert.validate(pushcert.load_pem(ident.cert_pem, ident.key_pem))
    assert pc.topic == "com.apple.mgmt.External.1234"
    assert pc.not_after == ident.cert.not_valid_after_utc
    assert pc.days_left() in (99, 100)
    assert pushcert.expiry_state(pc) == "ok"


def test_one_body_with_key_first_or_last(ca):
    ident = make_push_cert(ca)
    for body in (ident.cert_pem + ident.key_pem, ident.key_pem + b"\n" + ident.cert_pem):
        assert pushcert.load_any(body).certificate == ident.cert


def test_pkcs12_with_password(ca):
    ident = make_push_cert(ca)
    p12 = pkcs12.serialize_key_and_certificates(
        b"push", ident.key, ident.cert, [ca.cert],
        serialization.BestAvailableEncryption(b"s3cret"))
    pc = pushcert.load_any(p12, password="s3cret")
    assert pc.certificate == ident.cert and pc.chain == (ca.cert,)
    with pytest.raises(PushCertError, match="wrong password"):
        pushcert.load_any(p12, password="nope")


def test_key_must_match_certificate(ca):
    a, b = make_push_cert(ca), make_push_cert(ca)
    with pytest.raises(PushCertError, match="does not match"):
        pushcert.load_pem(a.cert_pem, b.key_pem)


def test_topic_must_be_an_mdm_topic(ca):
    wrong = make_push_cert(ca, "com.example.app")
    with pytest.raises(PushCertError, match="com.apple.mgmt."):
        pushcert.validate(pushcert.load_pem(wrong.cert_pem, wrong.key_pem))
    no_uid = make_push_cert(ca, uid=False)
    with pytest.raises(PushCertError, match="no subject UID"):
        pushcert.validate(pushcert.load_pem(no_uid.cert_pem, no_uid.key_pem))


def test_expired_and_not_yet_valid_are_refused(ca):
    old = make_push_cert(ca, days=-1, not_before_days=-366)
    with pytest.raises(PushCertError, match="expired"):
        pushcert.validate(pushcert.load_pem(old.cert_pem, old.key_pem))
    future = make_push_cert(ca, not_before_days=2, days=300)
    with pytest.raises(PushCertError, match="not valid before"):
        pushcert.validate(pushcert.load_pem(future.cert_pem, future.key_pem))


def test_expiry_states(ca):
    soon = pushcert.load_pem(*_pems(make_push_cert(ca, days=10)))
    assert pushcert.expiry_state(soon) == "warning"
    later = soon.not_after + dt.timedelta(seconds=1)
    assert pushcert.expiry_state(soon, later) == "expired" and soon.days_left(later) < 0


def _pems(ident):
    return ident.cert_pem, ident.key_pem


@pytest.mark.parametrize("garbage", [b"", b"hello", b"-----BEGIN CERTIFICATE-----\nxx\n"])
def test_garbage_is_a_clear_error(garbage):
    with pytest.raises(PushCertError):
        pushcert.load_any(garbage, b"junk")


def test_csr_is_signed_by_its_key_and_verifies_with_openssl(ca, tmp_path):
    key_pem, csr_pem = pushcert.make_csr("Example Org MDM", email="it@example.org",
                                         organization="Example Org", country="de")
    csr = x509.load_pem_x509_csr(csr_pem)
    assert csr.is_signature_valid
    key = serialization.load_pem_private_key(key_pem, None)
    assert csr.public_key().public_numbers() == key.public_key().public_numbers()
    assert csr.subject.get_attributes_for_oid(NameOID.COUNTRY_NAME)[0].value == "DE"
    path = tmp_path / "req.csr"
    path.write_bytes(csr_pem)
    out = subprocess.run(["openssl", "req", "-in", str(path), "-noout", "-verify"],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
