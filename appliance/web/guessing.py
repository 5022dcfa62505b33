"""Guessing limits at the web edge (identity.guesses): which client a request counts for."""

from __future__ import annotations

from quart import request

from appliance.identity.guesses import guessing_client
from appliance.web.app import runtime


def client_address() -> str | None:
    """The TCP peer, or behind `[identity] trusted_proxies` the address those proxies wrote into
    X-Forwarded-For (IPv6 per /64): the unit every guessing limit counts."""
    return guessing_client(request.remote_addr, request.headers.getlist("X-Forwarded-For"),
                           runtime().config.identity.trusted_proxies)
