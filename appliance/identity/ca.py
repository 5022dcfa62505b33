"""The appliance CA: issues device identity certificates (through SCEP or PKCS#12) and, when the operator
configures no certificate of their own, the server's TLS certificate.

RSA, because SCEP clients encrypt their requests to the CA's key (RSA key transport).
"""

from __future__ import annotations

import ipaddress
import secrets
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from appliance import clock
from appliance.files import write_atomic

CA_KEY_FILE = "ca.key"
CA_CERT_FILE = "ca.crt"
CA_VALIDITY = timedelta(days=3650)
# Backdate a little so that devices with slightly slow clocks accept fresh certificates.
BACKDATE = timedelta(hours=1)


def _new_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _key_pem(key) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _key_usage(ca: bool) -> x509.KeyUsage:
    """Signing and key encipherment (SCEP envelopes are encrypted to these keys); certificate and
    CRL signing for the CA only."""
    return x509.KeyUsage(
        digital_signature=True, content_commitment=False, key_encipherment=True, data_encipherment=False,
        key_agreement=False, key_cert_sign=ca, crl_sign=ca, encipher_only=False, decipher_only=False,
    )


def random_serial() -> int:
    # 159 bits: positive, under the 20-octet limit of RFC 5280.
    return secrets.randbits(159) | 1


# Every enrolled device's identity chains to this CA: a new one would make the whole fleet re-enroll.
_CA_LOST = ("restore both files from a backup (mdm-appliance backup), or move ca.crt away to start a new CA, "
            "after which every enrolled device must enroll again")


@dataclass
class ApplianceCA:
    key: rsa.RSAPrivateKey
    certificate: x509.Certificate

    @property
    def certificate_der(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.DER)

    @property
    def certificate_pem(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    @classmethod
    def load_or_create(cls, data_dir: Path, organization: str = "mdm-appliance") -> ApplianceCA:
        """Reuse the CA in data_dir, or make one. The key is written first, then the certificate: a key
        without a certificate (killed midway) issued nothing yet, so it is simply replaced. A certificate
        without its key has issued device identities: never replace it silently (ValueError)."""
        key_path, cert_path = Path(data_dir) / CA_KEY_FILE, Path(data_dir) / CA_CERT_FILE
        if cert_path.exists():
            certificate = x509.load_pem_x509_certificate(cert_path.read_bytes())
            if not key_path.exists():
                raise ValueError(f"{CA_CERT_FILE} is there but {CA_KEY_FILE} is missing: {_CA_LOST}")
            key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
            if certificate.public_key().public_numbers() != key.public_key().public_numbers():
                raise ValueError(f"{CA_KEY_FILE} is not the key of {CA_CERT_FILE}: {_CA_LOST}")
            return cls(key, certificate)
        key = _new_key()
        name = x509.Name([
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization),
            x509.NameAttribute(NameOID.COMMON_NAME, f"{organization} appliance CA"),
        ])
        now = clock.now()
        ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
        certificate = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(random_serial())
            .not_valid_before(now - BACKDATE)
            .not_valid_after(now + CA_VALIDITY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(_key_usage(ca=True), critical=True)
            .add_extension(ski, critical=False)
            .sign(key, hashes.SHA256())
        )
        write_atomic(key_path, _key_pem(key), 0o600)
        write_atomic(cert_path, certificate.public_bytes(serialization.Encoding.PEM), 0o644)
        return cls(key, certificate)

    def _builder(self, public_key, subject: x509.Name, days: float, serial: int | None):
        now = clock.now()
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.certificate.subject)
            .public_key(public_key)
            .serial_number(serial or random_serial())
            .not_valid_before(now - BACKDATE)
            .not_valid_after(now + timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), critical=False
            )
        )

    def issue(
        self, public_key, subject: x509.Name, *, days: float = 365, client_auth: bool = True,
        serial: int | None = None,
    ) -> x509.Certificate:
        """A device identity: digitalSignature + keyEncipherment, clientAuth extended key usage."""
        builder = self._builder(public_key, subject, days, serial).add_extension(
            _key_usage(ca=False), critical=True
        )
        if client_auth:
            builder = builder.add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
            )
        return builder.sign(self.key, hashes.SHA256())

    def issue_server_certificate(self, hostnames: list[str], days: float = 825):
        """A TLS server certificate and its new key, for names (DNS or IP) devices and tools connect to."""
        key = _new_key()
        alt_names: list[x509.GeneralName] = []
        for name in dict.fromkeys(hostnames):
            try:
                alt_names.append(x509.IPAddress(ipaddress.ip_address(name)))
            except ValueError:
                alt_names.append(x509.DNSName(name))
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostnames[0])])
        # Apple platforms refuse TLS server certificates valid for more than 825 days.
        certificate = (
            self._builder(key.public_key(), subject, days, None)
            .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
            .add_extension(_key_usage(ca=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(self.key, hashes.SHA256())
        )
        return key, certificate


def key_pem(key) -> bytes:
    return _key_pem(key)
