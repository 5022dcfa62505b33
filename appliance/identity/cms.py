"""Verify the `Mdm-Signature` header: a detached CMS SignedData over the exact request body.

Sans-I/O: bytes in, the signer's certificate out (or an IdentityError). asn1crypto parses
the structure; cryptography does every hash and signature check. cryptography has no
public CMS verify API, hence this module. Order and rules: PROTOCOL.md section 4.
Trust (who issued the certificate) is checked separately, in trust.py.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac

from asn1crypto import algos, cms, core
from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from appliance.identity.errors import SignatureInvalid, SignatureMalformed

# asn1crypto digest algorithm names -> cryptography hash classes.
_HASHES: dict[str, type[hashes.HashAlgorithm]] = {
    "sha1": hashes.SHA1,
    "sha224": hashes.SHA224,
    "sha256": hashes.SHA256,
    "sha384": hashes.SHA384,
    "sha512": hashes.SHA512,
}

# A real header is a few KiB (signature plus one or two certificates); refuse to base64-decode
# and parse megabytes of junk.
MAX_SIGNATURE_LENGTH = 64 * 1024


def verify_detached_signature(signature: bytes | str, body: bytes) -> x509.Certificate:
    """Return the certificate whose key signed `body`, per the base64 DER CMS in `signature`.

    Raises SignatureMalformed (answer 400) when the header cannot be read as a detached
    SignedData, SignatureInvalid (answer 403) when it does not prove the body.
    """
    signer_info, certificates = _parse(signature)
    digest_name = _name_of(signer_info["digest_algorithm"]["algorithm"])
    hash_cls = _hash_class(digest_name)

    signed_attrs = signer_info["signed_attrs"]
    if signed_attrs.native is None:
        # RFC 5652 5.4: without signed attributes the signature covers the content itself.
        signed_bytes = body
    else:
        _check_signed_attributes(signed_attrs, body, digest_name)
        # RFC 5652 5.4: the signature covers the attributes' DER as received, with the
        # [0] IMPLICIT tag replaced by the SET OF tag. Re-encoding could change the bytes.
        original = signed_attrs.dump()
        signed_bytes = b"\x31" + original[1:]

    asn1_cert = _find_signer(signer_info["sid"], certificates)
    try:
        certificate = x509.load_der_x509_certificate(asn1_cert.dump())
    except ValueError as exc:
        raise SignatureMalformed("signer certificate is not valid DER") from exc

    _verify(certificate, signer_info, signed_bytes, hash_cls)
    return certificate


def _parse(signature: bytes | str) -> tuple[cms.SignerInfo, list]:
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
        der = base64.b64decode(signature, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise SignatureMalformed("signature header is not base64") from exc

    # asn1crypto parses lazily: any field access can be the one that finds the junk, so the
    # whole walk through the structure is one guarded block.
    try:
        content_info = cms.ContentInfo.load(der, strict=True)
        if content_info["content_type"].native != "signed_data":
            raise SignatureMalformed("signature is not a CMS SignedData")
        signed_data = content_info["content"]
        encap = signed_data["encap_content_info"]
        if encap["content_type"].native != "data":
            raise SignatureMalformed("signed content type is not id-data")
        if encap["content"].native is not None:
            raise SignatureMalformed("signature is not detached")
        signer_infos = list(signed_data["signer_infos"])
        if len(signer_infos) != 1:
            raise SignatureMalformed("signature must have exactly one signer")
        signer_info = signer_infos[0]
        included = signed_data["certificates"]
        certificates = [] if isinstance(included, core.Void) else [
            choice.chosen for choice in included if choice.name == "certificate"
        ]
        # Touch every field used later so a parse error surfaces here, as a 400.
        signer_info["digest_algorithm"]["algorithm"].native
        signer_info["signature_algorithm"]["algorithm"].native
        signer_info["signature_algorithm"]["parameters"].native
        signer_info["signed_attrs"].native
        signer_info["sid"].native
        signer_info["signature"].native
        for certificate in certificates:
            certificate.issuer.native, certificate.serial_number, certificate.key_identifier
            certificate.public_key["public_key"].native
    except SignatureMalformed:
        raise
    except Exception as exc:  # asn1crypto raises ValueError, TypeError, KeyError, ... on junk
        raise SignatureMalformed("signature is not a valid DER CMS structure") from exc
    return signer_info, certificates


def _name_of(oid) -> str:
    # asn1crypto gives a dotted string for OIDs it has no name for.
    return oid.native


def _hash_class(digest_name: str) -> type[hashes.HashAlgorithm]:
    try:
        return _HASHES[digest_name]
    except KeyError:
        raise SignatureInvalid(f"unsupported digest algorithm {digest_name}") from None


def _check_signed_attributes(signed_attrs, body: bytes, digest_name: str) -> None:
    by_type: dict[str, list] = {}
    for attribute in signed_attrs:
        by_type.setdefault(attribute["type"].native, []).append(attribute["values"])

    # RFC 5652 11.1 / 11.2: each must appear exactly once with exactly one value.
    content_types = by_type.get("content_type", [])
    if len(content_types) != 1 or len(content_types[0]) != 1:
        raise SignatureMalformed("signed attributes need exactly one content-type")
    if content_types[0][0].native != "data":
        raise SignatureMalformed("signed content-type attribute is not id-data")

    digests = by_type.get("message_digest", [])
    if len(digests) != 1 or len(digests[0]) != 1:
        raise SignatureMalformed("signed attributes need exactly one message-digest")
    claimed = digests[0][0].native
    actual = hashlib.new(digest_name, body).digest()
    # The check that binds the signature to this body; constant-time so a forger learns nothing.
    if not hmac.compare_digest(claimed, actual):
        raise SignatureInvalid("message digest does not match the body")


def _find_signer(sid: cms.SignerIdentifier, certificates: list):
    if sid.name == "issuer_and_serial_number":
        issuer = sid.chosen["issuer"]
        serial = sid.chosen["serial_number"].native
        for certificate in certificates:
            if certificate.serial_number == serial and certificate.issuer == issuer:
                return certificate
    else:
        key_id = sid.chosen.native
        for certificate in certificates:
            if _key_identifier(certificate) == key_id:
                return certificate
    raise SignatureInvalid("signer certificate is not included in the signature")


def _key_identifier(certificate) -> bytes:
    if certificate.key_identifier is not None:
        return certificate.key_identifier
    # No extension: RFC 5280 4.2.1.2 method (1), as OpenSSL computes it.
    return hashlib.sha1(certificate.public_key["public_key"].contents[1:]).digest()


def _verify(certificate: x509.Certificate, signer_info, signed_bytes: bytes, hash_cls) -> None:
    algorithm = signer_info["signature_algorithm"]
    signature = signer_info["signature"].native
    try:
        public_key = certificate.public_key()
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise SignatureInvalid("signer certificate has an unsupported public key") from exc
    try:
        kind = algorithm.signature_algo
    except ValueError:
        raise SignatureInvalid(f"unsupported signature algorithm {algorithm['algorithm'].native}") from None

    try:
        if kind == "rsassa_pkcs1v15" and isinstance(public_key, rsa.RSAPublicKey):
            public_key.verify(signature, signed_bytes, padding.PKCS1v15(), hash_cls())
        elif kind == "rsassa_pss" and isinstance(public_key, rsa.RSAPublicKey):
            pss, pss_hash = _pss_padding(algorithm["parameters"])
            public_key.verify(signature, signed_bytes, pss, pss_hash)
        elif kind == "ecdsa" and isinstance(public_key, ec.EllipticCurvePublicKey):
            public_key.verify(signature, signed_bytes, ec.ECDSA(hash_cls()))
        else:
            raise SignatureInvalid(f"signature algorithm {kind} does not fit the signer's key")
    except InvalidSignature:
        raise SignatureInvalid("signature does not verify with the signer certificate") from None
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise SignatureInvalid(f"signature cannot be checked: {exc}") from None


def _pss_padding(params) -> tuple[padding.PSS, hashes.HashAlgorithm]:
    # RFC 4055: absent fields mean SHA-1, MGF1 with SHA-1, salt 20, trailer 1.
    if isinstance(params, core.Void):
        params = algos.RSASSAPSSParams()
    hash_cls = _hash_class(params["hash_algorithm"]["algorithm"].native)
    mgf = params["mask_gen_algorithm"]
    if mgf["algorithm"].native != "mgf1":
        raise SignatureInvalid("RSA-PSS mask generation function is not MGF1")
    mgf_hash_cls = _hash_class(mgf["parameters"]["algorithm"].native)
    if params["trailer_field"].native != "trailer_field_bc":
        raise SignatureInvalid("RSA-PSS trailer field is not 1")
    salt_length = params["salt_length"].native
    return padding.PSS(mgf=padding.MGF1(mgf_hash_cls()), salt_length=salt_length), hash_cls()
