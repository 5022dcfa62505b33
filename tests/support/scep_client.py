"""An independent SCEP client for tests: what a device (or micromdm's scepclient) does.

It shares no code with appliance.identity.scep on purpose. The envelope is made by the
`openssl cms -encrypt` CLI, the signature with cryptography primitives over signed
attributes assembled with asn1crypto, and the CertRep is read back with asn1crypto,
its signature checked with cryptography and its envelope opened by `openssl cms -decrypt`.
Everything is synchronous and touches no network: the test sends the bytes itself.
"""

from __future__ import annotations

import base64
import datetime as dt
import os
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from asn1crypto import cms, core
from asn1crypto import x509 as a_x509
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import AttributeOID, NameOID

CIPHERS = {"aes128": "-aes128", "aes256": "-aes256", "des3": "-des3", "des": "-des"}
DIGESTS = {"sha1": hashes.SHA1, "sha256": hashes.SHA256, "sha512": hashes.SHA512}

_SCEP = "2.16.840.1.113733.1.9."
MESSAGE_TYPE, PKI_STATUS, FAIL_INFO = _SCEP + "2", _SCEP + "3", _SCEP + "4"
SENDER_NONCE, RECIPIENT_NONCE, TRANSACTION_ID = _SCEP + "5", _SCEP + "6", _SCEP + "7"


def _openssl(*args: str, data: bytes) -> bytes:
    # DES lives in OpenSSL 3's legacy provider; loading it is harmless for the other ciphers.
    command = ["openssl", args[0], "-provider", "legacy", "-provider", "default", *args[1:]]
    done = subprocess.run(command,
                          input=data, capture_output=True, timeout=30)
    if done.returncode != 0:
        raise RuntimeError(f"openssl {args[0:2]} failed: {done.stderr.decode(errors='replace')}")
    return done.stdout


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


