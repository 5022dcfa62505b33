"""SCEP (RFC 8894) messages, sans-I/O: read a PKIMessage, open its envelope, write a CertRep.

A PKIMessage is a CMS SignedData whose signed attributes carry the SCEP fields and whose
content is an EnvelopedData encrypted to our CA certificate. Nothing here touches a socket
or the database: the web layer decides what to issue and calls `cert_rep_success` /
`cert_rep_failure`. Every refusal is a `ScepError`; when the request was readable enough
to be answered (`error.request` is set) the caller answers a CertRep FAILURE, else a 400.
"""

from __future__ import annotations

import datetime as dt
import enum
import functools
import hmac
import os
from dataclasses import dataclass, field

from asn1crypto import algos, cms, core, csr as asn1_csr, x509 as asn1_x509
from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, padding as sym_padding
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.serialization import Encoding, pkcs7
from cryptography.x509.oid import AttributeOID

from appliance import clock
from appliance.identity import envelope

# SCEP attribute OIDs (RFC 8894 section 3.2.1, VeriSign arc).
OID_MESSAGE_TYPE = "2.16.840.1.113733.1.9.2"
OID_PKI_STATUS = "2.16.840.1.113733.1.9.3"
OID_FAIL_INFO = "2.16.840.1.113733.1.9.4"
OID_SENDER_NONCE = "2.16.840.1.113733.1.9.5"
OID_RECIPIENT_NONCE = "2.16.840.1.113733.1.9.6"
OID_TRANSACTION_ID = "2.16.840.1.113733.1.9.7"

# What GetCACaps advertises: only what this module really does.
CA_CAPABILITIES = (
    "POSTPKIOperation",
    "SHA-256",
    "SHA-512",
    "SHA-1",
    "AES",
    "DES3",
    "SCEPStandard",
    "Renewal",
)

# What parsing hostile DER can raise, besides our own ScepError. AttributeError: asn1crypto has no
# Python value for some universal types (REAL), and `.native` on one raises it (found by fuzzing).
_PARSE_ERRORS = (ValueError, TypeError, KeyError, IndexError, OverflowError, AttributeError,
                 UnsupportedAlgorithm, x509.InvalidVersion)

MIN_RSA_BITS = 2048
MAX_TRANSACTION_ID = 256  # printable string; real clients send 20-64 characters


class MessageType(enum.IntEnum):
    CERT_REP = 3
    RENEWAL_REQ = 17
    PKCS_REQ = 19
    CERT_POLL = 20  # "GetCertInitial" in older drafts
    GET_CERT = 21
    GET_CRL = 22


class PkiStatus(enum.IntEnum):
    SUCCESS = 0
    FAILURE = 2
    PENDING = 3


class FailInfo(enum.IntEnum):
    BAD_ALG = 0
    BAD_MESSAGE_CHECK = 1
    BAD_REQUEST = 2
    BAD_TIME = 3
    BAD_CERT_ID = 4


class ScepError(Exception):
    """A request we refuse. `request` is set when a CertRep FAILURE can answer it."""

    def __init__(self, reason: str, fail_info: FailInfo, request: PkiMessage | None = None):
        super().__init__(reason)
        self.reason = reason
        self.fail_info = fail_info
        self.request = request

    @property
    def answerable(self) -> bool:
        return self.request is not None


_HASHES: dict[str, type[hashes.HashAlgorithm]] = {
    "sha1": hashes.SHA1,
    "sha256": hashes.SHA256,
    "sha384": hashes.SHA384,
    "sha512": hashes.SHA512,
}


@dataclass
class PkiMessage:
    """A request PKIMessage whose signature has been checked (unless `verified` is False)."""

    message_type: int
    transaction_id: str
    sender_nonce: bytes
    signer_certificate: x509.Certificate
    digest_algorithm: str  # asn1crypto name: sha1, sha256, ...
    envelope: cms.EnvelopedData | None
    verified: bool = False
    content_encryption: str | None = field(default=None)  # asn1crypto name, e.g. aes128_cbc


@dataclass(frozen=True)
class CertificationRequest:
    csr: x509.CertificateSigningRequest
    challenge_password: str | None
    der: bytes


