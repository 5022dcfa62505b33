"""Why a device request could not be attributed to a trusted device identity.

Each error carries a short ``reason`` (safe to send back as plain text) and the HTTP ``status``
the device endpoints answer with: 400 for input that cannot be parsed, 403 for identity
failures. Never 401: a device that gets 401 drops its enrollment (PROTOCOL.md section 3).
"""


class IdentityError(Exception):
    status = 403

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class SignatureMalformed(IdentityError):
    """The Mdm-Signature header is not base64 of a DER CMS SignedData we can read."""

    status = 400


class SignatureInvalid(IdentityError):
    """The signature is readable but does not prove the body came from the included certificate."""


class UntrustedCertificate(IdentityError):
    """The certificate is not issued by a trusted CA or is outside its validity."""


class CertificateHeaderMalformed(IdentityError):
    """A trusted proxy's client-certificate header cannot be decoded."""

    status = 400


class NoDeviceIdentity(IdentityError):
    """The request carries none of the accepted identity sources."""
