"""Admin API authentication: HTTP Basic with any user name and the key as password (NanoMDM scripts send
"nanomdm:KEY", MicroMDM ones "micromdm:KEY"), or "Authorization: Bearer KEY". Compared in constant time."""

from __future__ import annotations

import base64
import binascii
import functools
import hmac

from quart import request

from appliance.web.app import runtime
from appliance.web.errors import ApiError


def basic_password() -> str | None:
    """The password of an `Authorization: Basic` header (the user name is ignored), else None."""
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    _, sep, password = decoded.partition(":")
    return password if sep else None


def presented_key() -> str | None:
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer":
        return value.strip() or None
    return basic_password()


def key_is_valid(key: str | None) -> bool:
    expected = runtime().api_key.encode()
    return key is not None and hmac.compare_digest(key.encode(), expected)


def require_api_key(handler):
    @functools.wraps(handler)
    async def checked(*args, **kwargs):
        if not key_is_valid(presented_key()):
            raise ApiError(401, "unauthorized", "missing or wrong API key (HTTP Basic with the key as password, or Bearer)")
        return await handler(*args, **kwargs)

    return checked
