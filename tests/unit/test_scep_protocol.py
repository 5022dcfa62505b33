"""SCEP messages without a server: our parser/writer against the independent test client."""

from __future__ import annotations

import datetime as dt
import subprocess

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from hypothesis import HealthCheck, given, settings, strategies as st

from appliance.identity import scep
from tests.support import scep_client as client


def _ca(name: str = "Test SCEP CA") -> tuple[x509.Certificate, rsa.RSAPrivateKey]:
    key = rsa.generate_private_key(65537, 2048)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (
        x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1)).not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


CA_CERT, CA_KEY = _ca()
REQUESTER = client.Requester(challenge="s3cret")


def _issue(csr: x509.CertificateSigningRequest, days: int = 365) -> x509.Certificate:
    now = dt.datetime.now(dt.timezone.utc)
    return (
        x509.CertificateBuilder().subject_name(csr.subject).issuer_name(CA_CERT.subject)
        .public_key(csr.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(CA_KEY, hashes.SHA256())
    )


@pytest.mark.parametrize("digest", ["sha1", "sha256", "sha512"])
@pytest.mark.parametrize("cipher,asn1_name", [
    ("aes128", "aes128_cbc"), ("aes256", "aes256_cbc"), ("des3", "tripledes_3key"), ("des", "des"),
])
def test_pkcsreq_round_trip_answers_with_the_requesters_cipher(cipher, asn1_name, digest):
    request = client.pkcs_req(REQUESTER, CA_CERT, cipher=cipher, digest=digest)

    message = scep.parse_pki_message(request.der)
    assert message.verified
    assert message.message_type == scep.MessageType.PKCS_REQ
    assert message.transaction_id == request.transaction_id
    assert message.sender_nonce == request.sender_nonce
    assert message.content_encryption == asn1_name
    csr_der = scep.open_envelope(message, CA_CERT, CA_KEY)
    assert csr_der == REQUESTER.csr_der
    req = scep.parse_certification_request(csr_der, message)
    assert req.challenge_password == "s3cret"

    issued = _issue(req.csr)
    answer = client.read_cert_rep(scep.cert_rep_success(message, [issued], CA_CERT, CA_KEY),
                                  CA_CERT, request)
    assert answer.status == 0 and answer.fail_info is None
    assert answer.transaction_id == request.transaction_id
    assert answer.recipient_nonce == request.sender_nonce
    assert len(answer.sender_nonce) == 16 and answer.sender_nonce != request.sender_nonce
    assert answer.content_cipher == asn1_name
    assert answer.digest == digest
    assert answer.certificates == [issued]


def test_failure_cert_rep_names_the_reason_and_has_no_envelope():
    request = client.pkcs_req(REQUESTER, CA_CERT)
    message = scep.parse_pki_message(request.der)
    answer = client.read_cert_rep(
        scep.cert_rep_failure(message, scep.FailInfo.BAD_REQUEST, CA_CERT, CA_KEY), CA_CERT, request)
    assert (answer.status, answer.fail_info) == (2, 2)
    assert answer.recipient_nonce == request.sender_nonce
    assert answer.certificates == []


def test_bad_signature_is_answerable_bad_message_check():
    request = client.pkcs_req(REQUESTER, CA_CERT, tamper=True)
    with pytest.raises(scep.ScepError) as info:
        scep.parse_pki_message(request.der)
    assert info.value.fail_info == scep.FailInfo.BAD_MESSAGE_CHECK
    assert info.value.answerable and info.value.request.transaction_id == request.transaction_id
    assert not info.value.request.verified


def test_content_swapped_after_signing_fails_the_message_digest():
    good = client.pkcs_req(REQUESTER, CA_CERT)
    other = client.envelope(b"something else", CA_CERT, "aes128")
    from asn1crypto import cms

    info = cms.ContentInfo.load(good.der)
    info["content"]["encap_content_info"]["content"] = other
    with pytest.raises(scep.ScepError, match="messageDigest") as err:
        scep.parse_pki_message(info.dump(force=True))
    assert err.value.fail_info == scep.FailInfo.BAD_MESSAGE_CHECK


def test_envelope_for_another_ca_is_refused():
    other_cert, _ = _ca("Someone else")
    request = client.pkcs_req(REQUESTER, other_cert)
    message = scep.parse_pki_message(request.der)
    with pytest.raises(scep.ScepError) as err:
        scep.open_envelope(message, CA_CERT, CA_KEY)
    assert err.value.fail_info == scep.FailInfo.BAD_MESSAGE_CHECK and err.value.answerable


def test_unsupported_content_cipher_is_bad_alg():
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        pem = Path(tmp) / "ca.pem"
        pem.write_bytes(CA_CERT.public_bytes(serialization.Encoding.PEM))
        env = client._openssl("cms", "-encrypt", "-binary", "-outform", "DER", "-camellia128", str(pem),
                              data=REQUESTER.csr_der)
    der = client.sign_pki_message(env, message_type=19, transaction_id="T1", sender_nonce=b"n" * 16,
                                  cert=REQUESTER.self_signed, key=REQUESTER.key)
    message = scep.parse_pki_message(der)
    with pytest.raises(scep.ScepError) as err:
        scep.open_envelope(message, CA_CERT, CA_KEY)
    assert err.value.fail_info == scep.FailInfo.BAD_ALG


def test_ber_constructed_encrypted_content_is_read():
    """Go's pkcs7 (micromdm/scep) writes encryptedContent [0] as a constructed string."""
    from asn1crypto import cms, core

    envelope = cms.ContentInfo.load(client.envelope(REQUESTER.csr_der, CA_CERT, "des"))
    eci = envelope["content"]["encrypted_content_info"]
    ciphertext = eci["encrypted_content"].native
    chunks = b"".join(core.OctetString(ciphertext[i:i + 64]).dump() for i in range(0, len(ciphertext), 64))
    constructed = core.Asn1Value(class_="context", tag=0, contents=chunks)
    constructed.method = 1
    body = eci["content_type"].dump() + eci["content_encryption_algorithm"].dump() + constructed.dump()
    eci_der = core.Asn1Value(class_="universal", tag=16, contents=body)
    eci_der.method = 1
    enveloped = envelope["content"]
    go_style = (enveloped["version"].dump() + enveloped["recipient_infos"].dump() + eci_der.dump())
    seq = core.Asn1Value(class_="universal", tag=16, contents=go_style)
    seq.method = 1
    info = cms.ContentInfo({"content_type": "enveloped_data", "content": cms.EnvelopedData.load(seq.dump())})
    der = client.sign_pki_message(info.dump(), message_type=19, transaction_id="T-go",
                                  sender_nonce=b"n" * 16, cert=REQUESTER.self_signed, key=REQUESTER.key)
    message = scep.parse_pki_message(der)
    assert scep.open_envelope(message, CA_CERT, CA_KEY) == REQUESTER.csr_der


def test_short_rsa_keys_are_bad_alg():
    from cryptography.hazmat.primitives.asymmetric import rsa as rsa_keys

    weak = client.Requester(challenge="x", key=rsa_keys.generate_private_key(65537, 1024))
    message = scep.parse_pki_message(client.pkcs_req(weak, CA_CERT).der)
    with pytest.raises(scep.ScepError) as err:
        scep.parse_certification_request(scep.open_envelope(message, CA_CERT, CA_KEY), message)
    assert err.value.fail_info == scep.FailInfo.BAD_ALG


def test_csr_without_challenge_has_none():
    requester = client.Requester(challenge=None)
    request = client.pkcs_req(requester, CA_CERT)
    message = scep.parse_pki_message(request.der)
    req = scep.parse_certification_request(scep.open_envelope(message, CA_CERT, CA_KEY), message)
    assert req.challenge_password is None


def test_envelope_holding_no_csr_is_bad_request():
    env = client.envelope(b"not a csr", CA_CERT, "aes256")
    der = client.sign_pki_message(env, message_type=19, transaction_id="T2", sender_nonce=b"n" * 16,
                                  cert=REQUESTER.self_signed, key=REQUESTER.key)
    message = scep.parse_pki_message(der)
    with pytest.raises(scep.ScepError) as err:
        scep.parse_certification_request(scep.open_envelope(message, CA_CERT, CA_KEY), message)
    assert err.value.fail_info == scep.FailInfo.BAD_REQUEST


def test_unknown_message_type_is_answerable_bad_request():
    der = client.sign_pki_message(b"", message_type=99, transaction_id="T3", sender_nonce=b"n" * 16,
                                  cert=REQUESTER.self_signed, key=REQUESTER.key)
    with pytest.raises(scep.ScepError) as err:
        scep.parse_pki_message(der)
    assert err.value.fail_info == scep.FailInfo.BAD_REQUEST and err.value.answerable


@pytest.mark.parametrize("junk", [b"", b"\x30\x00", b"hello", b"\x30\x82\xff\xff" + b"\x00" * 10])
def test_junk_is_not_answerable(junk):
    with pytest.raises(scep.ScepError) as err:
        scep.parse_pki_message(junk)
    assert not err.value.answerable


def test_renewal_signer_must_be_a_valid_certificate_we_issued():
    issued = _issue(REQUESTER.csr)
    now = dt.datetime.now(dt.timezone.utc)
    renewal = client.pkcs_req(REQUESTER, CA_CERT, message_type=17, signer=(issued, REQUESTER.key))
    message = scep.parse_pki_message(renewal.der)
    assert message.message_type == scep.MessageType.RENEWAL_REQ
    assert scep.renewal_signer_is_ours(message, CA_CERT, now)
    assert not scep.renewal_signer_is_ours(message, CA_CERT, now + dt.timedelta(days=400))
    self_signed = scep.parse_pki_message(client.pkcs_req(REQUESTER, CA_CERT, message_type=17).der)
    assert not scep.renewal_signer_is_ours(self_signed, CA_CERT, now)


def test_degenerate_pkcs7_is_readable_by_openssl():
    other, _ = _ca("Intermediate")
    der = scep.degenerate_pkcs7([CA_CERT, other])
    out = subprocess.run(["openssl", "pkcs7", "-inform", "DER", "-print_certs"], input=der,
                         capture_output=True, check=True).stdout.decode()
    assert "Test SCEP CA" in out and "Intermediate" in out


_VALID = client.pkcs_req(REQUESTER, CA_CERT).der


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, len(_VALID) - 1), st.integers(1, 255), st.integers(0, len(_VALID)))
def test_corrupted_messages_only_ever_raise_scep_error(position, xor, cut):
    data = bytearray(_VALID)
    data[position] ^= xor
    for candidate in (bytes(data), bytes(data[:cut])):
        try:
            message = scep.parse_pki_message(candidate)
            content = scep.open_envelope(message, CA_CERT, CA_KEY)
            scep.parse_certification_request(content, message)
        except scep.ScepError:
            pass


