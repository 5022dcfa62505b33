"""Mdm-Signature verification against vectors made by the openssl CLI and cryptography's builder."""

import base64
import hashlib

import pytest
from asn1crypto import cms, core
from asn1crypto import x509 as asn1_x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.identity.cms import verify_detached_signature
from appliance.identity.errors import IdentityError, SignatureInvalid, SignatureMalformed
from tests.support.identity_pki import builder_sign, issue, make_ca, openssl_sign

BODY = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<plist version="1.0"><dict>'
    b"<key>MessageType</key><string>Authenticate</string>"
    b"<key>UDID</key><string>0000-1111</string></dict></plist>\n"
)


@pytest.fixture(scope="module")
def ca():
    return make_ca("Test Device CA")


@pytest.fixture(scope="module")
def rsa_device(ca):
    return issue(ca, "rsa-device")


@pytest.fixture(scope="module")
def ec_device(ca):
    return issue(ca, "ec-device", "ec")


@pytest.fixture(scope="module")
def ec384_device(ca):
    return issue(ca, "ec384-device", "ec384")


def b64(der: bytes) -> bytes:
    return base64.b64encode(der)


def signer_info(der: bytes) -> cms.SignerInfo:
    return cms.ContentInfo.load(der)["content"]["signer_infos"][0]


# --- what must verify -------------------------------------------------------------------------

@pytest.mark.parametrize("digest", ["sha1", "sha256", "sha384", "sha512"])
def test_openssl_rsa_pkcs1_each_digest(rsa_device, digest):
    der = openssl_sign(rsa_device, BODY, "-md", digest)
    info = signer_info(der)
    assert info["digest_algorithm"]["algorithm"].native == digest
    assert info["signature_algorithm"].signature_algo == "rsassa_pkcs1v15"
    cert = verify_detached_signature(b64(der), BODY)
    assert cert == rsa_device.cert


@pytest.mark.parametrize("digest", ["sha1", "sha256"])
def test_openssl_rsa_pss(rsa_device, digest):
    der = openssl_sign(rsa_device, BODY, "-md", digest, "-keyopt", "rsa_padding_mode:pss")
    info = signer_info(der)
    assert info["signature_algorithm"]["algorithm"].native == "rsassa_pss"
    assert info["signature_algorithm"]["parameters"]["hash_algorithm"]["algorithm"].native == digest
    assert verify_detached_signature(b64(der), BODY) == rsa_device.cert


@pytest.mark.parametrize("digest", ["sha1", "sha256", "sha384"])
def test_openssl_ecdsa(ec_device, digest):
    der = openssl_sign(ec_device, BODY, "-md", digest)
    assert signer_info(der)["signature_algorithm"].signature_algo == "ecdsa"
    assert verify_detached_signature(b64(der), BODY) == ec_device.cert


def test_openssl_ecdsa_p384(ec384_device):
    der = openssl_sign(ec384_device, BODY, "-md", "sha384")
    assert verify_detached_signature(b64(der), BODY) == ec384_device.cert


def test_plain_rsa_encryption_signature_algorithm(rsa_device):
    # openssl, like Apple devices, names the signer algorithm plain rsaEncryption.
    der = openssl_sign(rsa_device, BODY)
    assert signer_info(der)["signature_algorithm"]["algorithm"].native == "rsassa_pkcs1v15"
    assert verify_detached_signature(b64(der), BODY) == rsa_device.cert


@pytest.mark.parametrize("kind", ["rsa", "ec"])
def test_signer_named_by_key_id(ca, kind):
    device = issue(ca, f"keyid-{kind}", kind)
    der = openssl_sign(device, BODY, "-keyid")
    assert signer_info(der)["sid"].name == "subject_key_identifier"
    assert verify_detached_signature(b64(der), BODY) == device.cert


