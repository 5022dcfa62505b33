"""CMS EnvelopedData (RFC 5652 section 6) opened with a certificate's private key: a SCEP request's
pkcsPKIEnvelope, and the server token file Apple Business Manager encrypts to an MDM server's certificate.

cryptography's own pkcs7 decryption takes AES-CBC only; SCEP clients and older token files use 3DES too,
so the envelope is read with asn1crypto and decrypted with cryptography's primitives. RSA key transport
(PKCS#1 v1.5) only, as both senders use. Every failure is an EnvelopeError whose `kind` says what kind.
"""

from __future__ import annotations

import functools

from asn1crypto import cms, parser, x509 as asn1_x509
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives import padding as sym_padding
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.serialization import Encoding

CIPHERS = {  # asn1crypto name -> (key bytes, cipher factory)
    "aes128_cbc": (16, algorithms.AES),
    "aes192_cbc": (24, algorithms.AES),
    "aes256_cbc": (32, algorithms.AES),
    "tripledes_3key": (24, TripleDES),
    "des": (8, TripleDES),  # single DES is TripleDES with K1=K2=K3
}

# What reading hostile DER can raise (asn1crypto parses lazily; AttributeError: a universal type without
# a Python value, found by fuzzing the SCEP endpoint).
PARSE_ERRORS = (ValueError, TypeError, KeyError, IndexError, OverflowError, AttributeError, UnsupportedAlgorithm)

MALFORMED, UNSUPPORTED, NOT_ADDRESSED, UNDECRYPTABLE = "malformed", "unsupported", "not_addressed", "undecryptable"


class EnvelopeError(ValueError):
    def __init__(self, reason: str, kind: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.kind = kind


def cipher(name: str, key: bytes, iv: bytes) -> Cipher:
    size, factory = CIPHERS[name]
    if len(key) != size:
        raise ValueError("content-encryption key has the wrong size")
    if name == "des":
        key = key * 3
    return Cipher(factory(key), modes.CBC(iv))


def load_enveloped_data(der: bytes) -> cms.EnvelopedData:
    """A ContentInfo holding an EnvelopedData, read from DER."""
    try:
        info = cms.ContentInfo.load(der, strict=True)
        if info["content_type"].native != "enveloped_data":
            raise EnvelopeError("not a CMS EnvelopedData", MALFORMED)
        return info["content"]
    except EnvelopeError:
        raise
    except PARSE_ERRORS as exc:
        raise EnvelopeError(f"not a CMS structure ({_short(exc)})", MALFORMED) from None


def open_enveloped_data(envelope: cms.EnvelopedData, certificate: x509.Certificate,
                        key: rsa.RSAPrivateKey) -> bytes:
    """The content of an envelope addressed to `certificate`, decrypted with its `key`."""
    try:
        return _open(envelope, certificate, key)
    except EnvelopeError:
        raise
    except PARSE_ERRORS as exc:  # asn1crypto parses lazily: junk deep inside surfaces anywhere here
        raise EnvelopeError(f"malformed envelope: {_short(exc)}", MALFORMED) from None


def _open(envelope: cms.EnvelopedData, certificate: x509.Certificate, key: rsa.RSAPrivateKey) -> bytes:
    eci = envelope["encrypted_content_info"]
    algo = eci["content_encryption_algorithm"]
    name = algo["algorithm"].native
    if name not in CIPHERS:
        raise EnvelopeError(f"unsupported content encryption {name}", UNSUPPORTED)
    iv = algo["parameters"].native
    ciphertext = _encrypted_content(eci)
    candidates = _recipients(envelope, certificate)
    if not candidates:
        raise EnvelopeError("the envelope is not addressed to this certificate", NOT_ADDRESSED)
    if not isinstance(iv, bytes) or not ciphertext:
        raise EnvelopeError("envelope without IV or content", MALFORMED)
    for ktri in candidates:
        key_algo = ktri["key_encryption_algorithm"]["algorithm"].native
        if key_algo not in ("rsaes_pkcs1v15", "rsa"):
            raise EnvelopeError(f"unsupported key transport {key_algo}", UNSUPPORTED)
        encrypted_key = ktri["encrypted_key"].native
        try:
            content_key = key.decrypt(encrypted_key, padding.PKCS1v15())
            decryptor = cipher(name, content_key, iv).decryptor()
            padded = decryptor.update(ciphertext) + decryptor.finalize()
            block_bits = 64 if name in ("des", "tripledes_3key") else 128
            unpadder = sym_padding.PKCS7(block_bits).unpadder()
            return unpadder.update(padded) + unpadder.finalize()
        except ValueError:
            continue  # one failure reason for every step: no padding oracle by message
    raise EnvelopeError("the envelope does not decrypt with this key", UNDECRYPTABLE)


def addressed_to(envelope: cms.EnvelopedData, certificate: x509.Certificate) -> bool:
    """Whether a recipient of the envelope names `certificate` (issuer and serial, or key identifier)."""
    try:
        return bool(_matching(envelope, certificate)[0])
    except PARSE_ERRORS:
        return False


def _short(exc: Exception) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text[:120]


def _encrypted_content(eci: cms.EncryptedContentInfo) -> bytes:
    """The ciphertext, primitive or BER-constructed.

    Go's pkcs7 (micromdm/scep's client) writes encryptedContent [0] as a definite-length
    constructed string holding OCTET STRINGs, which asn1crypto only accepts in indefinite form.
    """
    rest = eci.contents
    while rest:
        size = parser.peek(rest)
        class_, method, tag, _, contents, _ = parser.parse(rest[:size])
        rest = rest[size:]
        if class_ == 2 and tag == 0:
            return _string_octets(contents, method == 1)
    return b""


def _string_octets(contents: bytes, constructed: bool, depth: int = 0) -> bytes:
    if not constructed:
        return contents
    if depth > 8:
        raise ValueError("constructed string nested too deep")
    chunks, rest = [], contents
    while rest:
        size = parser.peek(rest)
        class_, method, tag, _, inner, _ = parser.parse(rest[:size])
        rest = rest[size:]
        if class_ == 0 and tag == 0:  # end-of-contents of an indefinite form
            break
        if class_ != 0 or tag != 4:
            raise ValueError("constructed encryptedContent holds something else than OCTET STRINGs")
        chunks.append(_string_octets(inner, method == 1, depth + 1))
    return b"".join(chunks)


@functools.lru_cache(maxsize=16)
def _asn1(der: bytes) -> asn1_x509.Certificate:
    return asn1_x509.Certificate.load(der)


def _recipients(envelope: cms.EnvelopedData, certificate: x509.Certificate) -> list:
    matching, others = _matching(envelope, certificate)
    if not matching:
        # Some SCEP clients name the recipient oddly (a re-encoded issuer): the key may still open it.
        return others
    return matching + others


def _matching(envelope: cms.EnvelopedData, certificate: x509.Certificate) -> tuple[list, list]:
    ours = _asn1(certificate.public_bytes(Encoding.DER))
    matching, others = [], []
    for info in envelope["recipient_infos"]:
        if info.name != "ktri":
            continue
        ktri = info.chosen
        rid = ktri["rid"]
        if rid.name == "issuer_and_serial_number":
            hit = (rid.chosen["serial_number"].native == ours.serial_number
                   and rid.chosen["issuer"].dump() == ours.issuer.dump())
        else:
            hit = rid.chosen.native == ours.key_identifier
        (matching if hit else others).append(ktri)
    return matching, others
