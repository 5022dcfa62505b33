"""Who is speaking: the device certificate behind a device request, checked against our trust anchors.

Sources, first present wins (issue 3, "Device identity"):
1. the `Mdm-Signature` header: CMS over the exact body (works through TLS-terminating proxies);
2. the TLS client certificate, when this process terminates TLS (appliance.web.tls_peer);
3. the header named by `[identity] cert_header`, only from an address in `[identity] trusted_proxies`.
A source that is present but bad is refused; we never fall back to a weaker one. The certificate
must then be issued by the appliance CA or a CA in `[identity] trusted_ca_files`, and be valid
(give or take `[identity] clock_skew`). Binding the certificate to a device is the service's job.

Usage in a device endpoint (synchronous; the CMS check is ~0.3 ms of CPU, cheaper than a thread hop):

    try:
        certificate = device_certificate(rt, scope, headers, body)   # headers: lower-case names
    except IdentityError as exc:
        ...answer exc.status (400 or 403, never 401) with exc.reason
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from appliance.config import Config, ConfigError
from appliance.identity.certificate import load_ca_certificates, load_der
from appliance.identity.cms import verify_detached_signature
from appliance.identity.errors import IdentityError, NoDeviceIdentity
from appliance.identity.peer import is_trusted_proxy, parse_client_cert_header
from appliance.identity.trust import TrustAnchors
from appliance.logs import get_logger
from appliance.web.tls_peer import client_cert_der

log = get_logger("identity")

SIGNATURE_HEADER = "mdm-signature"


@dataclass(frozen=True)
class DeviceIdentification:
    """Built once per runtime at start (runtime.trust); read-only afterwards."""

    anchors: TrustAnchors
    ca_certificates: tuple[x509.Certificate, ...]
    cert_header: str | None
    trusted_proxies: tuple[str, ...]

    @classmethod
    def from_config(cls, config: Config, appliance_ca: x509.Certificate) -> DeviceIdentification:
        cas = [appliance_ca]
        for path in config.identity.trusted_ca_files:
            cas.extend(load_ca_file(path, config.source))
        try:
            anchors = TrustAnchors(cas, dt.timedelta(seconds=config.identity.clock_skew))
        except ValueError as exc:
            raise ConfigError(config.source, [f"identity.trusted_ca_files: {exc}"]) from None
        return cls(anchors, tuple(cas), config.identity.cert_header, tuple(config.identity.trusted_proxies))

    def ca_bundle_pem(self) -> bytes:
        """The CAs a TLS client certificate may come from, for the listener's verify locations."""
        return b"".join(ca.public_bytes(serialization.Encoding.PEM) for ca in self.ca_certificates)

    def source_of(self, *, signature: str | None, tls_cert_der: bytes | None, proxy_cert: str | None) -> str:
        """Which identity source a request uses: "signature", "tls", "proxy" or "none"."""
        if signature is not None:
            return "signature"
        if tls_cert_der is not None:
            return "tls"
        # nginx sends the header empty when the client presented no certificate.
        if proxy_cert and proxy_cert.strip() and self.cert_header is not None:
            return "proxy"
        return "none"

    def identify(
        self,
        *,
        body: bytes,
        signature: str | None,
        tls_cert_der: bytes | None,
        proxy_cert: str | None,
        peer_addr: str | None,
        now: dt.datetime | None = None,
    ) -> x509.Certificate:
        """The certificate of a trusted device identity, or an IdentityError."""
        source = self.source_of(signature=signature, tls_cert_der=tls_cert_der, proxy_cert=proxy_cert)
        if source == "signature":
            certificate = verify_detached_signature(signature, body)
        elif source == "tls":
            try:
                certificate = load_der(tls_cert_der)
            except ValueError:  # OpenSSL accepted it, so this should not happen; refuse anyway
                raise NoDeviceIdentity("TLS client certificate cannot be read") from None
        elif source == "proxy":
            if not is_trusted_proxy(peer_addr, self.trusted_proxies):
                raise NoDeviceIdentity(f"{self.cert_header} header is accepted only from a trusted proxy")
            certificate = parse_client_cert_header(proxy_cert)
        else:
            raise NoDeviceIdentity("no device identity: send Mdm-Signature or a TLS client certificate")
        self.anchors.check(certificate, now)
        return certificate


def load_ca_file(path: Path, source: Path | None = None) -> list[x509.Certificate]:
    """The CA certificates in a PEM (or DER) file; a ConfigError if unreadable or not CAs."""
    try:
        return load_ca_certificates(path.read_bytes())
    except OSError as exc:
        raise ConfigError(source, [f"identity.trusted_ca_files: cannot read {path}: {exc.strerror or exc}"]) from None
    except ValueError as exc:
        raise ConfigError(source, [f"identity.trusted_ca_files: {path}: {exc}"]) from None


def device_certificate(rt, scope: dict, headers: Mapping[str, str], body: bytes) -> x509.Certificate:
    """The trusted certificate of the device sending the request of ASGI `scope`, whose headers
    (looked up by lower-case name: a dict of them, or quart's case-insensitive request.headers)
    and whole body are given. Synchronous. Raises IdentityError subclasses: SignatureMalformed and
    CertificateHeaderMalformed (status 400); SignatureInvalid, UntrustedCertificate,
    NoDeviceIdentity (status 403). Each carries `.status` and a short plain-text `.reason`;
    the refusal is logged here with its details."""
    identification: DeviceIdentification = rt.trust
    client = scope.get("client")
    peer_addr = client[0] if client else None
    sources = {
        "signature": headers.get(SIGNATURE_HEADER),
        "tls_cert_der": client_cert_der(scope),
        "proxy_cert": headers.get(identification.cert_header.lower()) if identification.cert_header else None,
    }
    source = identification.source_of(**sources)
    try:
        certificate = identification.identify(body=body, peer_addr=peer_addr, **sources)
    except IdentityError as exc:
        rt.metrics.device_identity.labels(source, type(exc).__name__).inc()
        log.warning(
            "device_identity_refused",
            source=source,
            status=exc.status,
            reason=exc.reason,
            error=type(exc).__name__,
            cause=repr(exc.__cause__) if exc.__cause__ else None,
            peer=peer_addr,
            path=scope.get("path"),
        )
        raise
    rt.metrics.device_identity.labels(source, "ok").inc()
    if log.is_enabled("debug"):
        fingerprint = hashlib.sha256(certificate.public_bytes(serialization.Encoding.DER)).hexdigest()
        log.debug("device_identity", source=source, cert_sha256=fingerprint, peer=peer_addr)
    return certificate