def test_signer_named_by_key_id_without_ski_extension(ca):
    # openssl will not sign with -keyid for a certificate lacking the extension: sign with one
    # that has it, then carry a certificate for the same key without it (certificates are not
    # covered by the signature). The key id is then computed from the public key.
    device = issue(ca, "with-ski")
    bare = issue(ca, "no-ski", ski=False, key=device.key)
    content_info = cms.ContentInfo.load(openssl_sign(device, BODY, "-keyid"))
    content_info["content"]["certificates"] = cms.CertificateSet(
        [cms.CertificateChoices("certificate", asn1_x509.Certificate.load(bare.der))]
    )
    der = content_info.dump()
    assert signer_info(der)["sid"].name == "subject_key_identifier"
    assert verify_detached_signature(b64(der), BODY) == bare.cert


def test_signer_issuer_encoded_differently_still_matches(rsa_device):
    # The SignerInfo may name the issuer with PrintableString where the certificate has
    # UTF8String: equal names per RFC 5280 7.1, different bytes.
    content_info = cms.ContentInfo.load(openssl_sign(rsa_device, BODY))
    sid = content_info["content"]["signer_infos"][0]["sid"]
    printable = asn1_x509.Name.build({"common_name": "Test Device CA"}, use_printable=True)
    assert printable.dump() != sid.chosen["issuer"].dump()
    content_info["content"]["signer_infos"][0]["sid"] = cms.SignerIdentifier(
        "issuer_and_serial_number",
        {"issuer": printable, "serial_number": sid.chosen["serial_number"].native},
    )
    der = content_info.dump(force=True)
    assert verify_detached_signature(b64(der), BODY) == rsa_device.cert


def test_signer_named_by_issuer_and_serial(rsa_device):
    der = openssl_sign(rsa_device, BODY)
    assert signer_info(der)["sid"].name == "issuer_and_serial_number"
    assert verify_detached_signature(b64(der), BODY) == rsa_device.cert


@pytest.mark.parametrize("kind", ["rsa", "ec"])
def test_without_signed_attributes(ca, kind):
    device = issue(ca, f"noattr-{kind}", kind)
    der = openssl_sign(device, BODY, "-noattr")
    assert signer_info(der)["signed_attrs"].native is None
    assert verify_detached_signature(b64(der), BODY) == device.cert
    with pytest.raises(SignatureInvalid):
        verify_detached_signature(b64(der), BODY + b" ")


@pytest.mark.parametrize("digest", [hashes.SHA256(), hashes.SHA384(), hashes.SHA512()])
def test_cryptography_builder_rsa_and_ec(rsa_device, ec_device, digest):
    assert verify_detached_signature(b64(builder_sign(rsa_device, BODY, digest)), BODY) == rsa_device.cert
    assert verify_detached_signature(b64(builder_sign(ec_device, BODY, digest)), BODY) == ec_device.cert


def test_cryptography_builder_pss(rsa_device):
    der = builder_sign(rsa_device, BODY, hashes.SHA256(), pss=True)
    assert signer_info(der)["signature_algorithm"]["algorithm"].native == "rsassa_pss"
    assert verify_detached_signature(b64(der), BODY) == rsa_device.cert


def test_header_as_str_with_surrounding_whitespace(rsa_device):
    der = builder_sign(rsa_device, BODY)
    assert verify_detached_signature(" " + b64(der).decode() + "\r\n", BODY) == rsa_device.cert


def test_extra_certificates_do_not_confuse_signer_lookup(ca, rsa_device, ec_device):
    der = openssl_sign(rsa_device, BODY, extra_certs=[ca, ec_device])
    assert verify_detached_signature(b64(der), BODY) == rsa_device.cert


def test_empty_body(rsa_device):
    der = openssl_sign(rsa_device, b"")
    assert verify_detached_signature(b64(der), b"") == rsa_device.cert


# --- what must be refused as an identity failure (403) ----------------------------------------

@pytest.mark.parametrize("options", [(), ("-md", "sha1"), ("-keyopt", "rsa_padding_mode:pss")])
def test_body_changed_by_one_byte(rsa_device, options):
    der = openssl_sign(rsa_device, BODY, *options)
    changed = BODY.replace(b"0000-1111", b"0000-1112")
    with pytest.raises(SignatureInvalid, match="message digest"):
        verify_detached_signature(b64(der), changed)


