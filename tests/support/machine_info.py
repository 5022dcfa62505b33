"""Machine info as a device in Setup Assistant sends it, signed by a test CA chain shaped like Apple's, built
with cryptography's builders (and openssl for SHA-1), never with the appliance's code.

Apple's shape: Apple Root CA -> Apple iPhone Certification Authority -> Apple iPhone Device CA -> the device's
identity certificate; the device signs the MachineInfo plist (CMS SignedData, content attached) and includes
its certificate and the intermediates.

    chain = DeviceChain(tmp_path)                       # chain.root_pem_path for [ade] device_ca_files
    body = chain.sign({"UDID": udid, "SERIAL": serial, "PRODUCT": "Mac14,2", "VERSION": "23E214"})
"""

from __future__ import annotations

import datetime as dt
import plistlib
import subprocess
import tempfile
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import pkcs7
from cryptography.x509.oid import NameOID


def _name(common_name: str, unit: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COUNTRY_NAME, "US"),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Test Apple Inc."),
                      x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, unit),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _certificate(subject: x509.Name, key, issuer_name: x509.Name, issuer_key, *, ca: bool,
                 not_before: dt.datetime, not_after: dt.datetime) -> x509.Certificate:
    builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer_name)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(not_before).not_valid_after(not_after)
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    return builder.sign(issuer_key, hashes.SHA256())


class DeviceChain:
    """A root, two intermediates and device identities, as Apple's. `expired_intermediate`: the device CA's
    validity ended years ago, as Apple's iPhone Device CA's did in 2014 (signatures still count)."""

    def __init__(self, directory: Path, *, expired_intermediate: bool = True, key_size: int = 2048) -> None:
        now = dt.datetime.now(dt.timezone.utc)
        self.directory = Path(directory)
        self.root_key = rsa.generate_private_key(65537, key_size)
        root_name = _name("Test Apple Root CA", "Test Apple Certification Authority")
        self.root = _certificate(root_name, self.root_key, root_name, self.root_key, ca=True,
                                 not_before=now - dt.timedelta(days=3650), not_after=now + dt.timedelta(days=3650))
        self.authority_key = rsa.generate_private_key(65537, key_size)
        authority_name = _name("Test iPhone Certification Authority", "Test Apple Certification Authority")
        self.authority = _certificate(authority_name, self.authority_key, root_name, self.root_key, ca=True,
                                      not_before=now - dt.timedelta(days=3650), not_after=now + dt.timedelta(days=365))
        self.device_ca_key = rsa.generate_private_key(65537, key_size)
        device_ca_name = _name("Test iPhone Device CA", "Test Apple iPhone")
        ends = now - dt.timedelta(days=3000) if expired_intermediate else now + dt.timedelta(days=365)
        self.device_ca = _certificate(device_ca_name, self.device_ca_key, authority_name, self.authority_key, ca=True,
                                      not_before=now - dt.timedelta(days=4000), not_after=ends)
        self.root_pem_path = self.directory / "test-apple-root.pem"
        self.root_pem_path.write_bytes(self.root.public_bytes(serialization.Encoding.PEM))

    def identity(self, udid: str) -> tuple[x509.Certificate, rsa.RSAPrivateKey]:
        """A device identity certificate (as the device CA issues them) and its key."""
        key = rsa.generate_private_key(65537, 2048)
        now = dt.datetime.now(dt.timezone.utc)
        certificate = _certificate(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, udid)]), key,
                                   self.device_ca.subject, self.device_ca_key, ca=False,
                                   not_before=now - dt.timedelta(days=30), not_after=now + dt.timedelta(days=3650))
        return certificate, key

    def sign(self, info: dict, *, identity: tuple | None = None, include_chain: bool = True,
             sha1: bool = False) -> bytes:
        """DER CMS SignedData with the plist attached, signed by the device identity (a new one by default)."""
        certificate, key = identity or self.identity(info.get("UDID", "UDID"))
        content = plistlib.dumps(info)
        if sha1:  # cryptography's builder cannot sign with SHA-1; Apple's older devices do
            return _openssl_sign(content, certificate, key, [self.device_ca, self.authority] if include_chain else [])
        builder = pkcs7.PKCS7SignatureBuilder().set_data(content).add_signer(certificate, key, hashes.SHA256())
        if include_chain:
            builder = builder.add_certificate(self.device_ca).add_certificate(self.authority)
        return builder.sign(serialization.Encoding.DER, [pkcs7.PKCS7Options.Binary])


def machine_info(udid: str, serial: str, **extra) -> dict:
    info = {"UDID": udid, "SERIAL": serial, "PRODUCT": "Mac14,2", "VERSION": "23E214", "LANGUAGE": "en-US"}
    info.update(extra)
    return info


def _openssl_sign(content: bytes, certificate, key, chain: list) -> bytes:
    with tempfile.TemporaryDirectory() as tmp:
        paths = {name: Path(tmp, name) for name in ("cert.pem", "key.pem", "chain.pem", "in.plist")}
        paths["cert.pem"].write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
        paths["key.pem"].write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                       serialization.NoEncryption()))
        paths["chain.pem"].write_bytes(b"".join(c.public_bytes(serialization.Encoding.PEM) for c in chain))
        paths["in.plist"].write_bytes(content)
        command = ["openssl", "cms", "-sign", "-binary", "-nodetach", "-md", "sha1", "-outform", "DER",
                   "-signer", str(paths["cert.pem"]), "-inkey", str(paths["key.pem"]), "-in", str(paths["in.plist"])]
        if chain:
            command += ["-certfile", str(paths["chain.pem"])]
        return subprocess.run(command, capture_output=True, timeout=30, check=True).stdout
