"""Test PKI and Mdm-Signature vectors made by independent means (cryptography builders, openssl CLI).

Never uses appliance code: these are what a device (or a proxy) would send us.
"""

from __future__ import annotations

import datetime as dt
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.serialization import pkcs7
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

NOW = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)


@dataclass
class Identity:
    key: object
    cert: x509.Certificate

    @property
    def der(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.DER)

    @property
    def pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    @property
    def key_pem(self) -> bytes:
        return self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )


def new_key(kind: str = "rsa"):
    if kind == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    if kind == "ec":
        return ec.generate_private_key(ec.SECP256R1())
    if kind == "ec384":
        return ec.generate_private_key(ec.SECP384R1())
    raise ValueError(kind)


def make_ca(name: str, kind: str = "rsa") -> Identity:
    key = new_key(kind)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - dt.timedelta(days=1))
        .not_valid_after(NOW + dt.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return Identity(key, cert)


def issue(
    ca: Identity,
    name: str,
    kind: str = "rsa",
    *,
    not_before: dt.datetime | None = None,
    not_after: dt.datetime | None = None,
    ski: bool = True,
    key=None,
) -> Identity:
    """A device identity certificate the way a SCEP CA issues one: no SubjectAltName."""
    key = key or new_key(kind)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before or NOW - dt.timedelta(hours=1))
        .not_valid_after(not_after or NOW + dt.timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
    )
    if ski:
        builder = builder.add_extension(
            x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
        )
    return Identity(key, builder.sign(ca.key, hashes.SHA256()))


def openssl_sign(identity: Identity, body: bytes, *options: str, extra_certs: list[Identity] = ()) -> bytes:
    """DER CMS SignedData, detached, made by `openssl cms -sign -binary` with the given options."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "body").write_bytes(body)
        (folder / "cert.pem").write_bytes(identity.pem)
        (folder / "key.pem").write_bytes(identity.key_pem)
        command = [
            "openssl", "cms", "-sign", "-binary",
            "-in", str(folder / "body"),
            "-signer", str(folder / "cert.pem"),
            "-inkey", str(folder / "key.pem"),
            "-outform", "DER", "-out", str(folder / "sig.der"),
            *options,
        ]
        if extra_certs:
            (folder / "extra.pem").write_bytes(b"".join(i.pem for i in extra_certs))
            command += ["-certfile", str(folder / "extra.pem")]
        subprocess.run(command, check=True, capture_output=True)
        return (folder / "sig.der").read_bytes()


def builder_sign(identity: Identity, body: bytes, hash_algorithm=None, *, pss: bool = False) -> bytes:
    """DER PKCS#7 SignedData, detached, made by cryptography's PKCS7SignatureBuilder."""
    kwargs = {}
    if pss:
        kwargs["rsa_padding"] = padding.PSS(
            mgf=padding.MGF1(hash_algorithm or hashes.SHA256()),
            salt_length=padding.PSS.DIGEST_LENGTH,
        )
    return (
        pkcs7.PKCS7SignatureBuilder()
        .set_data(body)
        .add_signer(identity.cert, identity.key, hash_algorithm or hashes.SHA256(), **kwargs)
        .sign(
            serialization.Encoding.DER,
            [pkcs7.PKCS7Options.DetachedSignature, pkcs7.PKCS7Options.Binary],
        )
    )