def test_message_digest_checked_against_signerinfo_digest(rsa_device):
    # SHA-1 signature: a SHA-256 digest of the body must not be what is compared.
    der = openssl_sign(rsa_device, BODY, "-md", "sha1")
    attrs = {a["type"].native: a["values"][0].native for a in signer_info(der)["signed_attrs"]}
    assert attrs["message_digest"] == hashlib.sha1(BODY).digest()
    assert verify_detached_signature(b64(der), BODY) == rsa_device.cert


def test_signature_bytes_flipped(rsa_device, ec_device):
    for device in (rsa_device, ec_device):
        der = bytearray(openssl_sign(device, BODY))
        info = signer_info(bytes(der))
        signature = info["signature"].contents
        at = bytes(der).rindex(signature) + len(signature) // 2
        der[at] ^= 0x01
        with pytest.raises(SignatureInvalid, match="does not verify"):
            verify_detached_signature(b64(bytes(der)), BODY)


def test_signed_attribute_changed_after_signing(rsa_device):
    # Changing the signing time inside the signed attributes breaks the signature over them.
    der = openssl_sign(rsa_device, BODY)
    info = cms.ContentInfo.load(der)
    attrs = info["content"]["signer_infos"][0]["signed_attrs"]
    original = attrs.dump()
    signing_time = next(a for a in attrs if a["type"].native == "signing_time")
    time_der = signing_time["values"][0].dump()
    tampered_time = time_der[:-3] + bytes([time_der[-3] ^ 0x01]) + time_der[-2:]
    tampered = der.replace(original, original.replace(time_der, tampered_time))
    assert tampered != der
    with pytest.raises(SignatureInvalid, match="does not verify"):
        verify_detached_signature(b64(tampered), BODY)


def test_wrong_certificate_included(ca, rsa_device):
    # Signed by one key, but the certificate carried (and named as signer) holds another key.
    other = issue(ca, "other-device")
    impostor = type(rsa_device)(other.key, rsa_device.cert)
    with pytest.raises(SignatureInvalid, match="does not verify"):
        verify_detached_signature(b64(builder_sign(impostor, BODY)), BODY)


def test_signer_certificate_missing(rsa_device):
    der = openssl_sign(rsa_device, BODY, "-nocerts")
    with pytest.raises(SignatureInvalid, match="not included"):
        verify_detached_signature(b64(der), BODY)


def test_signer_not_among_included_certificates(ca, rsa_device, ec_device):
    der = openssl_sign(rsa_device, BODY, "-nocerts", extra_certs=[ec_device, ca])
    with pytest.raises(SignatureInvalid, match="not included"):
        verify_detached_signature(b64(der), BODY)


def test_ecdsa_signature_with_rsa_certificate_refused(ec_device, rsa_device):
    # An ECDSA SignerInfo whose named (and included) signer certificate holds an RSA key.
    content_info = cms.ContentInfo.load(openssl_sign(ec_device, BODY))
    signed_data = content_info["content"]
    rsa_cert = asn1_x509.Certificate.load(rsa_device.der)
    signed_data["certificates"] = cms.CertificateSet([cms.CertificateChoices("certificate", rsa_cert)])
    signed_data["signer_infos"][0]["sid"] = cms.SignerIdentifier(
        "issuer_and_serial_number",
        {"issuer": rsa_cert.issuer, "serial_number": rsa_cert.serial_number},
    )
    der = content_info.dump(force=True)
    assert signer_info(der)["signature_algorithm"].signature_algo == "ecdsa"
    with pytest.raises(SignatureInvalid, match="does not fit"):
        verify_detached_signature(b64(der), BODY)


def test_unsupported_digest_refused(rsa_device):
    der = openssl_sign(rsa_device, BODY, "-md", "md5")
    with pytest.raises(SignatureInvalid, match="unsupported digest"):
        verify_detached_signature(b64(der), BODY)


# --- what is malformed (400) --------------------------------------------------------------------

