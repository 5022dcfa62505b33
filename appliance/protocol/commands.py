"""A command plist as an integrator enqueues it: `CommandUUID` plus `Command` holding `RequestType`.

Sans-I/O; the admin API uses it to refuse a bad command with a clear reason before storing it.
"""

from __future__ import annotations

from dataclasses import dataclass

from appliance.protocol import plist
from appliance.protocol.errors import MessageError


@dataclass(frozen=True, slots=True)
class Command:
    uuid: str
    request_type: str
    body: bytes  # exactly what will be sent to the device


def parse_command(body: bytes, *, max_size: int | None = None) -> Command:
    """Check a command plist; MessageError names what is wrong."""
    if bytes(body[:6]) == b"bplist":
        # Sent to devices as application/xml: it must be the XML form.
        raise MessageError("command must be an XML property list, not a binary one")
    try:
        message = plist.load_dict(body, max_size=max_size)
    except plist.PlistError as exc:
        raise MessageError(str(exc)) from None
    uuid = message.get("CommandUUID")
    if not isinstance(uuid, str) or not uuid.strip():
        raise MessageError("command needs a non-empty string CommandUUID")
    if len(uuid) > 256 or not uuid.isprintable():
        raise MessageError("CommandUUID must be printable and at most 256 characters")
    inner = message.get("Command")
    if not isinstance(inner, dict):
        raise MessageError("command needs a Command dictionary")
    request_type = inner.get("RequestType")
    if not isinstance(request_type, str) or not request_type:
        raise MessageError("Command needs a non-empty string RequestType")
    return Command(uuid, request_type, bytes(body))
