"""Is a device certificate issued by a CA we trust, and valid now (give or take clock skew)?

Sans-I/O. Device identities are issued directly by a trust anchor (our CA, or a CA named in
`[identity] trusted_ca_files`; put intermediates there too). Not cryptography.x509.verification:
its client policy insists on a SubjectAltName, which SCEP-issued device certificates lack.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm

from appliance import clock
from appliance.identity.certificate import decode_all, is_ca
from appliance.identity.errors import UntrustedCertificate


# Certificates that passed the issuer check, remembered so that a device's every request costs a
# dictionary lookup and a date comparison instead of a signature verification (~75 us).
_VOUCHED_MAX = 4096


class TrustAnchors:
    def __init__(self, ca_certs: Iterable[x509.Certificate], clock_skew: dt.timedelta) -> None:
        self.clock_skew = clock_skew
        self._by_subject: dict[x509.Name, list[x509.Certificate]] = {}
        # certificate -> (not before, not after); only the dates can change a verdict once given.
        self._vouched: dict[x509.Certificate, tuple[dt.datetime, dt.datetime]] = {}
        for ca in ca_certs:
            if not is_ca(ca, if_unsaid=True):  # an old v1 root has no extensions: accepted
                raise ValueError(f"trust anchor {ca.subject.rfc4514_string()} is not a CA certificate")
            self._by_subject.setdefault(ca.subject, []).append(ca)

    def __len__(self) -> int:
        return sum(len(cas) for cas in self._by_subject.values())

    def check(self, cert: x509.Certificate, now: dt.datetime | None = None) -> None:
        """Raise UntrustedCertificate unless `cert` is a non-CA certificate issued by an anchor
        and inside its validity period widened by the clock skew on both ends."""
        now = now or clock.now()
        vouched = self._vouched.get(cert)
        if vouched is not None:
            self._check_dates(*vouched, now)
            return
        # cryptography decodes names and extensions lazily: read everything callers (binding,
        # logging) will touch now, so a certificate that fails later cannot turn into a 500.
        try:
            decode_all(cert)
            a_ca = is_ca(cert, if_unsaid=False)
        except Exception:  # ValueError, TypeError, DuplicateExtension, ... from cryptography
            raise UntrustedCertificate("certificate cannot be decoded") from None
        issuer = cert.issuer
        not_before, not_after = cert.not_valid_before_utc, cert.not_valid_after_utc
        if a_ca:
            raise UntrustedCertificate("a CA certificate is not a device identity")
        self._check_dates(not_before, not_after, now)

        candidates = self._by_subject.get(issuer, [])
        if not candidates:
            raise UntrustedCertificate("certificate is not issued by a trusted CA")
        for ca in candidates:  # several when a CA was renewed under the same name
            try:
                cert.verify_directly_issued_by(ca)
            except (InvalidSignature, ValueError, TypeError, UnsupportedAlgorithm):
                continue
            if len(self._vouched) >= _VOUCHED_MAX:
                del self._vouched[next(iter(self._vouched))]  # the oldest entry
            self._vouched[cert] = (not_before, not_after)
            return
        raise UntrustedCertificate("certificate signature does not verify with the trusted CA")

    def _check_dates(self, not_before: dt.datetime, not_after: dt.datetime, now: dt.datetime) -> None:
        if now + self.clock_skew < not_before:
            raise UntrustedCertificate("certificate is not yet valid")
        if now - self.clock_skew > not_after:
            raise UntrustedCertificate("certificate has expired")