@pytest.mark.parametrize(
    "header",
    ["", "   ", "not base64 at all!", "QUJD=QUJD", "é", b"\xff\xfe"],
)
def test_garbage_base64(header):
    with pytest.raises(SignatureMalformed):
        verify_detached_signature(header, BODY)


@pytest.mark.parametrize(
    "der",
    [b"hello, world", b"\x30\x03\x02\x01\x05", b"\x30\x80\x00\x00", b"\x00" * 40, b"\x30"],
)
def test_valid_base64_of_garbage_der(der):
    with pytest.raises(SignatureMalformed):
        verify_detached_signature(b64(der), BODY)


def test_truncated_der(rsa_device):
    der = openssl_sign(rsa_device, BODY)
    for cut in (1, 10, len(der) // 2, len(der) - 1):
        with pytest.raises(SignatureMalformed):
            verify_detached_signature(b64(der[:cut]), BODY)


def test_trailing_bytes_after_der(rsa_device):
    der = openssl_sign(rsa_device, BODY)
    with pytest.raises(SignatureMalformed):
        verify_detached_signature(b64(der + b"\x00"), BODY)


def test_not_signed_data(rsa_device):
    data_only = cms.ContentInfo({"content_type": "data", "content": b"hello"}).dump()
    with pytest.raises(SignatureMalformed, match="not a CMS SignedData"):
        verify_detached_signature(b64(data_only), BODY)
    # A certificate is valid DER too, just not CMS.
    with pytest.raises(SignatureMalformed):
        verify_detached_signature(b64(rsa_device.der), BODY)


def test_attached_signature_refused(rsa_device):
    der = openssl_sign(rsa_device, BODY, "-nodetach")
    with pytest.raises(SignatureMalformed, match="not detached"):
        verify_detached_signature(b64(der), BODY)


def test_header_too_long():
    with pytest.raises(SignatureMalformed, match="too long"):
        verify_detached_signature(b"A" * (200 * 1024), BODY)


# --- nothing but IdentityError, whatever arrives ---------------------------------------------

@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600))
def test_random_der_only_raises_identity_errors(blob):
    with pytest.raises(IdentityError):
        verify_detached_signature(base64.b64encode(blob), BODY)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200) | st.binary(max_size=200))
def test_random_headers_only_raise_identity_errors(header):
    with pytest.raises(IdentityError):
        verify_detached_signature(header, BODY)


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_mutated_real_signature_only_raises_identity_errors(mutation_vector, data):
    der = bytearray(mutation_vector)
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(0, len(der) - 1))
        der[at] = data.draw(st.integers(0, 255))
    try:
        verify_detached_signature(base64.b64encode(bytes(der)), BODY)
    except IdentityError:
        pass


@pytest.fixture(scope="module")
def mutation_vector(rsa_device):
    return openssl_sign(rsa_device, BODY, "-md", "sha1")


# --- signed attribute rules, each in an otherwise valid signature -------------------------------
# The vectors are re-signed with the device key (cryptography) over attribute DER built with
# asn1crypto, so that only the rule under test is broken.

class _AnySet(core.SetOf):
    _child_spec = core.Any


class _AnyAttribute(core.Sequence):
    # CMSAttribute with raw values, so that a value of the wrong ASN.1 type can be sent.
    _fields = [("type", cms.CMSAttributeType), ("values", _AnySet)]


def _attribute(type_: str, *value_ders: bytes) -> bytes:
    return _AnyAttribute({"type": type_, "values": [core.Any.load(d) for d in value_ders]}).dump()


def _set(*element_ders: bytes) -> bytes:
    return _AnySet([core.Any.load(d) for d in element_ders]).dump()


