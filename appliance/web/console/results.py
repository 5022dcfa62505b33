"""Reports and commands made readable for a page, on the protocol's summarizers (appliance.protocol.results):
status, ErrorChain and a per-command summary; never raw plist."""

from __future__ import annotations

import json

from appliance.protocol import plist
from appliance.protocol import results as summaries


def view(request_type: str | None, raw: bytes | None) -> summaries.Summary:
    return summaries.summarize_plist(request_type, raw)


def error_chain(stored: str | None) -> tuple[summaries.ErrorEntry, ...]:
    """The results table's error_chain column (JSON text of the device's ErrorChain)."""
    try:
        return summaries.error_chain(json.loads(stored)) if stored else ()
    except ValueError:
        return (summaries.ErrorEntry(None, None, stored),)


def sent(body: bytes) -> list[tuple[str, str]]:
    """What a stored command asked for: its Command keys as (key, text), RequestType left out."""
    try:
        command = plist.load_dict(bytes(body)).get("Command")
    except plist.PlistError:
        return [("command", f"unreadable ({len(body)} bytes)")]
    if not isinstance(command, dict):
        return []
    return [(str(key), summaries.text(value)) for key, value in command.items() if key != "RequestType"]
