"""Device messages decoded into typed values: check-ins (by MessageType) and command reports (by Status).

Sans-I/O: bytes in, a dataclass out, or a MessageError whose reason names the key that is missing or
of the wrong type. Keys and types follow Apple's schema (apple/device-management, mdm/checkin/*.yaml,
and "MDM Result Payloads"); keys we do not use are kept in `.message` and the exact bytes in `.raw`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from appliance.protocol import ddm, plist
from appliance.protocol.commands import command_uuid_problem
from appliance.protocol.enrollment import Enrollment, resolve
from appliance.protocol.errors import MessageError, UnknownMessageType

IDLE = "Idle"
ACKNOWLEDGED = "Acknowledged"
ERROR = "Error"
COMMAND_FORMAT_ERROR = "CommandFormatError"
NOT_NOW = "NotNow"
STATUSES = (IDLE, ACKNOWLEDGED, ERROR, COMMAND_FORMAT_ERROR, NOT_NOW)


def _get(message: dict[str, Any], key: str, kind: type, *, required: bool = False) -> Any:
    value = message.get(key)
    if value is None:
        if required:
            raise MessageError(f"missing key {key}")
        return None
    # bool is a subclass of int in Python: an integer key must not accept <true/>.
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        expected = plist.type_name(kind())
        raise MessageError(f"key {key} must be {expected}, got {plist.type_name(value)}")
    return value


def _text(message, key, *, required=False) -> str | None:
    value = _get(message, key, str, required=required)
    if required and value == "":
        raise MessageError(f"key {key} must not be empty")
    return value


# --- check-in (Content-Type application/x-apple-aspen-mdm-checkin) ---------------------------------

@dataclass(frozen=True)
class CheckIn:
    message_type: str
    enrollment: Enrollment
    raw: bytes = field(repr=False)
    message: dict[str, Any] = field(repr=False)


@dataclass(frozen=True)
class Authenticate(CheckIn):
    topic: str = ""
    serial_number: str | None = None
    model: str | None = None
    model_name: str | None = None
    product_name: str | None = None
    os_version: str | None = None
    build_version: str | None = None
    device_name: str | None = None
    imei: str | None = None
    meid: str | None = None


@dataclass(frozen=True)
class TokenUpdate(CheckIn):
    token: bytes = b""
    push_magic: str = ""
    topic: str = ""
    unlock_token: bytes | None = None
    awaiting_configuration: bool | None = None


@dataclass(frozen=True)
class CheckOut(CheckIn):
    pass


@dataclass(frozen=True)
class UserAuthenticate(CheckIn):
    digest_response: str | None = None


@dataclass(frozen=True)
class SetBootstrapToken(CheckIn):
    bootstrap_token: bytes | None = None  # None: delete the stored token
    awaiting_configuration: bool | None = None


@dataclass(frozen=True)
class GetBootstrapToken(CheckIn):
    awaiting_configuration: bool | None = None


@dataclass(frozen=True)
class GetToken(CheckIn):
    token_service_type: str = ""


@dataclass(frozen=True)
class DeclarativeManagement(CheckIn):
    endpoint: str = ""
    data: bytes | None = None
    request: ddm.Request | None = None  # Endpoint and Data decoded (appliance.protocol.ddm)


def _declarative_management(m: dict) -> dict:
    endpoint = _text(m, "Endpoint", required=True)
    data = _get(m, "Data", bytes)
    return {"endpoint": endpoint, "data": data, "request": ddm.parse_request(endpoint, data)}


def _authenticate(m: dict) -> dict:
    return {
        "topic": _text(m, "Topic", required=True),
        "serial_number": _text(m, "SerialNumber"),
        "model": _text(m, "Model"),
        "model_name": _text(m, "ModelName"),
        "product_name": _text(m, "ProductName"),
        "os_version": _text(m, "OSVersion"),
        "build_version": _text(m, "BuildVersion"),
        "device_name": _text(m, "DeviceName"),
        "imei": _text(m, "IMEI"),
        "meid": _text(m, "MEID"),
    }


def _token_update(m: dict) -> dict:
    token = _get(m, "Token", bytes, required=True)
    if not token:
        raise MessageError("key Token must not be empty")
    return {
        "token": token,
        "push_magic": _text(m, "PushMagic", required=True),
        "topic": _text(m, "Topic", required=True),
        "unlock_token": _get(m, "UnlockToken", bytes) or None,
        "awaiting_configuration": _get(m, "AwaitingConfiguration", bool),
    }


def _set_bootstrap_token(m: dict) -> dict:
    return {
        "bootstrap_token": _get(m, "BootstrapToken", bytes) or None,
        "awaiting_configuration": _get(m, "AwaitingConfiguration", bool),
    }


_CHECKINS = {
    "Authenticate": (Authenticate, _authenticate),
    "TokenUpdate": (TokenUpdate, _token_update),
    "CheckOut": (CheckOut, lambda m: {}),
    "UserAuthenticate": (UserAuthenticate, lambda m: {"digest_response": _text(m, "DigestResponse")}),
    "SetBootstrapToken": (SetBootstrapToken, _set_bootstrap_token),
    "GetBootstrapToken": (GetBootstrapToken, lambda m: {"awaiting_configuration": _get(m, "AwaitingConfiguration", bool)}),
    "GetToken": (GetToken, lambda m: {"token_service_type": _text(m, "TokenServiceType", required=True)}),
    "DeclarativeManagement": (DeclarativeManagement, _declarative_management),
}
CHECKIN_TYPES = tuple(_CHECKINS)


def decode_checkin(raw: bytes) -> CheckIn:
    message = _load(raw)
    message_type = _text(message, "MessageType", required=True)
    try:
        cls, fields = _CHECKINS[message_type]
    except KeyError:
        shown = message_type if len(message_type) <= 64 and message_type.isprintable() else repr(message_type[:64])
        raise UnknownMessageType(f"unknown MessageType {shown}") from None
    enrollment = resolve(message)
    return cls(message_type, enrollment, bytes(raw), message, **fields(message))


# --- command endpoint (reports) -------------------------------------------------------------------

@dataclass(frozen=True)
class ErrorChainEntry:
    error_code: int | None
    error_domain: str | None
    localized_description: str | None
    us_english_description: str | None

    def as_dict(self) -> dict[str, Any]:
        return {
            "ErrorCode": self.error_code,
            "ErrorDomain": self.error_domain,
            "LocalizedDescription": self.localized_description,
            "USEnglishDescription": self.us_english_description,
        }


@dataclass(frozen=True)
class Report:
    status: str
    command_uuid: str | None  # None only for Idle
    enrollment: Enrollment
    error_chain: tuple[ErrorChainEntry, ...]
    raw: bytes = field(repr=False)
    message: dict[str, Any] = field(repr=False)

    @property
    def is_final(self) -> bool:
        return self.status in (ACKNOWLEDGED, ERROR, COMMAND_FORMAT_ERROR)


def _error_chain(message: dict) -> tuple[ErrorChainEntry, ...]:
    chain = _get(message, "ErrorChain", list)
    if not chain:
        return ()
    entries = []
    for index, item in enumerate(chain):
        if not isinstance(item, dict):
            raise MessageError(f"ErrorChain[{index}] must be a dictionary, got {plist.type_name(item)}")
        # Apple: "don't rely on these values"; we keep them for people to read, so a device that
        # sends an odd type here must not lose its whole report: keep what is readable.
        code = item.get("ErrorCode")
        entries.append(ErrorChainEntry(
            code if isinstance(code, int) and not isinstance(code, bool) else None,
            _loose_text(item.get("ErrorDomain")),
            _loose_text(item.get("LocalizedDescription")),
            _loose_text(item.get("USEnglishDescription")),
        ))
    return tuple(entries)


def _loose_text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def decode_report(raw: bytes) -> Report:
    message = _load(raw)
    status = _text(message, "Status", required=True)
    if status not in STATUSES:
        shown = status if len(status) <= 64 and status.isprintable() else repr(status[:64])
        raise MessageError(f"unknown Status {shown} (expected one of {', '.join(STATUSES)})")
    command_uuid = _text(message, "CommandUUID", required=status != IDLE)
    if command_uuid:
        problem = command_uuid_problem(command_uuid)  # the same limit as on enqueue
        if problem:
            raise MessageError(f"key {problem}")
    enrollment = resolve(message)
    return Report(status, command_uuid or None, enrollment, _error_chain(message), bytes(raw), message)


def _load(raw: bytes) -> dict[str, Any]:
    try:
        return plist.load_dict(raw)
    except plist.PlistError as exc:
        raise MessageError(str(exc)) from None
