"""Admin API authentication: HTTP Basic with any user name and the key as password (NanoMDM scripts send
"nanomdm:KEY", MicroMDM ones "micromdm:KEY"), or "Authorization: Bearer KEY". Compared in constant time,
and guessing is limited per client ([api] key_guess_limit within key_guess_window, then 429)."""

from __future__ import annotations

import base64
import binascii
import functools
import hmac

from quart import request

from appliance.logs import get_logger
from appliance.web.app import runtime
from appliance.web.errors import ApiError
from appliance.web.guessing import client_address

log = get_logger("auth")


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


def secret_matches(presented: str, expected: str) -> bool:
    """Constant time: how much of a guess was right must not show in how long the answer takes."""
    return hmac.compare_digest(presented.encode(), expected.encode())


def check_api_key() -> None:
    """Raise the API's 401 or 429 unless the request carries the key and its client may still guess."""
    rt = runtime()
    guesses, client = rt.api_key_guesses, client_address()
    if guesses.blocked(client):
        rt.metrics.guess_limit_refusals.labels("api_key").inc()
        wait = guesses.retry_after(client)
        raise ApiError(429, "too_many_guesses", f"too many wrong API keys from {client}: every request from "
                       f"there is refused for {wait} s more, even with the right key", retry_after=wait)
    key = presented_key()
    if key is not None and secret_matches(key, rt.api_key):
        return
    if key is not None:  # no credentials at all guess nothing (a client's first try, a health probe)
        rt.metrics.failed_authentications.labels("api_key").inc()
        if guesses.wrong_guess(client):
            log.warning("api_key_guessing_limited", client=client, limit=guesses.limit,
                        window_seconds=guesses.window)
    raise ApiError(401, "unauthorized", "missing or wrong API key (HTTP Basic with the key as password, or Bearer)")


def require_api_key(handler):
    @functools.wraps(handler)
    async def checked(*args, **kwargs):
        check_api_key()
        return await handler(*args, **kwargs)

    return checked