# --- reading a request ---------------------------------------------------------------


def parse_pki_message(der: bytes) -> PkiMessage:
    """Parse and verify a request PKIMessage.

    Raises ScepError without `request` when the bytes are not a SCEP message at all (400),
    and with `request` when the message names a transaction we can answer with FAILURE.
    """
    try:
        content_info = cms.ContentInfo.load(der, strict=True)
        if content_info["content_type"].native != "signed_data":
            raise ScepError("not a CMS SignedData", FailInfo.BAD_REQUEST)
        signed_data = content_info["content"]
        signer_infos = signed_data["signer_infos"]
        if len(signer_infos) != 1:
            raise ScepError("a PKIMessage has exactly one signer", FailInfo.BAD_MESSAGE_CHECK)
        signer_info = signer_infos[0]
        signed_attrs = signer_info["signed_attrs"]
        if signed_attrs.native is None:
            raise ScepError("no signed attributes", FailInfo.BAD_MESSAGE_CHECK)
        attrs = _attributes(signed_attrs)
        message_type = _int_attribute(attrs, OID_MESSAGE_TYPE, "messageType")
        transaction_id = _string_attribute(attrs, OID_TRANSACTION_ID, "transactionID")
        sender_nonce = _octets_attribute(attrs, OID_SENDER_NONCE, "senderNonce")
        signer_cert = _signer_certificate(signed_data, signer_info)
        digest_algorithm = signer_info["digest_algorithm"]["algorithm"].native
        encap = signed_data["encap_content_info"]
        content = encap["content"].native if encap["content"].native is not None else None
    except ScepError:
        raise
    except _PARSE_ERRORS as exc:
        raise ScepError(f"malformed PKIMessage: {_short(exc)}", FailInfo.BAD_REQUEST) from None

    if not transaction_id or len(transaction_id) > MAX_TRANSACTION_ID:
        raise ScepError("transactionID missing or too long", FailInfo.BAD_REQUEST)
    if len(sender_nonce) < 8:
        raise ScepError("senderNonce missing or too short", FailInfo.BAD_REQUEST)

    message = PkiMessage(
        message_type=message_type,
        transaction_id=transaction_id,
        sender_nonce=sender_nonce,
        signer_certificate=signer_cert,
        digest_algorithm=digest_algorithm,
        envelope=None,
    )
    # From here on the transaction is known: refusals are answered with a CertRep FAILURE.
    try:
        _check_request(message, signer_info, signed_attrs, content)
    except _PARSE_ERRORS as exc:  # asn1crypto parses lazily: junk deeper inside surfaces here
        raise ScepError(f"malformed PKIMessage: {_short(exc)}", FailInfo.BAD_REQUEST, message) from None
    return message


def _check_request(message: PkiMessage, signer_info, signed_attrs, content: bytes | None) -> None:
    digest_algorithm, signer_cert, message_type = (
        message.digest_algorithm, message.signer_certificate, message.message_type)
    if digest_algorithm not in _HASHES:
        raise ScepError(f"unsupported digest {digest_algorithm}", FailInfo.BAD_ALG, message)
    if not isinstance(signer_cert.public_key(), rsa.RSAPublicKey):
        raise ScepError("only RSA requester keys are supported", FailInfo.BAD_ALG, message)
    _verify_signer(signer_info, signed_attrs, content or b"", signer_cert, message)
    message.verified = True

    if message_type in (MessageType.PKCS_REQ, MessageType.RENEWAL_REQ,
                        MessageType.CERT_POLL, MessageType.GET_CERT):
        if not content:
            raise ScepError("no pkcsPKIEnvelope", FailInfo.BAD_REQUEST, message)
        try:
            envelope_info = cms.ContentInfo.load(content, strict=True)
            if envelope_info["content_type"].native != "enveloped_data":
                raise ValueError("content is not EnvelopedData")
            message.envelope = envelope_info["content"]
            message.content_encryption = message.envelope["encrypted_content_info"][
                "content_encryption_algorithm"]["algorithm"].native
        except _PARSE_ERRORS as exc:
            raise ScepError(f"malformed pkcsPKIEnvelope: {_short(exc)}",
                            FailInfo.BAD_REQUEST, message) from None
    elif message_type not in (MessageType.GET_CRL,):
        raise ScepError(f"unknown messageType {message_type}", FailInfo.BAD_REQUEST, message)


