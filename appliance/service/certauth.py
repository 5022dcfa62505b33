"""Certificate binding (NanoMDM's "certauth"), the step around every device request's transaction core: a
trusted certificate is not enough, it must be the one bound to the device it speaks for.

- The bound certificate speaks for the device and all its user channels; any other is refused (403).
- Authenticate with a certificate that is nobody's binds it. If the device was bound to another one, this is
  a re-enrollment (a wiped device with a new identity, or someone else claiming its UDID: the server cannot
  tell which), so before the core runs the old enrollment's state goes: pending commands on every channel,
  bootstrap token, unlock token, push tokens. Results stay as history; it is logged and a webhook event is
  written; the old certificate is refused from then on. (NanoMDM clears the queue and bootstrap token at
  Authenticate too.)
- The one exception is a renewal proven by the bound identity: a certificate issued for a SCEP RenewalReq
  signed by it, or against a one-time challenge tied to it (note_successor, at issuing). The first request
  that comes with it, Authenticate or any other, moves the binding, and queue and bootstrap token stay.
- A certificate bound to, replaced on, or issued for one device never speaks for another, and a replaced
  one never comes back. One issued against an ADE challenge (tied to a serial number) Authenticates only
  with that serial number.
- Moving the binding ends the device's identity renewal (service/renewal.py): a proven renewal completes
  it, a re-enrollment forgets it; either way what is left of its attempts (a queued InstallProfile, unspent
  challenges tied to the old certificate) goes, so it can never issue a successor to a replaced one.
The step runs inside the request's write transaction: a refusal raises before anything is written.
"""

from __future__ import annotations

import functools
import hashlib
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from appliance.logs import get_logger
from appliance.protocol.enrollment import Enrollment
from appliance.protocol.messages import Authenticate
from appliance.store import abm, bindings, enrollments, outbox, queue
from appliance.store import renewal as renewals
from appliance.store import scep as scep_store
from appliance.store.timefmt import to_text
from appliance.webhook.events import reenrollment_event

log = get_logger("certauth")

T = TypeVar("T")

# How the binding changes with a request (None: it came with the bound certificate).
NEW, RENEWAL, REENROLLMENT = "new", "renewal", "reenrollment"
# How a successor was proven, as recorded in cert_successors.
RENEWAL_REQUEST, RENEWAL_CHALLENGE = "renewal_request", "renewal_challenge"


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
    not_before: str
    issuer: str

    @classmethod
    def of(cls, certificate: x509.Certificate) -> Presented:
        return _presented(certificate)


@functools.lru_cache(maxsize=2048)
def _presented(certificate: x509.Certificate) -> Presented:
    # A device sends the same certificate with every request: hash and format it once (certificates
    # hash and compare by their DER, so equal certificates share the entry).
    return Presented(fingerprint(certificate), certificate.subject.rfc4514_string(),
                     to_text(certificate.not_valid_after_utc), to_text(certificate.not_valid_before_utc),
                     certificate.issuer.rfc4514_string())


def fingerprint(certificate: x509.Certificate) -> str:
    return hashlib.sha256(certificate.public_bytes(Encoding.DER)).hexdigest()


@dataclass(frozen=True, slots=True)
class Admission:
    """The request's certificate may speak for device_id; `change` says how the binding moves to it."""

    device_id: str
    cert: Presented
    change: str | None
    previous: str | None  # the certificate bound before this request


def binding_step(core: Callable[..., T]) -> Callable[..., T]:
    """Wrap a transaction core `(conn, message, options)` as `(conn, message, certificate, options)`: admit the
    certificate first, clear the old enrollment's state at a re-enrollment, run the core, and record the
    binding after it (a new device's row exists only then). The core never sees a certificate."""

    @functools.wraps(core)
    def step(conn: sqlite3.Connection, message, cert: Presented, options) -> T:
        admission = admit(conn, message, cert)
        if admission.change == REENROLLMENT:
            _clear_previous_enrollment(conn, message.enrollment, admission, options)
        elif admission.change == RENEWAL:
            _end_renewal(conn, admission)
        result = core(conn, message, options)
        if admission.change is not None:
            _bind(conn, admission)
        return result

    return step


def admit(conn: sqlite3.Connection, message, cert: Presented) -> Admission:
    """May this certificate speak for the message's enrollment? Raises CertificateNotBound if not."""
    enrollment = message.enrollment
    device = enrollment.device_id
    bound = bindings.bound_fingerprint(conn, device)
    if bound == cert.sha256:
        return Admission(device, cert, None, bound)
    if bound is not None and bindings.is_successor(conn, cert.sha256, device, bound):
        return Admission(device, cert, RENEWAL, bound)
    if not isinstance(message, Authenticate) or enrollment.is_user_channel:
        raise _not_bound(enrollment, bound, cert)
    claim = bindings.claim(conn, cert.sha256)
    if claim is not None and claim.device_id != device:
        raise CertificateNotBound(
            "certificate belongs to another device",
            f"certificate {cert.sha256} is {claim.state} for {claim.device_id}, used to Authenticate as {device}",
        )
    if claim is not None and claim.state == bindings.REPLACED:
        raise CertificateNotBound(
            "certificate was replaced and is no longer accepted: enroll again for a new identity",
            f"certificate {cert.sha256} of {device} was replaced; bound now: {bound}",
        )
    tied = abm.identity_serial(conn, cert.sha256)
    if tied is not None and tied != message.serial_number:
        # Issued against an ADE challenge handed to one device (service/ade.py): it speaks for that one only.
        raise CertificateNotBound(
            "certificate was issued for a device with another serial number",
            f"certificate {cert.sha256} was issued for serial number {tied}, used to Authenticate as {device} "
            f"with serial number {message.serial_number}",
        )
    return Admission(device, cert, NEW if bound is None else REENROLLMENT, bound)


