"""Verify the `Mdm-Signature` header: a detached CMS SignedData over the exact request body.

Sans-I/O: bytes in, the signer's certificate out (or an IdentityError). Two phases: `_read`
walks the structure with asn1crypto and copies out plain values (any parse failure -> 400);
`verify_detached_signature` then checks them with cryptography only (any failure -> 403).
cryptography has no public CMS verify API, hence this module. Order and rules: PROTOCOL.md
section 4. Trust (who issued the certificate) is checked separately, in trust.py.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import hmac
from dataclasses import dataclass

from asn1crypto import algos, cms, core
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from appliance.identity.certificate import load_der
from appliance.identity.errors import SignatureInvalid, SignatureMalformed

# asn1crypto digest algorithm names -> cryptography hash classes.
_HASHES: dict[str, type[hashes.HashAlgorithm]] = {
    "sha1": hashes.SHA1,
    "sha224": hashes.SHA224,
    "sha256": hashes.SHA256,
    "sha384": hashes.SHA384,
    "sha512": hashes.SHA512,
}

def _oid(dotted: str) -> bytes:
    return core.ObjectIdentifier(dotted).contents


# Encoded OID contents (made by asn1crypto, from its own name maps), so that the hot path compares
# bytes instead of converting each OID to a dotted string and a name. The maps are keyed by every
# dotted form a name has (some names have two OIDs).
_SIGNED_DATA = cms.ContentType("signed_data").contents
_DATA = cms.ContentType("data").contents
_CONTENT_TYPE = cms.CMSAttributeType("content_type").contents
_MESSAGE_DIGEST = cms.CMSAttributeType("message_digest").contents
_DIGEST_NAMES = {_oid(dotted): name for dotted, name in algos.DigestAlgorithmId._map.items() if name in _HASHES}
# Every signature algorithm asn1crypto knows a kind for ("rsassa_pkcs1v15", "ecdsa", ...).
_SIGNATURE_KINDS: dict[bytes, str] = {}
for _dotted, _name in algos.SignedDigestAlgorithmId._map.items():
    try:
        _SIGNATURE_KINDS[_oid(_dotted)] = algos.SignedDigestAlgorithm({"algorithm": _name}).signature_algo
    except ValueError:
        pass  # no signature kind (an encryption-only OID): stays unknown, as before


class _Values(core.SetOf):
    _child_spec = core.Any  # parsed on demand, only for the two attributes checked


class _Attribute(core.Sequence):
    _fields = [("type", core.ObjectIdentifier), ("values", _Values)]


class _Attributes(core.SetOf):
    _child_spec = _Attribute


# asn1crypto's CMS schema, except that signed attribute values stay raw (no per-attribute schema
# lookup): only content-type and message-digest values are read, each parsed with its own type.
# asn1crypto supports such subclasses (it sets each class up separately).
class _SignerInfoSchema(cms.SignerInfo):
    _fields = [
        ("version", cms.CMSVersion),
        ("sid", cms.SignerIdentifier),
        ("digest_algorithm", algos.DigestAlgorithm),
        ("signed_attrs", _Attributes, {"implicit": 0, "optional": True}),
        ("signature_algorithm", algos.SignedDigestAlgorithm),
        ("signature", core.OctetString),
        ("unsigned_attrs", cms.CMSAttributes, {"implicit": 1, "optional": True}),
    ]


class _SignerInfosSchema(cms.SignerInfos):
    _child_spec = _SignerInfoSchema


class _SignedDataSchema(cms.SignedData):
    _fields = [(name, _SignerInfosSchema, *rest) if name == "signer_infos" else (name, spec, *rest)
               for name, spec, *rest in cms.SignedData._fields]


class _ContentInfoSchema(cms.ContentInfo):
    _oid_specs = {"signed_data": _SignedDataSchema}  # anything else is refused before its content is read


# A real header is a few KiB (signature plus one or two certificates); refuse to base64-decode
# and parse megabytes of junk.
MAX_SIGNATURE_LENGTH = 64 * 1024


@dataclass(frozen=True)
class _Pss:
    hash_name: str
    mgf_name: str
    mgf_hash_name: str
    salt_length: int
    trailer_field: int


@dataclass(frozen=True)
class _SignerInfo:
    """What the verification needs, copied out of the parsed structure."""

    digest_name: str
    signature_kind: str | None  # "rsassa_pkcs1v15", "rsassa_pss", "ecdsa", ...; None if unknown
    signature_oid: str  # dotted, when signature_kind is None
    pss: _Pss | None
    signature: bytes
    signed_attrs_der: bytes | None  # as received, [0] IMPLICIT tag included; None when absent
    content_types: list[list[bytes]]  # values (encoded OID contents) of each content-type attribute
    message_digests: list[list[bytes]]  # values of each message-digest attribute
    signer_issuer_der: bytes | None  # signer named by issuer + serial ...
    signer_serial: int | None
    signer_key_id: bytes | None  # ... or by subject key identifier
    certificate_ders: tuple[bytes, ...]  # every certificate included
    content: bytes | None = None  # the encapsulated content of an attached signature


def verify_detached_signature(signature: bytes | str, body: bytes) -> x509.Certificate:
    """Return the certificate whose key signed `body`, per the base64 DER CMS in `signature`.

    Raises SignatureMalformed (answer 400) when the header cannot be read as a detached
    SignedData, SignatureInvalid (answer 403) when it does not prove the body.
    """
    return _verified_signer(_read(_decode(signature)), body)


def verify_attached_signature(der: bytes) -> tuple[x509.Certificate, bytes, tuple[bytes, ...]]:
    """A SignedData that carries its content (DER): (signer certificate, content, every included certificate's
    DER), once the signature proves the content. Same errors as verify_detached_signature."""
    signer = _read(der, attached=True)
    assert signer.content is not None
    return _verified_signer(signer, signer.content), signer.content, signer.certificate_ders


def _verified_signer(signer: _SignerInfo, body: bytes) -> x509.Certificate:
    hash_cls = _hash_class(signer.digest_name)

    if signer.signed_attrs_der is None:
        # RFC 5652 5.4: without signed attributes the signature covers the content itself.
        signed_bytes = body
    else:
        _check_signed_attributes(signer, body)
        # RFC 5652 5.4: the signature covers the attributes' DER as received, with the
        # [0] IMPLICIT tag replaced by the SET OF tag. Re-encoding could change the bytes.
        signed_bytes = b"\x31" + signer.signed_attrs_der[1:]

    certificate = _find_signer(signer)
    _verify(certificate, signer, signed_bytes, hash_cls)
    return certificate


def _decode(signature: bytes | str) -> bytes:
    if isinstance(signature, str):
        try:
            signature = signature.encode("ascii")
        except UnicodeEncodeError as exc:
            raise SignatureMalformed("signature header is not base64") from exc
    signature = signature.strip()
    if not signature:
        raise SignatureMalformed("signature header is empty")
    if len(signature) > MAX_SIGNATURE_LENGTH:
        raise SignatureMalformed("signature header is too long")
    try:
        return base64.b64decode(signature, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise SignatureMalformed("signature header is not base64") from exc


def _read(der: bytes, attached: bool = False) -> _SignerInfo:
    # asn1crypto parses lazily: any field access can be the one that meets the junk, so the
    # whole walk is one guarded block whose only output is plain Python values. Each field is
    # read once, and OIDs are compared by their encoded contents (no dotted/name conversion).
    try:
        content_info = _ContentInfoSchema.load(der, strict=True)
        if content_info["content_type"].contents != _SIGNED_DATA:
            raise SignatureMalformed("signature is not a CMS SignedData")
        signed_data = content_info["content"]
        encap = signed_data["encap_content_info"]
        if encap["content_type"].contents != _DATA:
            raise SignatureMalformed("signed content type is not id-data")
        content = None
        if attached:
            if isinstance(encap["content"], core.Void):
                raise SignatureMalformed("the signature carries no content")
            content = encap["content"].native
            if not isinstance(content, bytes):
                raise SignatureMalformed("the signed content is not an octet string")
        elif not isinstance(encap["content"], core.Void):
            raise SignatureMalformed("signature is not detached")
        signer_infos = list(signed_data["signer_infos"])
        if len(signer_infos) != 1:
            raise SignatureMalformed("signature must have exactly one signer")
        info = signer_infos[0]

        algorithm = info["signature_algorithm"]
        algorithm_oid = algorithm["algorithm"]
        kind = _SIGNATURE_KINDS.get(algorithm_oid.contents)
        digest_oid = info["digest_algorithm"]["algorithm"]
        signed_attrs = info["signed_attrs"]
        content_types: list[list[bytes]] = []
        message_digests: list[list[bytes]] = []
        signed_attrs_der = None
        if not isinstance(signed_attrs, core.Void):
            signed_attrs_der = signed_attrs.dump()
            for attribute in signed_attrs:
                attribute_type = attribute["type"].contents
                if attribute_type == _CONTENT_TYPE:
                    content_types.append([v.parse(core.ObjectIdentifier).contents for v in attribute["values"]])
                elif attribute_type == _MESSAGE_DIGEST:
                    message_digests.append([v.parse(core.OctetString).native for v in attribute["values"]])
        sid = info["sid"]
        chosen = sid.chosen
        by_serial = sid.name == "issuer_and_serial_number"
        included = signed_data["certificates"]
        return _SignerInfo(
            digest_name=_DIGEST_NAMES.get(digest_oid.contents) or digest_oid.native,
            signature_kind=kind,
            signature_oid=algorithm_oid.dotted if kind is None else "",  # for the error message
            pss=_read_pss(algorithm["parameters"].dump()) if kind == "rsassa_pss" else None,
            signature=info["signature"].native,
            signed_attrs_der=signed_attrs_der,
            content_types=content_types,
            message_digests=message_digests,
            signer_issuer_der=chosen["issuer"].dump() if by_serial else None,
            signer_serial=chosen["serial_number"].native if by_serial else None,
            signer_key_id=None if by_serial else chosen.native,
            certificate_ders=() if isinstance(included, core.Void) else _certificate_ders(included.dump()),
            content=content,
        )
    except (SignatureMalformed, SignatureInvalid):
        raise
    except Exception as exc:  # asn1crypto raises ValueError, TypeError, KeyError, ... on junk
        raise SignatureMalformed("signature is not a valid DER CMS structure") from exc


@functools.lru_cache(maxsize=4096)
def _certificate_ders(certificate_set: bytes) -> tuple[bytes, ...]:
    """The certificates in a SignedData's certificates field ([0] IMPLICIT tag included). A device
    sends the same ones with every request: they are split out once per distinct encoding
    (a pure function of the bytes; failures raise and are not cached)."""
    # The "certificate" choice is untagged: its encoding is the certificate's DER.
    return tuple(choice.dump() for choice in cms.CertificateSet.load(certificate_set, implicit=0, strict=True)
                 if choice.name == "certificate")


@functools.lru_cache(maxsize=64)
def _read_pss(encoded: bytes) -> _Pss:
    """The RSASSA-PSS parameters' DER (b"" when absent). A signer sends the same few encodings every
    time and asn1crypto's default handling here costs more than the whole rest of the walk, so
    they are read once per distinct encoding (failures raise and are not cached)."""
    # RFC 4055: absent parameters mean SHA-1, MGF1 with SHA-1, salt 20, trailer 1.
    params = algos.RSASSAPSSParams.load(encoded, strict=True) if encoded else algos.RSASSAPSSParams()
    mgf = params["mask_gen_algorithm"]
    return _Pss(
        hash_name=params["hash_algorithm"]["algorithm"].native,
        mgf_name=mgf["algorithm"].native,
        mgf_hash_name=mgf["parameters"]["algorithm"].native,
        salt_length=params["salt_length"].native,
        trailer_field=int(params["trailer_field"]),
    )


def _find_signer(signer: _SignerInfo) -> x509.Certificate:
    """The included certificate the SignerInfo names (RFC 5652 5.3). cryptography reads the
    certificates: several times faster than walking them with asn1crypto."""
    try:
        certificates = [load_der(der) for der in signer.certificate_ders]
    except ValueError as exc:
        raise SignatureMalformed("an included certificate is not valid DER") from exc
    for certificate, der in zip(certificates, signer.certificate_ders):
        if signer.signer_key_id is not None:
            if _key_identifier(certificate) == signer.signer_key_id:
                return certificate
        elif certificate.serial_number == signer.signer_serial and _same_issuer(certificate, der, signer):
            return certificate
    raise SignatureInvalid("signer certificate is not included in the signature")


def _same_issuer(certificate: x509.Certificate, der: bytes, signer: _SignerInfo) -> bool:
    if certificate.issuer.public_bytes() == signer.signer_issuer_der:
        return True  # the usual case: the very same bytes
    # Equal names may be encoded differently (RFC 5280 7.1): compare them as asn1crypto does.
    try:
        issuer = asn1_x509.Certificate.load(der)["tbs_certificate"]["issuer"]
        return issuer == asn1_x509.Name.load(signer.signer_issuer_der)
    except Exception:  # noqa: BLE001 - unreadable means not equal
        return False


def _key_identifier(certificate: x509.Certificate) -> bytes:
    try:
        return certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    except x509.ExtensionNotFound:
        # No extension: RFC 5280 4.2.1.2 method (1), as OpenSSL computes it.
        try:
            return x509.SubjectKeyIdentifier.from_public_key(certificate.public_key()).digest
        except (ValueError, UnsupportedAlgorithm, TypeError):
            return b""


def _hash_class(digest_name: str) -> type[hashes.HashAlgorithm]:
    try:
        return _HASHES[digest_name]
    except KeyError:
        raise SignatureInvalid(f"unsupported digest algorithm {digest_name}") from None


def _check_signed_attributes(signer: _SignerInfo, body: bytes) -> None:
    # RFC 5652 11.1 / 11.2: each must appear exactly once, with exactly one value.
    if len(signer.content_types) != 1 or len(signer.content_types[0]) != 1:
        raise SignatureMalformed("signed attributes need exactly one content-type")
    if signer.content_types[0][0] != _DATA:
        raise SignatureMalformed("signed content-type attribute is not id-data")
    if len(signer.message_digests) != 1 or len(signer.message_digests[0]) != 1:
        raise SignatureMalformed("signed attributes need exactly one message-digest")
    claimed = signer.message_digests[0][0]
    actual = hashlib.new(signer.digest_name, body).digest()
    # The check that binds the signature to this body; constant-time so a forger learns nothing.
    if not hmac.compare_digest(claimed, actual):
        raise SignatureInvalid("message digest does not match the body")


def _verify(certificate: x509.Certificate, signer: _SignerInfo, signed_bytes: bytes, hash_cls) -> None:
    try:
        public_key = certificate.public_key()
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise SignatureInvalid("signer certificate has an unsupported public key") from exc
    kind = signer.signature_kind
    if kind is None:
        raise SignatureInvalid(f"unsupported signature algorithm {signer.signature_oid}")

    try:
        if kind == "rsassa_pkcs1v15" and isinstance(public_key, rsa.RSAPublicKey):
            public_key.verify(signer.signature, signed_bytes, padding.PKCS1v15(), hash_cls())
        elif kind == "rsassa_pss" and isinstance(public_key, rsa.RSAPublicKey):
            pss, pss_hash = _pss_padding(signer.pss)
            public_key.verify(signer.signature, signed_bytes, pss, pss_hash)
        elif kind == "ecdsa" and isinstance(public_key, ec.EllipticCurvePublicKey):
            public_key.verify(signer.signature, signed_bytes, ec.ECDSA(hash_cls()))
        else:
            raise SignatureInvalid(f"signature algorithm {kind} does not fit the signer's key")
    except InvalidSignature:
        raise SignatureInvalid("signature does not verify with the signer certificate") from None
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise SignatureInvalid(f"signature cannot be checked: {exc}") from None


def _pss_padding(pss: _Pss) -> tuple[padding.PSS, hashes.HashAlgorithm]:
    if pss.mgf_name != "mgf1":
        raise SignatureInvalid("RSA-PSS mask generation function is not MGF1")
    if pss.trailer_field != 1:
        raise SignatureInvalid("RSA-PSS trailer field is not 1")
    if pss.salt_length < 0:
        raise SignatureInvalid("RSA-PSS salt length is negative")
    mgf = padding.MGF1(_hash_class(pss.mgf_hash_name)())
    return padding.PSS(mgf=mgf, salt_length=pss.salt_length), _hash_class(pss.hash_name)()