def test_an_attribute_of_a_type_asn1crypto_cannot_read_is_refused():
    """messageType as REAL instead of PrintableString: asn1crypto raises AttributeError on it."""
    as_printable = b"\x31\x04\x13\x0219"  # SET { PrintableString "19" }: messageType PKCSReq
    assert _VALID.count(as_printable) == 1
    with pytest.raises(scep.ScepError) as refused:
        scep.parse_pki_message(_VALID.replace(as_printable, b"\x31\x04\x09\x0219"))
    assert not refused.value.answerable


_ENVELOPE = client.envelope(REQUESTER.csr_der, CA_CERT, "aes128")


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, len(_ENVELOPE) - 1), st.integers(1, 255))
def test_corrupted_envelopes_inside_valid_signatures_only_raise_scep_error(position, xor):
    data = bytearray(_ENVELOPE)
    data[position] ^= xor
    der = client.sign_pki_message(bytes(data), message_type=19, transaction_id="T-fuzz",
                                  sender_nonce=b"n" * 16, cert=REQUESTER.self_signed, key=REQUESTER.key)
    try:
        message = scep.parse_pki_message(der)
        scep.parse_certification_request(scep.open_envelope(message, CA_CERT, CA_KEY), message)
    except scep.ScepError as exc:
        assert exc.answerable  # the signature was good: the transaction can always be answered
