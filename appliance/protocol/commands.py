"""The one command validator: a command as an integrator enqueues it (NanoMDM's raw plist, or the JSON
form) checked and turned into the exact bytes a device will get. Every enqueue route and the CLI use it.

A command is {CommandUUID, Command: {RequestType, keys...}}. Devices are sent it as an XML plist in UTF-8
(plist.CONTENT_TYPE says so), so an XML body in UTF-8 is kept byte for byte, as NanoMDM keeps it, and any
other plist (binary, or XML in another encoding) is rewritten as XML; one that XML cannot hold is refused.
CommandUUID has one limit here and in reports (messages.decode_report): a device echoes it back, and a
report we would refuse would leave its command pending for ever.
Sans-I/O; MessageError names what is wrong (a 400 with that reason).
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, field
from typing import Any

from appliance.protocol import plist
from appliance.protocol.errors import MessageError
from appliance.protocol.plistjson import JsonPlistError, from_json

MAX_COMMAND_UUID = 256
_REQUEST_TYPE = re.compile(r"[A-Za-z][A-Za-z0-9.]{0,127}")
_DECLARED_ENCODING = re.compile(rb"""^\s*<\?xml[^>]*?encoding\s*=\s*["']([^"']*)["']""")


@dataclass(frozen=True, slots=True)
class Command:
    uuid: str
    request_type: str
    body: bytes  # exactly what is stored and sent to the device: an XML plist in UTF-8
    command: dict[str, Any] = field(repr=False, compare=False)  # the Command dictionary, for the catalog


def command_uuid_problem(value: Any) -> str | None:
    """Why a CommandUUID cannot be used (in a command or a report), or None."""
    if not isinstance(value, str) or not value:
        return "CommandUUID must be a non-empty string"
    if len(value) > MAX_COMMAND_UUID or not value.isprintable():
        return f"CommandUUID must be a printable string of at most {MAX_COMMAND_UUID} characters"
    return None


def parse_command(body: bytes, *, max_size: int | None = None) -> Command:
    """A raw command plist, as NanoMDM's PUT /v1/enqueue takes it."""
    try:
        document = plist.load_dict(body, max_size=max_size)
    except plist.PlistError as exc:
        raise MessageError(f"body is not a command property list: {exc}") from None
    command_uuid, request_type, inner = _check(document)
    data = bytes(body) if _is_utf8_xml(body) else _as_xml(document, "the property list")
    return Command(command_uuid, request_type, data, inner)


def build_command(command: Any, command_uuid: str | None = None) -> Command:
    """The JSON form's "command" ({"RequestType": ..., keys...}, data as {"$data": base64}) with the
    caller's CommandUUID or a new random one."""
    if not isinstance(command, dict):
        raise MessageError("\"command\" must be an object with a RequestType")
    try:
        inner = from_json(command, "command")
    except JsonPlistError as exc:
        raise MessageError(str(exc)) from None
    return new_command(inner, command_uuid)


def new_command(inner: dict, command_uuid: str | None = None) -> Command:
    """A command from its Command dictionary (plist values: bytes for data), as the appliance makes its own
    (an InstallProfile renewing a device identity) and the JSON form ends up; a new random CommandUUID
    unless one is given."""
    document = {"CommandUUID": str(uuid.uuid4()) if command_uuid is None else command_uuid, "Command": inner}
    checked_uuid, request_type, _ = _check(document)
    return Command(checked_uuid, request_type, _as_xml(document, "the command"), inner)


def with_uuid(command: Command, command_uuid: str) -> Command:
    """The same command under another CommandUUID (a command sent to each of many devices in turn, each
    its own, as the ADE setup commands are)."""
    document = {"CommandUUID": command_uuid, "Command": command.command}
    checked_uuid, request_type, inner = _check(document)
    return Command(checked_uuid, request_type, _as_xml(document, "the command"), inner)


def _check(document: dict) -> tuple[str, str, dict]:
    command_uuid = document.get("CommandUUID")
    problem = command_uuid_problem(command_uuid)
    if problem is None and not command_uuid.strip():
        problem = "CommandUUID must not be blank"
    if problem:
        raise MessageError(problem)
    inner = document.get("Command")
    if not isinstance(inner, dict):
        raise MessageError("the command has no Command dictionary")
    request_type = inner.get("RequestType")
    if not isinstance(request_type, str) or not _REQUEST_TYPE.fullmatch(request_type):
        raise MessageError("Command.RequestType is missing or not a name like \"DeviceInformation\"")
    return command_uuid, request_type, inner


def _is_utf8_xml(body: bytes) -> bool:
    """XML in UTF-8 (or plain ASCII), which devices are told they get."""
    data = bytes(body)
    if not data.lstrip().startswith(b"<"):
        return False  # binary ("bplist00..."), or a byte-order mark of UTF-16/32 or UTF-8
    declared = _DECLARED_ENCODING.match(data)
    if declared and declared.group(1).lower() not in (b"utf-8", b"utf8"):
        return False
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _as_xml(document: dict, what: str) -> bytes:
    try:
        return plist.dump(document)
    except (ValueError, TypeError, OverflowError) as exc:  # control characters, UIDs, huge integers
        raise MessageError(f"{what} cannot be written as the XML property list devices get: {exc}") from None
    except RecursionError:
        raise MessageError(f"{what} is nested too deeply to be written as XML") from None
