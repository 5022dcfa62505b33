"""OAuth 1.0a request signing (RFC 5849, HMAC-SHA1), as Apple's Device Assignment service wants it for the
one request it authenticates that way: GET /session, which answers the session token every other call
carries in X-ADM-Auth-Session.

Sans-I/O: the caller supplies the time and the nonce, so a signature is a pure function (and testable
against the RFC's worked example).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from dataclasses import dataclass
from urllib.parse import parse_qsl, quote, urlsplit


@dataclass(frozen=True, repr=False)
class Credentials:
    """The four secrets of a server token; repr never shows them (they end up in tracebacks otherwise)."""

    consumer_key: str
    consumer_secret: str
    access_token: str
    access_secret: str

    def __repr__(self) -> str:
        return f"Credentials(consumer_key={self.consumer_key[:8]}...)"


def percent_encode(text: str) -> str:
    """RFC 5849 3.6: UTF-8, then every byte outside ALPHA / DIGIT / - . _ ~ as %XX (upper case)."""
    return quote(text.encode("utf-8"), safe="-._~")


def base_string_uri(url: str) -> str:
    """RFC 5849 3.4.1.2: scheme and host in lower case, the port only when it is not the default."""
    parts = urlsplit(url)
    scheme, host = parts.scheme.lower(), (parts.hostname or "").lower()
    if ":" in host:
        host = f"[{host}]"
    default = {"http": 80, "https": 443}.get(scheme)
    netloc = host if parts.port in (None, default) else f"{host}:{parts.port}"
    return f"{scheme}://{netloc}{parts.path or '/'}"


def signature_base_string(method: str, url: str, oauth_params: dict[str, str]) -> str:
    """RFC 5849 3.4.1: METHOD&uri&params, the query's parameters signed along with the oauth_ ones."""
    pairs = [(percent_encode(k), percent_encode(v))
             for k, v in [*parse_qsl(urlsplit(url).query, keep_blank_values=True), *oauth_params.items()]]
    normalized = "&".join(f"{k}={v}" for k, v in sorted(pairs))
    return "&".join((method.upper(), percent_encode(base_string_uri(url)), percent_encode(normalized)))


def sign(base_string: str, consumer_secret: str, token_secret: str) -> str:
    key = f"{percent_encode(consumer_secret)}&{percent_encode(token_secret)}"
    digest = hmac.new(key.encode("ascii"), base_string.encode("ascii"), hashlib.sha1).digest()
    return base64.b64encode(digest).decode("ascii")


def authorization_header(method: str, url: str, credentials: Credentials, *, timestamp: int, nonce: str,
                         realm: str | None = "ADM") -> str:
    """The Authorization header value for `method url` (Apple's examples name realm "ADM"; the realm is
    not signed, RFC 5849 3.4.1.3.1)."""
    params = {
        "oauth_consumer_key": credentials.consumer_key,
        "oauth_token": credentials.access_token,
        "oauth_signature_method": "HMAC-SHA1",
        "oauth_timestamp": str(int(timestamp)),
        "oauth_nonce": nonce,
        "oauth_version": "1.0",
    }
    params["oauth_signature"] = sign(signature_base_string(method, url, params), credentials.consumer_secret,
                                     credentials.access_secret)
    fields = [f'realm="{realm}"'] if realm is not None else []
    fields += [f'{percent_encode(k)}="{percent_encode(v)}"' for k, v in params.items()]
    return "OAuth " + ", ".join(fields)