def _short(exc: Exception) -> str:
    return str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__


def _attributes(signed_attrs: cms.CMSAttributes) -> dict[str, list]:
    found: dict[str, list] = {}
    for attr in signed_attrs:
        oid = attr["type"].dotted
        if oid in found:
            raise ScepError(f"attribute {oid} appears twice", FailInfo.BAD_MESSAGE_CHECK)
        found[oid] = list(attr["values"])
    return found


def _single(attrs: dict[str, list], oid: str, name: str):
    values = attrs.get(oid)
    if not values or len(values) != 1:
        raise ScepError(f"{name} attribute missing", FailInfo.BAD_REQUEST)
    value = values[0]
    # Unknown attribute types arrive as Any: re-read the raw TLV.
    return value if not isinstance(value, core.Any) else core.load(value.dump())


def _string_attribute(attrs, oid, name) -> str:
    value = _single(attrs, oid, name)
    if not isinstance(value, (core.PrintableString, core.UTF8String, core.IA5String)):
        raise ScepError(f"{name} is not a string", FailInfo.BAD_REQUEST)
    return value.native


def _int_attribute(attrs, oid, name) -> int:
    text = _string_attribute(attrs, oid, name)
    if not text.isdigit() or len(text) > 4:
        raise ScepError(f"{name} is not a number", FailInfo.BAD_REQUEST)
    return int(text)


def _octets_attribute(attrs, oid, name) -> bytes:
    value = _single(attrs, oid, name)
    if not isinstance(value, core.OctetString):
        raise ScepError(f"{name} is not an OCTET STRING", FailInfo.BAD_REQUEST)
    return value.native


def _signer_certificate(signed_data: cms.SignedData, signer_info: cms.SignerInfo) -> x509.Certificate:
    sid = signer_info["sid"]
    for choice in signed_data["certificates"] or []:
        if choice.name != "certificate":
            continue
        cert = choice.chosen
        if sid.name == "issuer_and_serial_number":
            wanted = sid.chosen
            if (cert.serial_number == wanted["serial_number"].native
                    and cert.issuer.dump() == wanted["issuer"].dump()):
                return x509.load_der_x509_certificate(cert.dump())
        elif sid.name == "subject_key_identifier" and cert.key_identifier == sid.chosen.native:
            return x509.load_der_x509_certificate(cert.dump())
    raise ScepError("signer certificate not included", FailInfo.BAD_MESSAGE_CHECK)


def _verify_signer(signer_info, signed_attrs, content: bytes, cert: x509.Certificate,
                   message: PkiMessage) -> None:
    hash_cls = _HASHES[message.digest_algorithm]
    attrs = {a["type"].native: a for a in signed_attrs}
    digest_attr = attrs.get("message_digest")
    if digest_attr is None:
        raise ScepError("messageDigest attribute missing", FailInfo.BAD_MESSAGE_CHECK, message)
    h = hashes.Hash(hash_cls())
    h.update(content)
    if not hmac.compare_digest(h.finalize(), digest_attr["values"][0].native or b""):
        raise ScepError("messageDigest does not match the content", FailInfo.BAD_MESSAGE_CHECK, message)
    sig_algo = signer_info["signature_algorithm"]
    if sig_algo.signature_algo != "rsassa_pkcs1v15":
        raise ScepError(f"unsupported signature algorithm {sig_algo['algorithm'].native}",
                        FailInfo.BAD_ALG, message)
    try:
        sig_hash = _HASHES.get(sig_algo.hash_algo, hash_cls)
    except ValueError:  # plain rsaEncryption names no hash: the digest algorithm applies
        sig_hash = hash_cls
    # Sign over the ORIGINAL bytes with the [0] IMPLICIT tag replaced by SET (RFC 5652 5.4).
    to_verify = b"\x31" + signed_attrs.dump()[1:]
    try:
        cert.public_key().verify(signer_info["signature"].native, to_verify,
                                 padding.PKCS1v15(), sig_hash())
    except InvalidSignature:
        raise ScepError("signature does not verify", FailInfo.BAD_MESSAGE_CHECK, message) from None


