"""Loading certificates that arrive from devices or proxies, strictly.

cryptography still loads a few RFC 5280 violations (a serial number that is not positive) with a
deprecation warning that a future release turns into an error. We refuse them now, so the answer
does not change with an upgrade (and so a warnings filter can never turn one into a 500).
"""

from __future__ import annotations

import functools
import warnings
from datetime import datetime

from cryptography import x509
from cryptography.utils import CryptographyDeprecationWarning


def load_der(der: bytes) -> x509.Certificate:
    """The certificate in `der`, or ValueError if cryptography cannot or should not load it.

    A device sends the same certificate with every request (in its Mdm-Signature or on its TLS
    connection): loading and decoding it is done once per distinct DER (certificates are immutable;
    failures are not cached)."""
    return _load_der_once(bytes(der))


@functools.lru_cache(maxsize=4096)
def _load_der_once(der: bytes) -> x509.Certificate:
    return _strict(x509.load_der_x509_certificate, der)


def load_pem(pem: bytes) -> x509.Certificate:
    """The first certificate in `pem`, or ValueError (as load_der)."""
    return _strict(x509.load_pem_x509_certificate, pem)


def _strict(loader, data: bytes) -> x509.Certificate:
    with warnings.catch_warnings():
        warnings.simplefilter("error", CryptographyDeprecationWarning)
        try:
            certificate = loader(data)
            decode_all(certificate)
        except ValueError:
            raise
        except Exception as exc:  # InvalidVersion, TypeError on odd names, the deprecation warning...
            raise ValueError(f"not a valid certificate: {exc!r}") from None
    return certificate


def decode_all(certificate: x509.Certificate) -> None:
    """Decode the fields cryptography decodes lazily, so that a failure happens here and not in
    whatever code reads them later (binding, logging)."""
    certificate.serial_number  # the deprecation warning is raised on first read
    certificate.issuer, certificate.subject
    certificate.not_valid_before_utc, certificate.not_valid_after_utc
    list(certificate.extensions)


def is_ca(certificate: x509.Certificate, *, if_unsaid: bool) -> bool:
    """The BasicConstraints cA flag; `if_unsaid` when there is no such extension (old v1 roots carry
    no extensions at all, and neither do some device certificates)."""
    try:
        return certificate.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        return if_unsaid


def load_ca_certificates(data: bytes) -> list[x509.Certificate]:
    """Every certificate in a PEM bundle (or the one in a DER file), each one a CA that may
    issue device identities; ValueError saying what is wrong otherwise."""
    try:
        if b"-----BEGIN" in data:
            certificates = x509.load_pem_x509_certificates(data)
        else:
            certificates = [x509.load_der_x509_certificate(data)]
    except ValueError:
        raise ValueError("holds no readable certificate (expected PEM or DER)") from None
    for certificate in certificates:
        if not is_ca(certificate, if_unsaid=True):
            raise ValueError(f"{certificate.subject.rfc4514_string()} is not a CA certificate")
    return certificates


def describe(der: bytes) -> tuple[str, str, datetime] | None:
    """(subject, issuer, not_after) of a certificate a device reported having (CertificateList), or None
    when it cannot be read. Not cached: these are not identities, and must not crowd them out of it."""
    try:
        certificate = _strict(x509.load_der_x509_certificate, bytes(der))
    except ValueError:
        return None
    return certificate.subject.rfc4514_string(), certificate.issuer.rfc4514_string(), certificate.not_valid_after_utc
