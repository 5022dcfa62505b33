"""The MDM push certificate: load, validate, describe; make the key + CSR for a renewal.

Sans-I/O: bytes in, objects out. The push certificate is the client identity towards APNs and
its subject UID is the topic every enrolled device listens on, so a wrong one is refused here,
before it can be stored.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import NameOID

from appliance import clock
from appliance.store.timefmt import to_text

TOPIC_PREFIX = "com.apple.mgmt."
WARN_DAYS = 30


class PushCertError(ValueError):
    """A push certificate that must not be used; the message says why in one line."""


@dataclass(frozen=True)
class PushCertificate:
    certificate: x509.Certificate
    key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
    chain: tuple[x509.Certificate, ...] = ()

    @property
    def topic(self) -> str:
        return topic_of(self.certificate)

    @property
    def not_after(self) -> dt.datetime:
        return self.certificate.not_valid_after_utc

    @property
    def not_before(self) -> dt.datetime:
        return self.certificate.not_valid_before_utc

    def days_left(self, now: dt.datetime | None = None) -> int:
        """Whole days until expiry; negative once expired."""
        now = now or clock.now()
        return int((self.not_after - now).total_seconds() // 86400)

    def expired(self, now: dt.datetime | None = None) -> bool:
        now = now or clock.now()
        return now >= self.not_after

    @property
    def cert_pem(self) -> bytes:
        pem = self.certificate.public_bytes(serialization.Encoding.PEM)
        return pem + b"".join(c.public_bytes(serialization.Encoding.PEM) for c in self.chain)

    @property
    def key_pem(self) -> bytes:
        return self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    @property
    def fingerprint(self) -> str:
        return self.certificate.fingerprint(hashes.SHA256()).hex()


def topic_of(certificate: x509.Certificate) -> str:
    """The subject UID (OID 0.9.2342.19200300.100.1.1): Apple puts the MDM push topic there."""
    values = certificate.subject.get_attributes_for_oid(NameOID.USER_ID)
    if not values:
        raise PushCertError("certificate has no subject UID: not an MDM push certificate")
    value = values[0].value
    return value if isinstance(value, str) else value.decode("utf-8", "replace")


def _public_der(key) -> bytes:
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _pick(certs: list[x509.Certificate], key) -> PushCertificate:
    """The certificate matching the key is the push certificate; the rest is its chain."""
    if not certs:
        raise PushCertError("no certificate found")
    if not isinstance(key, (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey)):
        raise PushCertError("unsupported private key type (need RSA or EC)")
    wanted = _public_der(key.public_key())
    for cert in certs:
        if _public_der(cert.public_key()) == wanted:
            chain = tuple(c for c in certs if c is not cert)
            return PushCertificate(cert, key, chain)
    raise PushCertError("private key does not match the certificate")


def _password(password: str | bytes | None) -> bytes | None:
    if password is None or password == "":
        return None
    return password.encode() if isinstance(password, str) else password


def _load_key(pem: bytes, password: str | bytes | None):
    try:
        return serialization.load_pem_private_key(pem, _password(password))
    except TypeError as e:
        # cryptography raises TypeError for "encrypted but no password" and the reverse
        raise PushCertError(f"private key: {e}") from None
    except ValueError:
        raise PushCertError("private key: not a readable PEM key (wrong password?)") from None


def load_pem(
    cert_pem: bytes, key_pem: bytes | None = None, password: str | bytes | None = None
) -> PushCertificate:
    """PEM certificate(s) + PEM key; with key_pem None, both are expected in cert_pem (one body)."""
    body = cert_pem if key_pem is None else key_pem
    if b"-----BEGIN" not in cert_pem:
        raise PushCertError("certificate: not PEM")
    try:
        certs = x509.load_pem_x509_certificates(cert_pem)
    except ValueError:
        raise PushCertError("certificate: no readable PEM certificate") from None
    if b"PRIVATE KEY-----" not in body:
        raise PushCertError("private key: no PEM private key found")
    key_block = _first_key_block(body)
    return _pick(certs, _load_key(key_block, password))


def _first_key_block(body: bytes) -> bytes:
    """The first PEM private-key block (cert and key may share one body)."""
    start = body.find(b"-----BEGIN ")
    while start != -1:
        line_end = body.find(b"-----", start + 11)
        label = body[start + 11 : line_end]
        if label.endswith(b"PRIVATE KEY"):
            end_marker = b"-----END " + label + b"-----"
            end = body.find(end_marker, line_end)
            if end == -1:
                break
            return body[start : end + len(end_marker)]
        start = body.find(b"-----BEGIN ", line_end)
    raise PushCertError("private key: no complete PEM private key block")


def load_pkcs12(data: bytes, password: str | bytes | None) -> PushCertificate:
    try:
        key, cert, extra = pkcs12.load_key_and_certificates(data, _password(password))
    except ValueError:
        raise PushCertError("PKCS#12: cannot open (wrong password or not a .p12)") from None
    if cert is None or key is None:
        raise PushCertError("PKCS#12: needs both a certificate and its private key")
    return _pick([cert, *extra], key)


def load_any(
    cert_data: bytes, key_data: bytes | None = None, password: str | bytes | None = None
) -> PushCertificate:
    """What an operator hands us: a .p12, a PEM pair, or one PEM body holding both."""
    if b"-----BEGIN" not in cert_data:
        if key_data is not None:
            raise PushCertError("certificate: not PEM (a .p12 takes no separate key file)")
        return load_pkcs12(cert_data, password)
    return load_pem(cert_data, key_data, password)


def validate(push_cert: PushCertificate, now: dt.datetime | None = None) -> PushCertificate:
    """Refuse what cannot work as an MDM push certificate; returns it unchanged otherwise."""
    now = now or clock.now()
    topic = push_cert.topic
    if not topic.startswith(TOPIC_PREFIX) or len(topic) == len(TOPIC_PREFIX):
        raise PushCertError(f"topic {topic!r} does not start with {TOPIC_PREFIX!r}: not an MDM push certificate")
    if push_cert.expired(now):
        raise PushCertError(f"certificate expired on {push_cert.not_after.isoformat()}")
    if now < push_cert.not_before:
        raise PushCertError(f"certificate not valid before {push_cert.not_before.isoformat()}")
    return push_cert


def expiry_state(push_cert: PushCertificate, now: dt.datetime | None = None) -> str:
    """"ok", "warning" (within WARN_DAYS) or "expired"."""
    if push_cert.expired(now):
        return "expired"
    return "warning" if push_cert.days_left(now) < WARN_DAYS else "ok"


def describe(push_cert: PushCertificate, imported_at: str | None = None) -> dict:
    """What GET /v1/pushcert and `push-cert show` say about a certificate."""
    return {"topic": push_cert.topic, "not_after": to_text(push_cert.not_after),
            "days_left": push_cert.days_left(), "state": expiry_state(push_cert),
            "sha256": push_cert.fingerprint, "imported_at": imported_at}


def topic_change_message(old: str, new: str) -> str:
    return (
        f"refusing to replace push certificate topic {old} with {new}: every enrolled device "
        "listens on the old topic and would be orphaned (re-enrollment needed). Renew the "
        "existing certificate with the same Apple ID instead; use --force (API: ?force=1) only "
        "if you really mean to start over"
    )


def make_csr(
    common_name: str, *, email: str | None = None, organization: str | None = None,
    country: str | None = None
) -> tuple[bytes, bytes]:
    """A new RSA-2048 key (PEM, unencrypted: kept 0600 in data_dir) and a CSR (PEM) for it.

    The CSR goes to an MDM vendor signing service, which signs it for Apple's push
    certificates portal; the certificate Apple returns is then imported with this key.
    """
    if not common_name.strip():
        raise PushCertError("CSR needs a non-empty common name")
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    if organization:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization))
    if country:
        if len(country) != 2:
            raise PushCertError("country must be a two-letter code")
        attrs.append(x509.NameAttribute(NameOID.COUNTRY_NAME, country.upper()))
    if email:
        attrs.append(x509.NameAttribute(NameOID.EMAIL_ADDRESS, email))
    csr = x509.CertificateSigningRequestBuilder().subject_name(x509.Name(attrs)).sign(
        key, hashes.SHA256()
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return key_pem, csr.public_bytes(serialization.Encoding.PEM)
