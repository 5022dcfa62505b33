"""What a SCEP PKIOperation does: check the request and its challenge, issue once per transaction.

Composed from identity.scep (messages), identity.ca (issuing) and store.scep (records); a certificate
issued for a request that proved a device's bound identity is noted as that device's successor
(service/certauth.py). Every outcome is an HTTP answer: a CertRep (SUCCESS or FAILURE) when the
request named a transaction, a 400 with a reason when it was not a SCEP message at all. Nothing here
raises to the web layer.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from appliance.identity import scep
from appliance.identity.scep import FailInfo, MessageType, PkiMessage, ScepError
from appliance.logs import get_logger
from appliance.service import ade, certauth
from appliance.store import scep as scep_store
from appliance.store.timefmt import now as utc_now, to_text

log = get_logger("scep")

PKI_MESSAGE_TYPE = "application/x-pki-message"
CA_CERT_TYPE = "application/x-x509-ca-cert"


@dataclass(frozen=True)
class ScepAnswer:
    status: int
    content_type: str
    body: bytes


def ca_caps() -> ScepAnswer:
    return ScepAnswer(200, "text/plain", "\n".join(scep.CA_CAPABILITIES).encode())


def ca_cert(runtime) -> ScepAnswer:
    # A single CA certificate goes out as plain DER (RFC 8894 4.2.1.1); we have no RA or chain.
    return ScepAnswer(200, CA_CERT_TYPE, runtime.ca.certificate_der)


def _failure(runtime, request: PkiMessage, fail_info: FailInfo, reason: str) -> ScepAnswer:
    runtime.metrics.scep_requests.labels(_type_label(request.message_type), "failure").inc()
    log.info("scep_refused", transaction_id=request.transaction_id, fail_info=fail_info.name,
             reason=reason)
    body = scep.cert_rep_failure(request, fail_info, runtime.ca.certificate, runtime.ca.key)
    return ScepAnswer(200, PKI_MESSAGE_TYPE, body)


def _success(runtime, request: PkiMessage, certificate: x509.Certificate) -> ScepAnswer:
    body = scep.cert_rep_success(request, [certificate], runtime.ca.certificate, runtime.ca.key)
    return ScepAnswer(200, PKI_MESSAGE_TYPE, body)


def _type_label(message_type: int) -> str:
    try:
        return MessageType(message_type).name
    except ValueError:
        return "UNKNOWN"


async def pki_operation(runtime, der: bytes, client: str | None = None) -> ScepAnswer:
    """`client`: the requester's address, for the challenge-guessing limit (identity.guesses)."""
    try:
        request = scep.parse_pki_message(der)
    except ScepError as exc:
        if exc.request is None:
            runtime.metrics.scep_requests.labels("UNKNOWN", "malformed").inc()
            return ScepAnswer(400, "text/plain", f"not a SCEP PKIMessage: {exc.reason}\n".encode())
        return _failure(runtime, exc.request, exc.fail_info, exc.reason)
    try:
        if request.message_type in (MessageType.PKCS_REQ, MessageType.RENEWAL_REQ):
            return await _enroll(runtime, request, client)
        if request.message_type == MessageType.CERT_POLL:
            return await _poll(runtime, request)
        if request.message_type == MessageType.GET_CERT:
            return await _get_cert(runtime, request)
        return _failure(runtime, request, FailInfo.BAD_REQUEST, "GetCRL is not offered")
    except ScepError as exc:
        return _failure(runtime, request, exc.fail_info, exc.reason)


async def _enroll(runtime, request: PkiMessage, client: str | None) -> ScepAnswer:
    ca = runtime.ca
    content = scep.open_envelope(request, ca.certificate, ca.key)
    csr = scep.parse_certification_request(content, request)
    csr_sha256 = hashlib.sha256(csr.der).digest()

    recorded = await runtime.store.read(scep_store.by_transaction, request.transaction_id)
    if recorded is not None:
        return _replay(runtime, request, recorded, csr_sha256)

    now = utc_now()
    renewal_signer = _renewal_signer(request, now)
    # Which challenge this request spends: None when it needs none (static challenge or a
    # renewal signed by our identity). A one-time challenge is checked here (a read, so a
    # wrong one costs no issuing) and spent atomically with the record below.
    authorized, one_time = await _authorization(runtime, request, csr, now, client, renewal_signer)
    if not authorized:
        if runtime.scep_guesses.blocked(client):
            runtime.metrics.guess_limit_refusals.labels("scep_challenge").inc()
            return _failure(runtime, request, FailInfo.BAD_REQUEST, "too many wrong challenges from this address")
        return _wrong_challenge(runtime, request, client, "challenge password missing or wrong")

    settings = runtime.config.enrollment
    certificate = ca.issue(csr.csr.public_key(), csr.csr.subject,
                           days=settings.certificate_validity_days, client_auth=True)
    issued = scep_store.IssuedCertificate(
        serial=format(certificate.serial_number, "x"),
        subject=certificate.subject.rfc4514_string(),
        not_after=to_text(certificate.not_valid_after_utc),
        transaction_id=request.transaction_id,
        message_type=request.message_type,
        csr_sha256=csr_sha256,
        certificate=certificate.public_bytes(Encoding.DER),
        issued_at=to_text(now),
    )
    outcome, recorded = await runtime.store.write(_record_issued, issued, one_time, now, renewal_signer)
    if outcome == scep_store.REPLAYED:  # a copy of this request got there first
        return _replay(runtime, request, recorded, csr_sha256)
    if outcome == scep_store.CHALLENGE_SPENT:
        return _wrong_challenge(runtime, request, client, "one-time challenge already used")
    runtime.metrics.scep_issued.labels(_type_label(request.message_type)).inc()
    runtime.metrics.scep_requests.labels(_type_label(request.message_type), "success").inc()
    log.info("scep_issued", transaction_id=request.transaction_id, serial=issued.serial,
             subject=issued.subject, not_after=issued.not_after)
    return _success(runtime, request, certificate)