# --- opening the envelope --------------------------------------------------------------

_FAIL_INFO = {envelope.MALFORMED: FailInfo.BAD_REQUEST, envelope.UNSUPPORTED: FailInfo.BAD_ALG,
              envelope.NOT_ADDRESSED: FailInfo.BAD_MESSAGE_CHECK, envelope.UNDECRYPTABLE: FailInfo.BAD_MESSAGE_CHECK}


def open_envelope(message: PkiMessage, ca_certificate: x509.Certificate,
                  ca_key: rsa.RSAPrivateKey) -> bytes:
    """Decrypt the pkcsPKIEnvelope addressed to our CA certificate; return its content."""
    if message.envelope is None:
        raise ScepError("no pkcsPKIEnvelope", FailInfo.BAD_REQUEST, message)
    try:
        return envelope.open_enveloped_data(message.envelope, ca_certificate, ca_key)
    except envelope.EnvelopeError as exc:
        reason = {envelope.NOT_ADDRESSED: "envelope is not addressed to this CA",
                  envelope.UNDECRYPTABLE: "envelope does not decrypt with the CA key"}.get(exc.kind, exc.reason)
        raise ScepError(reason, _FAIL_INFO[exc.kind], message) from None


def parse_certification_request(der: bytes, message: PkiMessage) -> CertificationRequest:
    """The PKCS#10 request inside a PKCSReq/RenewalReq envelope, with its challengePassword."""
    try:
        csr = x509.load_der_x509_csr(der)
        valid = csr.is_signature_valid
        public_key = csr.public_key()
    except UnsupportedAlgorithm as exc:
        raise ScepError(f"unsupported request: {_short(exc)}", FailInfo.BAD_ALG, message) from None
    except _PARSE_ERRORS as exc:
        raise ScepError(f"envelope does not hold a PKCS#10 request: {_short(exc)}",
                        FailInfo.BAD_REQUEST, message) from None
    if not valid:
        raise ScepError("PKCS#10 request signature does not verify", FailInfo.BAD_MESSAGE_CHECK, message)
    if isinstance(public_key, rsa.RSAPublicKey) and public_key.key_size < MIN_RSA_BITS:
        raise ScepError(f"RSA keys under {MIN_RSA_BITS} bits are refused", FailInfo.BAD_ALG, message)
    try:
        challenge = _challenge_password(der)
    except _PARSE_ERRORS as exc:
        raise ScepError(f"malformed PKCS#10 attributes: {_short(exc)}", FailInfo.BAD_REQUEST, message) from None
    return CertificationRequest(csr=csr, challenge_password=challenge, der=der)


def _challenge_password(der: bytes) -> str | None:
    # asn1crypto decodes the DirectoryString choice (Printable/UTF8/BMP...) for us.
    info = asn1_csr.CertificationRequest.load(der)["certification_request_info"]
    for attr in info["attributes"]:
        if attr["type"].dotted == AttributeOID.CHALLENGE_PASSWORD.dotted_string:
            value = attr["values"][0]
            if isinstance(value, core.Any):
                value = core.load(value.dump())
            text = value.native
            return text if isinstance(text, str) else None
    return None


def parse_issuer_and_serial(der: bytes, message: PkiMessage) -> tuple[bytes, int]:
    """GetCert content: (issuer name DER, serial)."""
    try:
        value = cms.IssuerAndSerialNumber.load(der, strict=True)
        return value["issuer"].dump(), value["serial_number"].native
    except _PARSE_ERRORS:
        raise ScepError("GetCert content is not IssuerAndSerialNumber",
                        FailInfo.BAD_REQUEST, message) from None


