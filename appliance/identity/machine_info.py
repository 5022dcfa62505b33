"""Is a MachineInfo request really from an Apple device? Its CMS signature, and the signer's chain.

Apple: the dictionary is CMS-signed with the device identity certificate; the signature includes that
certificate and the intermediates, and the chain validates against the Apple Root CA. So: the content must
verify with the signer's key (appliance.identity.cms), and each certificate up from the signer must be
signed by the next, found among the included ones and the configured anchors, until one is an anchor.

Validity dates are not checked on this chain: Apple's "Apple iPhone Device CA", which issues device
identities, expired in 2014 and still vouches for every device Apple makes; what a signature proves here
is that an Apple-made device key signed this machine info, not when.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from appliance.identity.certificate import load_der
from appliance.identity.cms import verify_attached_signature
from appliance.identity.errors import SignatureInvalid

# The bundle shipped with the appliance: Apple Root CA, Apple iPhone Certification Authority and Apple
# iPhone Device CA (the certificates Apple publishes at https://www.apple.com/certificateauthority/; this
# copy as zentralopensource/zentral ships it, zentral/contrib/mdm/assets/Apple_iPhone_Device_CA_Fullchain.pem).
APPLE_DEVICE_CA_BUNDLE = Path(__file__).with_name("apple_device_ca.pem")
MAX_CHAIN = 6


class UntrustedMachineInfo(SignatureInvalid):
    """The signature verifies, but the signer does not chain to a configured anchor (403)."""


class MachineInfoAnchors:
    """The CA certificates machine info signatures must chain to ([ade] device_ca_files)."""

    def __init__(self, certificates: Iterable[x509.Certificate]) -> None:
        self._anchors = list(certificates)
        self._by_subject: dict[x509.Name, list[x509.Certificate]] = {}
        for certificate in self._anchors:
            self._by_subject.setdefault(certificate.subject, []).append(certificate)

    @classmethod
    def from_files(cls, paths: Iterable[Path]) -> MachineInfoAnchors:
        certificates: list[x509.Certificate] = []
        for path in paths:
            certificates.extend(x509.load_pem_x509_certificates(Path(path).read_bytes()))
        return cls(certificates)

    def __len__(self) -> int:
        return len(self._anchors)

    def verify(self, der: bytes) -> bytes:
        """The signed content (the MachineInfo plist), or an IdentityError: SignatureMalformed (400) when it is
        not a SignedData with content, SignatureInvalid (403) when the signature or the chain fails."""
        signer, content, included_ders = verify_attached_signature(der)
        included: dict[x509.Name, list[x509.Certificate]] = {}
        for item in included_ders:
            try:
                certificate = load_der(item)
            except ValueError:
                continue
            included.setdefault(certificate.subject, []).append(certificate)
        self._chain(signer, included)
        return content

    def _chain(self, signer: x509.Certificate, included: dict[x509.Name, list[x509.Certificate]]) -> None:
        current = signer
        for _ in range(MAX_CHAIN):
            if current in self._anchors:
                return
            issuers = [*self._by_subject.get(current.issuer, ()), *included.get(current.issuer, ())]
            parent = next((issuer for issuer in issuers if issuer != current and _signed_by(current, issuer)), None)
            if parent is None:
                raise UntrustedMachineInfo("machine info signer does not chain to a trusted device CA "
                                           f"(issuer {current.issuer.rfc4514_string()[:120]})")
            if parent in self._anchors:
                return
            current = parent
        raise UntrustedMachineInfo("machine info signer chain is too long")


def _signed_by(certificate: x509.Certificate, issuer: x509.Certificate) -> bool:
    """Issued by `issuer`: names match and its key made the signature. Not verify_directly_issued_by:
    that refuses SHA-1, which every Apple device CA above the device certificate is signed with."""
    if certificate.issuer != issuer.subject:
        return False
    try:
        key = issuer.public_key()
        if isinstance(key, rsa.RSAPublicKey):
            key.verify(certificate.signature, certificate.tbs_certificate_bytes,
                       certificate.signature_algorithm_parameters, certificate.signature_hash_algorithm)
        elif isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(certificate.signature, certificate.tbs_certificate_bytes,
                       certificate.signature_algorithm_parameters)
        else:
            return False
        return True
    except (InvalidSignature, ValueError, TypeError, UnsupportedAlgorithm):
        return False