@dataclass
class Requester:
    """A device's new key, the self-signed certificate it signs with, and its CSR."""

    common_name: str = "test-device"
    challenge: str | None = None
    key: rsa.RSAPrivateKey = field(default_factory=lambda: rsa.generate_private_key(65537, 2048))
    extra_csr_bytes: int = 0  # pads the CSR (a long OU) to make big requests
    extra_subject_bytes: int = 0  # pads the subject, which the issued certificate repeats (a big record)

    def __post_init__(self) -> None:
        name_attrs = [x509.NameAttribute(NameOID.COMMON_NAME, self.common_name),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Test Org")]
        name_attrs += [x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, f"unit {i:04d} " + "x" * 50)
                       for i in range(self.extra_subject_bytes // 60)]
        subject = x509.Name(name_attrs)
        now = dt.datetime.now(dt.timezone.utc)
        self.self_signed = (
            x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
            .sign(self.key, hashes.SHA256())
        )
        builder = x509.CertificateSigningRequestBuilder().subject_name(subject)
        if self.challenge is not None:
            builder = builder.add_attribute(AttributeOID.CHALLENGE_PASSWORD, self.challenge.encode())
        if self.extra_csr_bytes:
            # Many SAN entries: a request several KB large, as some clients send.
            names = [x509.DNSName(f"host{i:05d}.example.test") for i in range(self.extra_csr_bytes // 24)]
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        self.csr = builder.sign(self.key, hashes.SHA256())
        self.csr_der = self.csr.public_bytes(serialization.Encoding.DER)


@dataclass
class Request:
    der: bytes
    transaction_id: str
    sender_nonce: bytes
    signer_cert: x509.Certificate
    signer_key: rsa.RSAPrivateKey

    def get_query(self) -> str:
        """The GET form: base64 with '+', '/' and '=' percent-encoded."""
        from urllib.parse import quote

        return "operation=PKIOperation&message=" + quote(base64.b64encode(self.der).decode(), safe="")


def envelope(content: bytes, ca_cert: x509.Certificate, cipher: str) -> bytes:
    """EnvelopedData for the CA, made by the openssl CLI."""
    with tempfile.TemporaryDirectory() as tmp:
        recip = Path(tmp) / "ca.pem"
        recip.write_bytes(_pem(ca_cert))
        return _openssl("cms", "-encrypt", "-binary", "-outform", "DER", CIPHERS[cipher], str(recip),
                        data=content)


def _attr(oid: str, value: core.Asn1Value) -> cms.CMSAttribute:
    return cms.CMSAttribute({"type": oid, "values": [value]})


def sign_pki_message(content: bytes, *, message_type: int, transaction_id: str, sender_nonce: bytes,
                     cert: x509.Certificate, key: rsa.RSAPrivateKey, digest: str = "sha256",
                     tamper: bool = False) -> bytes:
    """SignedData over `content` with the SCEP attributes (RFC 8894 3.2)."""
    h = hashes.Hash(DIGESTS[digest]())
    h.update(content)
    signed_attrs = cms.CMSAttributes([
        cms.CMSAttribute({"type": "content_type", "values": ["data"]}),
        cms.CMSAttribute({"type": "message_digest", "values": [h.finalize()]}),
        _attr(MESSAGE_TYPE, core.PrintableString(str(message_type))),
        _attr(TRANSACTION_ID, core.PrintableString(transaction_id)),
        _attr(SENDER_NONCE, core.OctetString(sender_nonce)),
    ])
    signature = key.sign(signed_attrs.dump(), padding.PKCS1v15(), DIGESTS[digest]())
    if tamper:
        signature = bytes([signature[0] ^ 1]) + signature[1:]
    acert = a_x509.Certificate.load(cert.public_bytes(serialization.Encoding.DER))
    signer = cms.SignerInfo({
        "version": "v1",
        "sid": cms.SignerIdentifier(name="issuer_and_serial_number",
                                    value={"issuer": acert.issuer, "serial_number": acert.serial_number}),
        "digest_algorithm": {"algorithm": digest},
        "signed_attrs": signed_attrs,
        # Plain rsaEncryption, as Go's pkcs7 and many devices write it.
        "signature_algorithm": {"algorithm": "rsassa_pkcs1v15"},
        "signature": signature,
    })
    signed = cms.SignedData({
        "version": "v1",
        "digest_algorithms": [{"algorithm": digest}],
        "encap_content_info": {"content_type": "data", "content": content},
        "certificates": [acert],
        "signer_infos": [signer],
    })
    return cms.ContentInfo({"content_type": "signed_data", "content": signed}).dump()


def pkcs_req(requester: Requester, ca_cert: x509.Certificate, *, cipher: str = "aes128",
             digest: str = "sha256", transaction_id: str | None = None, message_type: int = 19,
             signer: tuple[x509.Certificate, rsa.RSAPrivateKey] | None = None,
             tamper: bool = False) -> Request:
    """A PKCSReq (19) or RenewalReq (17) for the requester's CSR."""
    cert, key = signer or (requester.self_signed, requester.key)
    tid = transaction_id or base64.b16encode(os.urandom(16)).decode()
    nonce = os.urandom(16)
    der = sign_pki_message(envelope(requester.csr_der, ca_cert, cipher), message_type=message_type,
                           transaction_id=tid, sender_nonce=nonce, cert=cert, key=key,
                           digest=digest, tamper=tamper)
    return Request(der=der, transaction_id=tid, sender_nonce=nonce, signer_cert=cert, signer_key=key)


@dataclass
class CertRep:
    status: int
    fail_info: int | None
    transaction_id: str
    recipient_nonce: bytes
    sender_nonce: bytes
    certificates: list[x509.Certificate]
    content_cipher: str | None  # asn1crypto name of the envelope's cipher
    digest: str


def _attr_value(attrs: dict, oid: str):
    value = attrs[oid]["values"][0]
    return core.load(value.dump()).native


def read_cert_rep(der: bytes, ca_cert: x509.Certificate, request: Request) -> CertRep:
    """Check a CertRep the way a careful client does, and return what it says."""
    info = cms.ContentInfo.load(der)
    assert info["content_type"].native == "signed_data"
    signed = info["content"]
    (signer,) = list(signed["signer_infos"])
    sid = signer["sid"].chosen
    ca_a = a_x509.Certificate.load(ca_cert.public_bytes(serialization.Encoding.DER))
    assert sid["serial_number"].native == ca_a.serial_number, "CertRep not signed by the CA"
    assert sid["issuer"].dump() == ca_a.issuer.dump()
    raw_attrs = signer["signed_attrs"]
    digest = signer["digest_algorithm"]["algorithm"].native
    # RFC 5652 5.4: the signature covers the attributes as a SET.
    ca_cert.public_key().verify(signer["signature"].native, b"\x31" + raw_attrs.dump()[1:],
                                padding.PKCS1v15(), DIGESTS[digest]())
    attrs = {a["type"].dotted: a for a in raw_attrs}
    content = signed["encap_content_info"]["content"].native
    h = hashes.Hash(DIGESTS[digest]())
    h.update(content or b"")
    assert attrs["1.2.840.113549.1.9.4"]["values"][0].native == h.finalize(), "messageDigest"
    assert _attr_value(attrs, MESSAGE_TYPE) == "3"
    status = int(_attr_value(attrs, PKI_STATUS))
    fail = int(_attr_value(attrs, FAIL_INFO)) if FAIL_INFO in attrs else None
    certs: list[x509.Certificate] = []
    cipher = None
    if status == 0:
        env = cms.ContentInfo.load(content)["content"]
        cipher = env["encrypted_content_info"]["content_encryption_algorithm"]["algorithm"].native
        degenerate = _decrypt(content, request)
        p7 = cms.ContentInfo.load(degenerate)["content"]
        certs = [x509.load_der_x509_certificate(c.chosen.dump()) for c in p7["certificates"]]
        _openssl_verify(der, ca_cert)
    return CertRep(status=status, fail_info=fail, transaction_id=_attr_value(attrs, TRANSACTION_ID),
                   recipient_nonce=_attr_value(attrs, RECIPIENT_NONCE),
                   sender_nonce=_attr_value(attrs, SENDER_NONCE), certificates=certs,
                   content_cipher=cipher, digest=digest)


def _decrypt(envelope_der: bytes, request: Request) -> bytes:
    with tempfile.TemporaryDirectory() as tmp:
        cert, key = Path(tmp) / "c.pem", Path(tmp) / "k.pem"
        cert.write_bytes(_pem(request.signer_cert))
        key.write_bytes(request.signer_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
        return _openssl("cms", "-decrypt", "-binary", "-inform", "DER", "-recip", str(cert),
                        "-inkey", str(key), data=envelope_der)


def _openssl_verify(cert_rep_der: bytes, ca_cert: x509.Certificate) -> None:
    """OpenSSL re-encodes the signed attributes: this catches non-DER SET ordering."""
    with tempfile.TemporaryDirectory() as tmp:
        ca = Path(tmp) / "ca.pem"
        ca.write_bytes(_pem(ca_cert))
        _openssl("cms", "-verify", "-binary", "-inform", "DER", "-CAfile", str(ca),
                 "-purpose", "any", "-out", os.devnull, data=cert_rep_der)
