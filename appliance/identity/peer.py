"""Client certificates handed over by a TLS-terminating reverse proxy, and whom to believe.

Sans-I/O. Accepted header forms:
- RFC 9440 `Client-Cert`: a structured-field byte sequence, `:<base64 DER>:`;
- nginx `$ssl_client_escaped_cert` (also AWS ALB, Caddy): URL-escaped PEM;
- plain PEM or bare base64 DER, which some proxies (Traefik, HAProxy setups) send.
Only requests whose TCP peer is a configured proxy may use the header: anyone else could
write it themselves.
"""

from __future__ import annotations

import base64
import binascii
import functools
import ipaddress
from collections.abc import Iterable
from urllib.parse import unquote

from cryptography import x509

from appliance.identity.certificate import load_der, load_pem
from appliance.identity.errors import CertificateHeaderMalformed

# One certificate, even with a long chain of extensions, stays far below this.
MAX_HEADER_LENGTH = 32 * 1024

_PEM_BEGIN = "-----BEGIN CERTIFICATE-----"


def parse_client_cert_header(value: str | bytes) -> x509.Certificate:
    """Decode a proxy's client-certificate header into the certificate, or raise
    CertificateHeaderMalformed."""
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    value = value.strip()
    if not value:
        raise CertificateHeaderMalformed("client certificate header is empty")
    if len(value) > MAX_HEADER_LENGTH:
        raise CertificateHeaderMalformed("client certificate header is too long")

    if value.startswith(":") and value.endswith(":") and len(value) >= 2:
        return _load_der(_b64(value[1:-1]))
    text = unquote(value) if "%" in value else value
    if _PEM_BEGIN in text:
        try:
            # The first certificate is the client's; proxies that append the chain put it after.
            return load_pem(text[text.index(_PEM_BEGIN):].encode("ascii"))
        except (ValueError, UnicodeEncodeError) as exc:
            raise CertificateHeaderMalformed("client certificate header is not a valid PEM certificate") from exc
    return _load_der(_b64(text))


def _b64(text: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise CertificateHeaderMalformed("client certificate header is not base64 or PEM") from exc


def _load_der(der: bytes) -> x509.Certificate:
    try:
        return load_der(der)
    except ValueError as exc:
        raise CertificateHeaderMalformed("client certificate header is not a DER certificate") from exc


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@functools.lru_cache(maxsize=32)
def parse_networks(trusted: tuple[str, ...]) -> tuple[Network, ...]:
    """`["10.0.0.5", "192.168.0.0/24", "::1"]` -> networks. Raises ValueError on a bad entry."""
    return tuple(ipaddress.ip_network(entry.strip(), strict=False) for entry in trusted)


def is_trusted_proxy(addr: str | None, trusted: Iterable[str]) -> bool:
    """Is the TCP peer `addr` (an IP address string, as in the ASGI scope's client) one of the
    trusted proxy addresses or inside one of the trusted networks?"""
    if not addr:
        return False
    try:
        ip = ipaddress.ip_address(addr.split("%", 1)[0])  # drop an IPv6 zone id
    except ValueError:
        return False  # a Unix socket path, or not an address at all
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped  # dual-stack listeners report IPv4 peers as ::ffff:a.b.c.d
    return any(ip in network for network in parse_networks(tuple(trusted)))