def renewal_signer_is_ours(message: PkiMessage, ca_certificate: x509.Certificate,
                           now: dt.datetime) -> bool:
    """RenewalReq is signed with a certificate we issued and which is still valid."""
    cert = message.signer_certificate
    if cert.issuer != ca_certificate.subject:
        return False
    if not (cert.not_valid_before_utc <= now <= cert.not_valid_after_utc):
        return False
    try:
        cert.verify_directly_issued_by(ca_certificate)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


# --- writing an answer -----------------------------------------------------------------


def _der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(Encoding.DER)


@functools.lru_cache(maxsize=4)
def _ca_asn1(ca_der: bytes) -> tuple[asn1_x509.Certificate, cms.SignerIdentifier]:
    """The CA certificate as asn1crypto objects, parsed once: every CertRep embeds them."""
    ca = asn1_x509.Certificate.load(ca_der)
    sid = _frozen(cms.SignerIdentifier(name="issuer_and_serial_number",
                                       value={"issuer": ca.issuer, "serial_number": ca.serial_number}))
    return ca, sid


def _frozen(value: core.Asn1Value) -> core.Asn1Value:
    """`value` encoded once, as a parsed copy.

    asn1crypto never marks a built structure clean: each time a parent asks a built child for its
    bytes, the child's whole subtree is encoded again, and a parent asks several times. Parents that
    only hold parsed children encode in one pass, which more than halves the cost of a CertRep.
    """
    return type(value).load(value.dump())


def _content_info(content_type: str, content: core.Sequence) -> bytes:
    return cms.ContentInfo({"content_type": content_type, "content": _frozen(content)}).dump()


def degenerate_pkcs7(certificates: list[x509.Certificate]) -> bytes:
    """A certs-only SignedData (RFC 8894 3.4): GetCACert chains and CertRep content."""
    return pkcs7.serialize_certificates(certificates, Encoding.DER)


def _envelope(content: bytes, recipient: x509.Certificate, cipher_name: str) -> bytes:
    """EnvelopedData for the requester, with the content encryption it used itself."""
    key_size, _ = envelope.CIPHERS[cipher_name]
    block = 8 if cipher_name in ("des", "tripledes_3key") else 16
    key, iv = os.urandom(key_size), os.urandom(block)
    padder = sym_padding.PKCS7(block * 8).padder()
    encryptor = envelope.cipher(cipher_name, key, iv).encryptor()
    ciphertext = encryptor.update(padder.update(content) + padder.finalize()) + encryptor.finalize()
    public_key = recipient.public_key()
    assert isinstance(public_key, rsa.RSAPublicKey)  # checked when the request was parsed
    rcert = asn1_x509.Certificate.load(_der(recipient))
    ktri = _frozen(cms.KeyTransRecipientInfo({
        "version": "v0",
        "rid": cms.RecipientIdentifier(
            name="issuer_and_serial_number",
            value={"issuer": rcert.issuer, "serial_number": rcert.serial_number},
        ),
        "key_encryption_algorithm": _RSA_KEY_TRANSPORT,
        "encrypted_key": public_key.encrypt(key, padding.PKCS1v15()),
    }))
    encrypted_content_info = _frozen(cms.EncryptedContentInfo({
        "content_type": "data",
        "content_encryption_algorithm": algos.EncryptionAlgorithm(
            {"algorithm": cipher_name, "parameters": core.OctetString(iv)}),
        "encrypted_content": ciphertext,
    }))
    enveloped = cms.EnvelopedData({
        "version": "v0",
        "recipient_infos": [cms.RecipientInfo(name="ktri", value=ktri)],
        "encrypted_content_info": encrypted_content_info,
    })
    return _content_info("enveloped_data", enveloped)


_RSA_KEY_TRANSPORT = _frozen(cms.KeyEncryptionAlgorithm({"algorithm": "rsaes_pkcs1v15"}))
_RSA_SIGNATURE = _frozen(cms.SignedDigestAlgorithm({"algorithm": "rsassa_pkcs1v15"}))


@functools.lru_cache(maxsize=None)
def _constant_attr(oid: str, text: str) -> cms.CMSAttribute:
    """messageType, pkiStatus and failInfo take a handful of values: each encoded once per process."""
    return _frozen(cms.CMSAttribute({"type": oid, "values": [core.PrintableString(text)]}))