def _not_bound(enrollment: Enrollment, bound: str | None, cert: Presented) -> CertificateNotBound:
    if bound is None:
        return CertificateNotBound(
            "device is not enrolled: no certificate is bound to it (Authenticate first)",
            f"no binding for device {enrollment.device_id} (enrollment {enrollment.id}); presented {cert.sha256}",
        )
    return CertificateNotBound(
        "certificate is not the one bound to this device",
        f"enrollment {enrollment.id} is bound to {bound}; presented {cert.sha256}",
    )


def _clear_previous_enrollment(conn: sqlite3.Connection, enrollment: Enrollment, admission: Admission,
                               options) -> None:
    device, cert = admission.device_id, admission.cert
    commands = queue.clear_device(conn, device)
    bootstrap_token, unlock_token = enrollments.forget_previous_enrollment(conn, device)
    attempt = renewals.forget(conn, device)
    if attempt is not None:
        renewals.withdraw(conn, attempt)
    scep_store.drop_renewal_challenges(conn, device)
    log.warning("device_reenrolled", device_id=device, previous=admission.previous, sha256=cert.sha256,
                subject=cert.subject, cleared_commands=commands, bootstrap_token_cleared=bootstrap_token,
                unlock_token_cleared=unlock_token)
    if options.webhook:
        topic, body = reenrollment_event(
            udid=enrollment.udid, enrollment_id=enrollment.enrollment_id, ids=enrollment.ids(),
            previous_sha256=admission.previous, sha256=cert.sha256, subject=cert.subject,
            cleared_commands=commands, bootstrap_token=bootstrap_token, unlock_token=unlock_token,
        )
        outbox.add(conn, enrollment_id=enrollment.id, topic=topic, body=body)


def _end_renewal(conn: sqlite3.Connection, admission: Admission) -> None:
    """Before the core: the renewal is done, and its InstallProfile is not offered again (a device that took
    it may still report on it)."""
    device = admission.device_id
    attempt = renewals.complete(conn, device, admission.previous, admission.cert.sha256)
    if attempt is not None:
        renewals.withdraw(conn, attempt)
    scep_store.drop_renewal_challenges(conn, device)


def _bind(conn: sqlite3.Connection, admission: Admission) -> None:
    device, cert = admission.device_id, admission.cert
    bindings.bind(conn, device, cert.sha256, cert.subject, cert.not_after, cert.not_before, cert.issuer)
    event = "certificate_renewed" if admission.change == RENEWAL else "certificate_bound"
    log.info(event, device_id=device, sha256=cert.sha256, previous=admission.previous)


# --- at issuing: proven successors ------------------------------------------------------------------

def note_successor(conn: sqlite3.Connection, sha256: str, *, signed_by: str | None = None,
                   renews: tuple[str, str] | None = None) -> str | None:
    """A certificate was just issued: record it as a device's proven successor when its request proved that
    device's bound identity. `signed_by`: the SHA-256 of a RenewalReq's signer, a proof if it is bound now;
    `renews`: (device id, bound SHA-256) of the one-time challenge it was issued against. Returns the device."""
    if signed_by is not None:
        device = bindings.device_bound_to(conn, signed_by)
        if device is not None:
            bindings.record_successor(conn, sha256, device, signed_by, RENEWAL_REQUEST)
            log.info("certificate_successor_issued", device_id=device, sha256=sha256, proof=RENEWAL_REQUEST)
            return device
    if renews is not None:
        device, predecessor = renews
        bindings.record_successor(conn, sha256, device, predecessor, RENEWAL_CHALLENGE)
        log.info("certificate_successor_issued", device_id=device, sha256=sha256, proof=RENEWAL_CHALLENGE)
        return device
    return None


def renewal_of(conn: sqlite3.Connection, device_id: str) -> tuple[str, str]:
    """What a challenge minted to renew this device's identity is tied to: (device id, bound SHA-256)."""
    bound = bindings.bound_fingerprint(conn, device_id)
    if bound is None:
        raise ValueError(f"device {device_id} has no bound identity certificate to renew")
    return device_id, bound


def was_replaced(conn: sqlite3.Connection, sha256: str) -> bool:
    """A certificate the binding moved away from: refused everywhere, a SCEP renewal's signature included."""
    claim = bindings.claim(conn, sha256)
    return claim is not None and claim.state == bindings.REPLACED
