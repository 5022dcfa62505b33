"""Certificate binding (NanoMDM's "certauth" idea): a trusted certificate is not enough, it must be the one
bound to the device it speaks for.

- Authenticate binds SHA-256(certificate DER) to the device. A certificate already bound to another device
  is refused; a new certificate (re-enrollment, identity renewal) replaces the old binding, and the device
  keeps its bootstrap token, queue and results.
- Every other request, on the device channel or a user channel, must come with the bound certificate.
Runs inside the request's write transaction, before any change: a refusal raises and nothing is written.
"""

from __future__ import annotations

import functools
import hashlib
import sqlite3
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from appliance.logs import get_logger
from appliance.protocol.enrollment import Enrollment
from appliance.store import bindings
from appliance.store.timefmt import to_text

log = get_logger("certauth")


class CertificateNotBound(Exception):
    """403: the certificate may not speak for this enrollment; `.reason` is short and safe to send."""

    status = 403

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True, slots=True)
class Presented:
    """The certificate a request came with, reduced to what binding needs (computed outside the db thread)."""

    sha256: str
    subject: str
    not_after: str

    @classmethod
    def of(cls, certificate: x509.Certificate) -> Presented:
        return _presented(certificate)


@functools.lru_cache(maxsize=2048)
def _presented(certificate: x509.Certificate) -> Presented:
    # A device sends the same certificate with every request: hash and format it once (certificates
    # hash and compare by their DER, so equal certificates share the entry).
    return Presented(
        hashlib.sha256(certificate.public_bytes(Encoding.DER)).hexdigest(),
        certificate.subject.rfc4514_string(),
        to_text(certificate.not_valid_after_utc),
    )


def bind_at_authenticate(conn: sqlite3.Connection, enrollment: Enrollment, cert: Presented) -> bool:
    """Check, then (re)bind after the device row exists; returns True when the binding changed."""
    device = enrollment.device_id
    other = bindings.other_device(conn, cert.sha256, device)
    if other is not None:
        raise CertificateNotBound(
            "certificate is bound to another device",
            f"certificate {cert.sha256} is bound to {other}, used to Authenticate as {device}",
        )
    return bindings.bound_fingerprint(conn, device) != cert.sha256


def record_binding(conn: sqlite3.Connection, enrollment: Enrollment, cert: Presented) -> None:
    previous = bindings.bound_fingerprint(conn, enrollment.device_id)
    bindings.bind(conn, enrollment.device_id, cert.sha256, cert.subject, cert.not_after)
    log.info("certificate_bound", device_id=enrollment.device_id, sha256=cert.sha256, previous=previous)


def require_bound(conn: sqlite3.Connection, enrollment: Enrollment, cert: Presented) -> None:
    bound = bindings.bound_fingerprint(conn, enrollment.device_id)
    if bound == cert.sha256:
        return
    if bound is None:
        raise CertificateNotBound(
            "device is not enrolled: no certificate is bound to it (Authenticate first)",
            f"no binding for device {enrollment.device_id} (enrollment {enrollment.id}); presented {cert.sha256}",
        )
    raise CertificateNotBound(
        "certificate is not the one bound to this device",
        f"enrollment {enrollment.id} is bound to {bound}; presented {cert.sha256}",
    )