def resigned(device, attribute_ders: list[bytes]) -> bytes:
    """openssl's RSA signature with its signed attributes replaced by `attribute_ders`, signed again."""
    loaded = cms.ContentInfo.load(openssl_sign(device, BODY))
    signed_data, info = loaded["content"], loaded["content"]["signer_infos"][0]
    attrs = _set(*attribute_ders)
    signature = device.key.sign(attrs, padding.PKCS1v15(), hashes.SHA256())
    new_info = cms.SignerInfo({
        "version": info["version"], "sid": info["sid"], "digest_algorithm": info["digest_algorithm"],
        "signed_attrs": cms.CMSAttributes.load(attrs), "signature_algorithm": info["signature_algorithm"],
        "signature": signature,
    })
    return cms.ContentInfo({"content_type": "signed_data", "content": cms.SignedData({
        "version": signed_data["version"], "digest_algorithms": signed_data["digest_algorithms"],
        "encap_content_info": signed_data["encap_content_info"],
        "certificates": signed_data["certificates"], "signer_infos": [new_info],
    })}).dump()


DATA_OID = core.ObjectIdentifier("1.2.840.113549.1.7.1").dump()
DIGEST = core.OctetString(hashlib.sha256(BODY).digest()).dump()


def test_resigned_attributes_verify(rsa_device):
    # The helper itself: correct attributes, re-signed, verify (so the refusals below are the rule's).
    der = resigned(rsa_device, [_attribute("content_type", DATA_OID), _attribute("message_digest", DIGEST)])
    assert verify_detached_signature(b64(der), BODY) == rsa_device.cert


@pytest.mark.parametrize(("attributes", "error", "reason"), [
    ([("message_digest", DIGEST)], SignatureMalformed, "exactly one content-type"),
    ([("content_type", DATA_OID), ("content_type", DATA_OID), ("message_digest", DIGEST)],
     SignatureMalformed, "exactly one content-type"),
    ([("content_type", DATA_OID, DATA_OID), ("message_digest", DIGEST)], SignatureMalformed, "exactly one content-type"),
    ([("content_type", core.ObjectIdentifier("1.2.840.113549.1.7.2").dump()), ("message_digest", DIGEST)],
     SignatureMalformed, "not id-data"),
    ([("content_type", DATA_OID)], SignatureMalformed, "exactly one message-digest"),
    ([("content_type", DATA_OID), ("message_digest", DIGEST), ("message_digest", DIGEST)],
     SignatureMalformed, "exactly one message-digest"),
    ([("content_type", DATA_OID), ("message_digest", DIGEST, DIGEST)], SignatureMalformed, "exactly one message-digest"),
    ([("content_type", DATA_OID), ("message_digest", core.OctetString(hashlib.sha1(BODY).digest()).dump())],
     SignatureInvalid, "does not match"),
    # Values of the wrong ASN.1 type: unreadable, not a crash and not a mismatch.
    ([("content_type", core.OctetString(b"data").dump()), ("message_digest", DIGEST)],
     SignatureMalformed, "not a valid DER"),
    ([("content_type", DATA_OID), ("message_digest", core.Integer(12345).dump())], SignatureMalformed, "not a valid DER"),
])
def test_signed_attribute_rules(rsa_device, attributes, error, reason):
    der = resigned(rsa_device, [_attribute(type_, *values) for type_, *values in attributes])
    with pytest.raises(error, match=reason):
        verify_detached_signature(b64(der), BODY)


def test_pss_parameters_read_from_each_signature(rsa_device):
    # Three salt lengths in turn (20 is the default, so its parameters omit it), then a signature
    # whose parameters claim a salt length it was not made with.
    made = {salt: openssl_sign(rsa_device, BODY, "-keyopt", "rsa_padding_mode:pss", "-keyopt", f"rsa_pss_saltlen:{salt}")
            for salt in (20, 32, 48)}
    for salt in (32, 20, 48, 32):
        assert verify_detached_signature(b64(made[salt]), BODY) == rsa_device.cert
    params = {salt: signer_info(der)["signature_algorithm"]["parameters"] for salt, der in made.items()}
    assert params[48]["salt_length"].native == 48
    claims_48 = made[32].replace(params[32].dump(), params[48].dump())  # same length: one byte differs
    assert claims_48 != made[32]
    with pytest.raises(SignatureInvalid, match="does not verify"):
        verify_detached_signature(b64(claims_48), BODY)