def _attr(oid: str, value: core.Asn1Value) -> cms.CMSAttribute:
    return _frozen(cms.CMSAttribute({"type": oid, "values": [value]}))


_CONTENT_TYPE_DATA = _frozen(cms.CMSAttribute({"type": "content_type", "values": ["data"]}))


def _signed_cert_rep(request: PkiMessage, status: PkiStatus, content: bytes | None,
                     ca_certificate: x509.Certificate, ca_key: rsa.RSAPrivateKey,
                     fail_info: FailInfo | None = None,
                     issued: list[x509.Certificate] | None = None) -> bytes:
    digest_name = request.digest_algorithm if request.digest_algorithm in _HASHES else "sha256"
    hash_cls = _HASHES[digest_name]
    h = hashes.Hash(hash_cls())
    h.update(content or b"")
    attrs = [
        _CONTENT_TYPE_DATA,
        _attr("message_digest", core.OctetString(h.finalize())),
        _attr("signing_time", cms.Time(name="utc_time", value=clock.now())),
        _constant_attr(OID_MESSAGE_TYPE, str(int(MessageType.CERT_REP))),
        _constant_attr(OID_PKI_STATUS, str(int(status))),
        _attr(OID_TRANSACTION_ID, core.PrintableString(request.transaction_id)),
        _attr(OID_SENDER_NONCE, core.OctetString(os.urandom(16))),
        _attr(OID_RECIPIENT_NONCE, core.OctetString(request.sender_nonce)),
    ]
    if fail_info is not None:
        attrs.append(_constant_attr(OID_FAIL_INFO, str(int(fail_info))))
    signed_attrs = cms.CMSAttributes(attrs)
    signature = ca_key.sign(signed_attrs.dump(), padding.PKCS1v15(), hash_cls())
    ca, ca_sid = _ca_asn1(_der(ca_certificate))
    digest_algorithm = _digest_algorithm(digest_name)
    encap = {"content_type": "data"}
    if content is not None:
        encap["content"] = content
    signer_info = _frozen(cms.SignerInfo({
        "version": "v1",
        "sid": ca_sid,
        "digest_algorithm": digest_algorithm,
        "signed_attrs": signed_attrs,
        "signature_algorithm": _RSA_SIGNATURE,
        "signature": signature,
    }))
    signed = cms.SignedData({
        "version": "v1",
        "digest_algorithms": [digest_algorithm],
        "encap_content_info": _frozen(cms.ContentInfo(encap)),
        # The issued certificate also goes in the outer bag, first: micromdm/scep does this and
        # some clients read it from there; the CA certificate lets the requester check our signature.
        "certificates": [*(asn1_x509.Certificate.load(_der(c)) for c in issued or []), ca],
        "signer_infos": [signer_info],
    })
    return _content_info("signed_data", signed)


@functools.lru_cache(maxsize=None)
def _digest_algorithm(name: str) -> cms.DigestAlgorithm:
    return _frozen(cms.DigestAlgorithm({"algorithm": name}))


def cert_rep_success(request: PkiMessage, issued: list[x509.Certificate],
                     ca_certificate: x509.Certificate, ca_key: rsa.RSAPrivateKey) -> bytes:
    """CertRep SUCCESS carrying the issued certificate, encrypted to the requester."""
    cipher_name = request.content_encryption if request.content_encryption in envelope.CIPHERS else "aes256_cbc"
    enveloped = _envelope(degenerate_pkcs7(issued), request.signer_certificate, cipher_name)
    return _signed_cert_rep(request, PkiStatus.SUCCESS, enveloped, ca_certificate, ca_key, issued=issued)


def cert_rep_failure(request: PkiMessage, fail_info: FailInfo,
                     ca_certificate: x509.Certificate, ca_key: rsa.RSAPrivateKey) -> bytes:
    """CertRep FAILURE: no envelope, the reason in failInfo (RFC 8894 3.3.2)."""
    return _signed_cert_rep(request, PkiStatus.FAILURE, None, ca_certificate, ca_key, fail_info)
