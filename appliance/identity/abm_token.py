"""The key pair of an MDM server entry in Apple Business Manager, and the server token ABM encrypts to it.

ABM's side: the organization adds an MDM server, uploads a certificate (the public half of a key pair we
made and keep), and downloads a server token file (server_token_*.p7m): an S/MIME message holding a CMS
EnvelopedData encrypted to that certificate, whose content is the OAuth credentials as JSON. Sans-I/O:
bytes in, a ServerToken out, or a TokenError whose message says in one line what to do.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import re
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from appliance import clock
from appliance.identity import envelope
from appliance.protocol.dep import DepAnswerError, ServerToken, parse_server_token

MAX_TOKEN_FILE = 256 * 1024  # a real one is about 4 KiB
CERTIFICATE_DAYS = 3650  # ABM only reads the public key; the token's own expiry is what counts


class TokenError(ValueError):
    """The file cannot be used as this server's token; the message says why, in one line."""


@dataclass(frozen=True)
class KeyPair:
    certificate_pem: bytes
    private_key_pem: bytes

    @property
    def certificate(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate(self.certificate_pem)

    @property
    def private_key(self) -> rsa.RSAPrivateKey:
        key = serialization.load_pem_private_key(self.private_key_pem, password=None)
        assert isinstance(key, rsa.RSAPrivateKey)
        return key


def make_keypair(name: str, organization: str) -> KeyPair:
    """An RSA-2048 key and a self-signed certificate naming the server, to upload in ABM."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    now = clock.now()
    subject = x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization or "mdm-appliance"),
        x509.NameAttribute(NameOID.COMMON_NAME, f"mdm-appliance ABM server {name}"[:64]),
    ])
    certificate = (
        x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=10)).not_valid_after(now + dt.timedelta(days=CERTIFICATE_DAYS))
        .add_extension(x509.KeyUsage(True, False, True, False, False, False, False, False, False), critical=True)
        .sign(key, hashes.SHA256())
    )
    return KeyPair(
        certificate.public_bytes(serialization.Encoding.PEM),
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                          serialization.NoEncryption()),
    )


def decrypt_server_token(data: bytes, keypair: KeyPair, now: dt.datetime | None = None) -> ServerToken:
    """The token in a server token file (S/MIME as ABM serves it, PEM or DER), checked to be unexpired."""
    if len(data) > MAX_TOKEN_FILE:
        raise TokenError(f"{len(data)} bytes is far too large for a server token file")
    if not data.strip():
        raise TokenError("empty file: expected the server_token_*.p7m file downloaded from Apple Business Manager")
    try:
        enveloped = envelope.load_enveloped_data(_der(data))
    except envelope.EnvelopeError as exc:
        raise TokenError(f"not a server token file: {exc.reason}") from None
    certificate = keypair.certificate
    if not envelope.addressed_to(enveloped, certificate):
        raise TokenError("this token was encrypted to another certificate: upload this server's certificate "
                         "(mdm-appliance abm keypair NAME) in Apple Business Manager and download a new token")
    try:
        content = envelope.open_enveloped_data(enveloped, certificate, keypair.private_key)
    except envelope.EnvelopeError as exc:
        raise TokenError(f"the token does not decrypt with this server's key ({exc.reason})") from None
    try:
        token = parse_server_token(content)
    except DepAnswerError as exc:
        raise TokenError(f"decrypted, but not a server token: {exc}") from None
    now = now or clock.now()
    if token.expires_at is not None and token.expires_at <= now:
        raise TokenError(f"the token expired on {token.expires_at:%Y-%m-%d}: download a new one from Apple "
                         "Business Manager (Preferences, your MDM server, Download Token)")
    return token


_PEM = re.compile(rb"-----BEGIN [A-Z0-9 ]+-----(.*?)-----END [A-Z0-9 ]+-----", re.S)


def _der(data: bytes) -> bytes:
    """The DER inside an S/MIME message (headers, a blank line, base64), a PEM block, or DER as it is."""
    if data[:1] == b"\x30":
        return data
    match = _PEM.search(data)
    if match:
        text = match.group(1)
    else:
        head, sep, body = data.replace(b"\r\n", b"\n").partition(b"\n\n")
        if not sep or b"pkcs7-mime" not in head.lower():
            raise TokenError("not a server token file (expected an S/MIME .p7m from Apple Business Manager)")
        text = body
    try:
        return base64.b64decode(b"".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        raise TokenError("not a server token file: its body is not base64") from None