def _renewal_signer(request: PkiMessage, now) -> str | None:
    """The SHA-256 of a RenewalReq's signer while it is valid: the identity the request proves it holds
    (parse_pki_message verified the signature)."""
    if request.message_type != MessageType.RENEWAL_REQ:
        return None
    signer = request.signer_certificate
    if not (signer.not_valid_before_utc <= now <= signer.not_valid_after_utc):
        return None
    return certauth.fingerprint(signer)


def _record_issued(conn, issued: scep_store.IssuedCertificate, one_time: str | None, now,
                   renewal_signer: str | None) -> tuple[str, scep_store.IssuedCertificate | None]:
    """One transaction: the certificate recorded and its one-time challenge spent, and, when the request
    proved a device's bound identity (signed by it, or a challenge tied to it), the certificate noted as
    that device's successor; issued against an ADE challenge, the certificate tied to its serial number."""
    outcome, recorded = scep_store.record_enrollment(conn, issued, one_time, now)
    if outcome == scep_store.ISSUED:
        renews = scep_store.challenge_renews(conn, one_time) if one_time is not None else None
        certauth.note_successor(conn, hashlib.sha256(issued.certificate).hexdigest(),
                                signed_by=renewal_signer, renews=renews)
        if one_time is not None:
            ade.tie_issued_identity(conn, one_time, issued.certificate)
    return outcome, recorded


def _replay(runtime, request: PkiMessage, recorded: scep_store.IssuedCertificate,
            csr_sha256: bytes) -> ScepAnswer:
    """RFC 8894 3.3.1: a resent request gets the same answer; a different CSR under the
    transaction ID of another is refused."""
    if not hmac.compare_digest(recorded.csr_sha256, csr_sha256):
        return _failure(runtime, request, FailInfo.BAD_REQUEST,
                        "transaction ID already used for a different request")
    runtime.metrics.scep_requests.labels(_type_label(request.message_type), "replayed").inc()
    return _success(runtime, request, x509.load_der_x509_certificate(recorded.certificate))


def _wrong_challenge(runtime, request: PkiMessage, client: str | None, reason: str) -> ScepAnswer:
    runtime.metrics.failed_authentications.labels("scep_challenge").inc()
    if runtime.scep_guesses.wrong_guess(client):
        log.warning("scep_challenge_guessing_limited", client=client,
                    limit=runtime.scep_guesses.limit, window_seconds=runtime.scep_guesses.window)
    return _failure(runtime, request, FailInfo.BAD_REQUEST, reason)


async def _authorization(runtime, request: PkiMessage, csr: scep.CertificationRequest,
                         now, client: str | None, renewal_signer: str | None) -> tuple[bool, str | None]:
    """(authorized, one-time challenge to spend)."""
    if (renewal_signer is not None
            and scep.renewal_signer_is_ours(request, runtime.ca.certificate, now)
            and csr.csr.subject == request.signer_certificate.subject
            and not await runtime.store.read(certauth.was_replaced, renewal_signer)):
        # Signed by a valid identity we issued, for the same subject: no challenge needed
        # (RFC 8894 2.4). Another subject would let one device mint identities for others; an
        # identity a device's binding moved away from is refused everywhere.
        return True, None
    if runtime.scep_guesses.blocked(client):
        # Refused like a wrong challenge, whatever it is: the answer must not confirm a hit.
        return False, None
    given = csr.challenge_password
    if not given:
        return False, None
    static = runtime.config.enrollment.scep_challenge
    if static and hmac.compare_digest(static.encode(), given.encode()):
        return True, None
    if await runtime.store.read(scep_store.challenge_usable, given, now, request.transaction_id):
        return True, given
    return False, None


async def _poll(runtime, request: PkiMessage) -> ScepAnswer:
    """CertPoll (GetCertInitial): we never answer PENDING, so only a finished transaction is found."""
    recorded = await runtime.store.read(scep_store.by_transaction, request.transaction_id)
    if recorded is None:
        raise ScepError("no certificate for this transaction", FailInfo.BAD_CERT_ID, request)
    runtime.metrics.scep_requests.labels("CERT_POLL", "success").inc()
    return _success(runtime, request, x509.load_der_x509_certificate(recorded.certificate))


async def _get_cert(runtime, request: PkiMessage) -> ScepAnswer:
    ca = runtime.ca
    content = scep.open_envelope(request, ca.certificate, ca.key)
    issuer, serial = scep.parse_issuer_and_serial(content, request)
    ca_subject = ca.certificate.subject.public_bytes()
    recorded = None
    if issuer == ca_subject:
        recorded = await runtime.store.read(scep_store.by_serial, format(serial, "x"))
    if recorded is None:
        raise ScepError("no such certificate", FailInfo.BAD_CERT_ID, request)
    runtime.metrics.scep_requests.labels("GET_CERT", "success").inc()
    return _success(runtime, request, x509.load_der_x509_certificate(recorded.certificate))

