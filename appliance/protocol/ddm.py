"""Declarative Device Management, sans-I/O: declarations as an operator gives them (checked against Apple's
schema facts), the device's DeclarativeManagement requests (Endpoint + Data), the JSON answers, status
reports, tokens and the DeclarativeManagement command.

Apple's facts (apple/device-management, declarative/protocol/*.yaml, declarative/declarations/**, mdm/checkin
and mdm/commands declarativemanagement.yaml): a declaration is {Type, Identifier, ServerToken, Payload}; its
manifest kind is the third part of its Type (com.apple.<kind>.NAME); ServerToken must change whenever the
content does; `declaration-items` lists all four kinds, always present; Data is base64 JSON (the plist
codec has already undone the base64).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from appliance.protocol import plist
from appliance.protocol.ddm_facts import DECLARATIONS as _FACTS
from appliance.protocol.ddm_facts import SOURCE, STATUS_ITEMS
from appliance.protocol.errors import MessageError

KINDS = ("activation", "configuration", "asset", "management")
# declaration-items' array for each kind (Apple: all four always present).
MANIFEST_KEYS = {"activation": "Activations", "configuration": "Configurations", "asset": "Assets",
                 "management": "Management"}
CONTENT_TYPE = "application/json"

TOKENS, DECLARATION_ITEMS, STATUS, DECLARATION = "tokens", "declaration-items", "status", "declaration"

# Apple: Identifier and ServerToken "should not exceed 64 octets".
MAX_IDENTIFIER_OCTETS = 64
# Limits on JSON from outside (Data, and declarations from the admin API): size, nesting, status values.
MAX_JSON_BYTES = 1024 * 1024
MAX_DEPTH = 32
MAX_STATUS_VALUES = 10_000
# Identifiers of the declarations the appliance itself serves to every DDM enrollment.
RESERVED_PREFIX = "mdm-appliance."


class DeclarationError(ValueError):
    """A declaration is refused (400); `.reason` names the key."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# --- JSON from outside -------------------------------------------------------------------------------

def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def load_json(data: bytes, what: str) -> dict[str, Any]:
    """A JSON object within the limits above, or ValueError with a short reason."""
    if len(data) > MAX_JSON_BYTES:
        raise ValueError(f"{what} is {len(data)} bytes, over the limit of {MAX_JSON_BYTES}")
    try:
        text = bytes(data).decode("utf-8")
        value = json.loads(text, parse_constant=_no_constant)
    except UnicodeDecodeError:
        raise ValueError(f"{what} is not UTF-8 text") from None
    except RecursionError:
        raise ValueError(f"{what} is nested more than {MAX_DEPTH} levels deep") from None
    except ValueError as exc:
        raise ValueError(f"{what} is not JSON: {str(exc)[:120]}") from None
    if not isinstance(value, dict):
        raise ValueError(f"{what} must be a JSON object, got {_json_type(value)}")
    _check_depth(value, what)
    return value


def _check_depth(value: Any, what: str) -> None:
    """Iteratively: a value nested deeper than MAX_DEPTH is refused (no recursion on hostile input)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise ValueError(f"{what} is nested more than {MAX_DEPTH} levels deep")
        children = item.values() if isinstance(item, dict) else item
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))


def _json_type(value: Any) -> str:
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean", int: "a number",
            float: "a number", type(None): "null"}.get(type(value), type(value).__name__)


def dumps(value: Any) -> str:
    """Compact JSON, keys in the order given (a payload is served as it was given)."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


# --- declarations ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Reference:
    """A payload key naming another declaration by Identifier (an activation's configurations, a
    configuration's assets): `path` for error messages, `types` the allowed declaration types (None: any)."""

    path: str
    kind: str
    identifier: str
    types: tuple[str, ...] | None = None


@dataclass(frozen=True)
class Declaration:
    identifier: str
    type: str
    payload: dict[str, Any] = field(hash=False)
    warnings: tuple[str, ...] = ()
    references: tuple[Reference, ...] = ()

    @property
    def kind(self) -> str:
        return manifest_kind(self.type) or ""

    @property
    def payload_json(self) -> str:
        return dumps(self.payload)


def manifest_kind(declaration_type: str) -> str | None:
    """'com.apple.configuration.passcode.settings' -> 'configuration'; None for anything else."""
    parts = declaration_type.split(".")
    if len(parts) < 4 or parts[0] != "com" or parts[1] != "apple" or parts[2] not in KINDS or not all(parts[3:]):
        return None
    return parts[2]


def check_identifier(identifier: Any, what: str = "Identifier") -> str:
    if not isinstance(identifier, str) or not identifier:
        raise DeclarationError(f"{what} must be a non-empty string")
    if len(identifier.encode("utf-8")) > MAX_IDENTIFIER_OCTETS:
        raise DeclarationError(f"{what} is longer than {MAX_IDENTIFIER_OCTETS} octets (Apple's limit)")
    if has_control(identifier) or "/" in identifier or identifier.strip() != identifier:
        raise DeclarationError(f"{what} must be without control characters, '/' or surrounding spaces")
    return identifier


def has_control(text: str) -> bool:
    """Control characters (C0, DEL, C1) or lone surrogates: never in a name people read or type."""
    return any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F or 0xD800 <= ord(c) <= 0xDFFF for c in text)


def parse_declaration(body: bytes) -> Declaration:
    """A declaration as the admin API receives it (JSON): Type, Identifier and Payload checked; ServerToken,
    if given, is ignored (the appliance computes it). DeclarationError names what is wrong."""
    try:
        document = load_json(body, "the declaration")
    except ValueError as exc:
        raise DeclarationError(str(exc)) from None
    return check_declaration(document)


def check_declaration(document: dict[str, Any]) -> Declaration:
    warnings: list[str] = []
    declaration_type = document.get("Type")
    if not isinstance(declaration_type, str) or not declaration_type:
        raise DeclarationError("Type must be a non-empty string, e.g. \"com.apple.configuration.passcode.settings\"")
    kind = manifest_kind(declaration_type)
    if kind is None:
        raise DeclarationError(f"Type {declaration_type[:100]!r} is not a declaration type: expected "
                               f"com.apple.<activation|configuration|asset|management>.NAME")
    identifier = check_identifier(document.get("Identifier"))
    payload = document.get("Payload")
    if not isinstance(payload, dict):
        raise DeclarationError(f"Payload must be an object, got {_json_type(payload)}")
    extra = sorted(set(document) - {"Type", "Identifier", "Payload", "ServerToken"})
    if extra:
        warnings.append(f"ignored top-level key(s) {', '.join(extra)[:200]}")
    facts = _FACTS.get(declaration_type)
    references: list[Reference] = []
    if facts is None:
        warnings.append(f"Type {declaration_type} is not in Apple's schema as this appliance knows it "
                        f"({SOURCE}): stored as given, unchecked")
    elif facts["keys"]:
        _check_keys(facts["keys"], payload, "Payload", declaration_type, warnings, references)
    if kind == "activation":
        references += _configuration_references(payload)
    return Declaration(identifier, declaration_type, payload, tuple(warnings), tuple(references))


_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,), "integer": (int,), "real": (int, float), "boolean": (bool,), "dictionary": (dict,),
    "array": (list,), "data": (str,), "date": (str,),
}
_TYPE_WORDS = {"string": "a string", "integer": "an integer", "real": "a number", "boolean": "true or false",
               "dictionary": "an object", "array": "an array", "data": "a base64 string", "date": "a date string"}


def _check_keys(keys: list[dict], value: dict, path: str, declaration_type: str, warnings: list[str],
                references: list[Reference]) -> None:
    known = {key["name"]: key for key in keys}
    for key in keys:
        if key["required"] and key["name"] not in value:
            raise DeclarationError(f"{path}.{key['name']} is required for {declaration_type}")
    for name, item in value.items():
        key = known.get(name)
        if key is None:
            warnings.append(f"{path}.{name} is not a key of {declaration_type} in Apple's schema")
            continue
        _check_value(key, item, f"{path}.{name}", declaration_type, warnings, references)


def _check_value(key: dict, value: Any, path: str, declaration_type: str, warnings: list[str],
                 references: list[Reference]) -> None:
    kind = key["type"]
    if kind != "any":
        allowed = _TYPES[kind]
        if not isinstance(value, allowed) or (isinstance(value, bool) and bool not in allowed):
            raise DeclarationError(f"{path} must be {_TYPE_WORDS[kind]}, got {_json_type(value)}")
    if "allowed" in key and value not in key["allowed"]:
        warnings.append(f"{path} = {str(value)[:60]!r} is not one of {', '.join(map(str, key['allowed']))}")
    if "assets" in key and isinstance(value, str):
        references.append(Reference(path, "asset", value, tuple(key["assets"])))
    if kind == "dictionary" and key.get("keys"):
        _check_keys(key["keys"], value, path, declaration_type, warnings, references)
    elif kind == "array" and len(key.get("items") or ()) == 1:
        for index, item in enumerate(value):
            _check_value(key["items"][0], item, f"{path}[{index}]", declaration_type, warnings, references)


def _configuration_references(payload: dict) -> list[Reference]:
    """An activation names the configurations it installs (Apple: StandardConfigurations)."""
    names = payload.get("StandardConfigurations")
    if not isinstance(names, list):
        return []
    found = []
    for index, name in enumerate(names):
        if not isinstance(name, str):
            raise DeclarationError(f"Payload.StandardConfigurations[{index}] must be a string, got {_json_type(name)}")
        found.append(Reference(f"Payload.StandardConfigurations[{index}]", "configuration", name))
    return found


def references_of(declaration_type: str, payload: dict) -> tuple[Reference, ...]:
    """The references of a stored declaration (its payload was checked when it was saved)."""
    return check_declaration({"Type": declaration_type, "Identifier": "x", "Payload": payload}).references


# --- tokens ------------------------------------------------------------------------------------------

def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


def server_token(declaration_type: str, identifier: str, payload: dict, touch: int = 0) -> str:
    """Over the whole content (Apple: the token must change whenever the content does), key order aside;
    `touch` lets an operator force a new token for unchanged content."""
    content = json.dumps([declaration_type, identifier, payload], sort_keys=True, ensure_ascii=False,
                         separators=(",", ":"))
    return _digest(f"{content}\0{touch}")


def declarations_token(items: Iterable[tuple[str, str]]) -> str:
    """From the (Identifier, ServerToken) pairs an enrollment sees: equal sets give equal tokens."""
    return _digest("".join(f"{identifier}\0{token}\n" for identifier, token in sorted(items)))


def sync_timestamp(moment: datetime) -> str:
    """SynchronizationTokens.Timestamp: YYYY-MM-DDTHH:MM:SSZ, no fractional seconds."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class Item:
    """One entry of an enrollment's manifest."""

    kind: str
    identifier: str
    server_token: str


def tokens_json(declarations_token_value: str, timestamp: str) -> bytes:
    return dumps({"SyncTokens": {"DeclarationsToken": declarations_token_value, "Timestamp": timestamp}}).encode()


def declaration_items_json(items: Iterable[Item], declarations_token_value: str) -> bytes:
    manifest: dict[str, list] = {MANIFEST_KEYS[kind]: [] for kind in KINDS}
    for item in items:
        manifest[MANIFEST_KEYS[item.kind]].append({"Identifier": item.identifier, "ServerToken": item.server_token})
    return dumps({"Declarations": manifest, "DeclarationsToken": declarations_token_value}).encode()


def declaration_json(declaration_type: str, identifier: str, token: str, payload_json: str) -> bytes:
    """The declaration as a device fetches it; the payload text is spliced in as stored."""
    return (f'{{"Type":{dumps(declaration_type)},"Identifier":{dumps(identifier)},'
            f'"ServerToken":{dumps(token)},"Payload":{payload_json}}}').encode()


def command(command_uuid: str, tokens: bytes) -> bytes:
    """The DeclarativeManagement command with the tokens as Data, so the device need not ask for them."""
    return plist.dump({"CommandUUID": command_uuid, "Command": {"RequestType": "DeclarativeManagement",
                                                                "Data": tokens}})


# --- device requests ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class DeclarationStatus:
    kind: str
    identifier: str
    active: bool
    valid: str
    server_token: str
    reasons: tuple[Any, ...] = ()


@dataclass(frozen=True)
class StatusValue:
    path: str
    value: str


@dataclass(frozen=True)
class StatusError:
    path: str
    error: Any


@dataclass(frozen=True)
class StatusReport:
    declarations: tuple[DeclarationStatus, ...]
    values: tuple[StatusValue, ...]
    errors: tuple[StatusError, ...]
    full_report: bool
    raw: bytes = field(repr=False)


@dataclass(frozen=True)
class Request:
    """A DeclarativeManagement check-in: what the device asks for."""

    endpoint: str                      # TOKENS, DECLARATION_ITEMS, STATUS or DECLARATION
    kind: str | None = None            # DECLARATION: the manifest kind and Identifier asked for
    identifier: str | None = None
    status: StatusReport | None = None


def parse_request(endpoint: str, data: bytes | None) -> Request:
    """Endpoint and Data of a DeclarativeManagement check-in -> Request; MessageError names what is wrong."""
    if len(endpoint) > 512 or not endpoint.isprintable():
        raise MessageError("key Endpoint is not a printable string of at most 512 characters")
    if data is not None and endpoint != STATUS:
        _data(data)  # a device may send its SynchronizationTokens: checked like any Data, not needed
    if endpoint in (TOKENS, DECLARATION_ITEMS):
        return Request(endpoint)
    if endpoint == STATUS:
        if not data:
            raise MessageError("Endpoint status needs the status report in Data")
        return Request(STATUS, status=parse_status_report(data))
    head, _, rest = endpoint.partition("/")
    if head == DECLARATION:
        kind, _, identifier = rest.partition("/")
        if kind not in KINDS:
            raise MessageError(f"Endpoint {endpoint[:100]!r}: expected declaration/"
                               f"<activation|configuration|asset|management>/IDENTIFIER")
        if not identifier:
            raise MessageError(f"Endpoint {endpoint[:100]!r} names no declaration Identifier")
        return Request(DECLARATION, kind, identifier)
    raise MessageError(f"unknown Endpoint {endpoint[:100]!r} (expected tokens, declaration-items, status or "
                       f"declaration/KIND/IDENTIFIER)")


def _data(data: bytes) -> dict[str, Any]:
    try:
        return load_json(data, "Data")
    except ValueError as exc:
        raise MessageError(str(exc)) from None


def parse_status_report(data: bytes) -> StatusReport:
    """A status report (Apple: StatusItems, Errors, FullReport) -> the declarations' status, the other
    values (one per leaf; an array's items share their path), and the errors: the report's Errors plus
    every declaration neither active nor valid."""
    document = _data(data)
    items = document.get("StatusItems")
    if not isinstance(items, dict):
        raise MessageError(f"status report: StatusItems must be an object, got {_json_type(items)}")
    report_errors = document.get("Errors", [])
    if not isinstance(report_errors, list):
        raise MessageError(f"status report: Errors must be an array, got {_json_type(report_errors)}")
    full = document.get("FullReport", False)
    if not isinstance(full, bool):
        raise MessageError("status report: FullReport must be true or false")
    errors = [StatusError(".Errors", entry) for entry in report_errors]
    declarations: list[DeclarationStatus] = []
    management = items.get("management")
    if isinstance(management, dict) and "declarations" in management:
        declarations = _declaration_statuses(management["declarations"])
        for status in declarations:
            if not status.active and status.valid != "valid":
                errors.append(StatusError(f".StatusItems.management.declarations.{status.kind}s",
                                          _status_object(status)))
    values: list[StatusValue] = []
    _flatten(items, ".StatusItems", values)
    return StatusReport(tuple(declarations), tuple(values), tuple(errors), full, bytes(data))


def _status_object(status: DeclarationStatus) -> dict:
    found = {"identifier": status.identifier, "active": status.active, "valid": status.valid,
             "server-token": status.server_token}
    if status.reasons:
        found["reasons"] = list(status.reasons)
    return found


_STATUS_ARRAYS = {"activations": "activation", "configurations": "configuration", "assets": "asset",
                  "management": "management"}


def _declaration_statuses(value: Any) -> list[DeclarationStatus]:
    where = "StatusItems.management.declarations"
    if not isinstance(value, dict):
        raise MessageError(f"status report: {where} must be an object")
    found = []
    for array_name, kind in _STATUS_ARRAYS.items():
        entries = value.get(array_name, [])
        if not isinstance(entries, list):
            raise MessageError(f"status report: {where}.{array_name} must be an array")
        for index, entry in enumerate(entries):
            at = f"{where}.{array_name}[{index}]"
            if not isinstance(entry, dict):
                raise MessageError(f"status report: {at} must be an object")
            identifier, token = entry.get("identifier"), entry.get("server-token")
            active, valid, reasons = entry.get("active"), entry.get("valid"), entry.get("reasons", [])
            if not isinstance(identifier, str) or not identifier or len(identifier) > 256:
                raise MessageError(f"status report: {at}.identifier must be a string of 1 to 256 characters")
            if not isinstance(token, str) or len(token) > 256:
                raise MessageError(f"status report: {at}.server-token must be a string")
            if not isinstance(active, bool):
                raise MessageError(f"status report: {at}.active must be true or false")
            if not isinstance(valid, str) or len(valid) > 64:
                raise MessageError(f"status report: {at}.valid must be a string (valid, invalid, unknown)")
            if not isinstance(reasons, list):
                raise MessageError(f"status report: {at}.reasons must be an array")
            found.append(DeclarationStatus(kind, identifier, active, valid, token, tuple(reasons)))
    return found


def _flatten(value: Any, path: str, out: list[StatusValue]) -> None:
    # Depth is already bounded by load_json; management.declarations is kept apart, as KMFDDM does.
    if isinstance(value, dict):
        for key, child in value.items():
            child_path = f"{path}.{key}"
            if child_path != ".StatusItems.management.declarations":
                _flatten(child, child_path, out)
    elif isinstance(value, list):
        for child in value:
            _flatten(child, path, out)
    elif value is not None:
        if len(out) >= MAX_STATUS_VALUES:
            raise MessageError(f"status report has more than {MAX_STATUS_VALUES} values")
        out.append(StatusValue(path, value if isinstance(value, str) else json.dumps(value)))


# --- what the appliance itself declares --------------------------------------------------------------

# Status the appliance shows (management.client-capabilities is always reported, unasked). Software
# update status exists only on the device channel (Apple: allowed-scopes system).
SUBSCRIBED_STATUS = ("management.declarations", "device.identifier.serial-number", "device.identifier.udid",
                     "device.model.family", "device.model.identifier", "device.operating-system.build-version",
                     "device.operating-system.family", "device.operating-system.version")
SUBSCRIBED_DEVICE_STATUS = SUBSCRIBED_STATUS + (
    "softwareupdate.install-state", "softwareupdate.pending-version", "softwareupdate.failure-reason",
    "softwareupdate.install-reason")
assert set(SUBSCRIBED_DEVICE_STATUS) <= set(STATUS_ITEMS)

# Which enrollments a built-in declaration is for: every one, device channels, user channels.
ANY_CHANNEL, DEVICE_CHANNEL, USER_CHANNEL = "any", "device", "user"


@dataclass(frozen=True)
class Builtin:
    declaration: Declaration
    channel: str


def builtin_declarations(organization: dict[str, str], properties: dict[str, Any]) -> tuple[Builtin, ...]:
    """Served to every DDM enrollment: server capabilities, organization info and properties, and a status
    subscription (with the activation that installs it) for the status the appliance shows."""

    def make(identifier: str, declaration_type: str, payload: dict) -> Declaration:
        declaration = check_declaration({"Type": declaration_type, "Identifier": RESERVED_PREFIX + identifier,
                                         "Payload": payload})
        assert not declaration.warnings, declaration.warnings
        return declaration

    def subscriptions(items: tuple[str, ...]) -> dict:
        return {"StatusItems": [{"Name": name} for name in items]}

    configuration_type = "com.apple.configuration.management.status-subscriptions"
    return (
        Builtin(make("server-capabilities", "com.apple.management.server-capabilities",
                     {"Version": "1.0.0", "SupportedFeatures": {}}), ANY_CHANNEL),
        Builtin(make("organization-info", "com.apple.management.organization-info", organization), ANY_CHANNEL),
        Builtin(make("properties", "com.apple.management.properties", properties), ANY_CHANNEL),
        Builtin(make("status-subscriptions", configuration_type, subscriptions(SUBSCRIBED_DEVICE_STATUS)),
                DEVICE_CHANNEL),
        Builtin(make("status-activation", "com.apple.activation.simple",
                     {"StandardConfigurations": [RESERVED_PREFIX + "status-subscriptions"]}), DEVICE_CHANNEL),
        Builtin(make("user-status-subscriptions", configuration_type, subscriptions(SUBSCRIBED_STATUS)),
                USER_CHANNEL),
        Builtin(make("user-status-activation", "com.apple.activation.simple",
                     {"StandardConfigurations": [RESERVED_PREFIX + "user-status-subscriptions"]}), USER_CHANNEL),
    )


# --- OS update enforcement ----------------------------------------------------------------------------

def os_update(version: str, deadline: datetime | str, build: str | None = None, details_url: str | None = None
              ) -> tuple[Declaration, Declaration]:
    """The softwareupdate.enforcement.specific configuration for `version` by `deadline` (the device's local
    time, Apple's yyyy-mm-ddThh:mm:ss), and the activation that installs it."""
    if not isinstance(version, str) or not version or len(version) > 32 or not all(
            part.isdigit() for part in version.split(".")):
        raise DeclarationError(f"version {str(version)[:40]!r} is not an OS version like 17.6 or 14.6.1")
    local = _local_deadline(deadline)
    payload: dict[str, Any] = {"TargetOSVersion": version, "TargetLocalDateTime": local}
    if build:
        payload["TargetBuildVersion"] = build
    if details_url:
        if not details_url.startswith(("https://", "http://")):
            raise DeclarationError("details URL must be an http(s) URL")
        payload["DetailsURL"] = details_url
    name = f"os-update-{version}"
    configuration = check_declaration({"Type": "com.apple.configuration.softwareupdate.enforcement.specific",
                                       "Identifier": name, "Payload": payload})
    activation = check_declaration({"Type": "com.apple.activation.simple", "Identifier": f"{name}.activation",
                                    "Payload": {"StandardConfigurations": [name]}})
    return configuration, activation


def _local_deadline(deadline: datetime | str) -> str:
    if isinstance(deadline, datetime):
        return deadline.strftime("%Y-%m-%dT%H:%M:%S")
    for form in ("%Y-%m-%dT%H:%M:%S", "%Y-%m-%dT%H:%M", "%Y-%m-%d"):
        try:
            return datetime.strptime(deadline, form).strftime("%Y-%m-%dT%H:%M:%S")
        except (TypeError, ValueError):
            continue
    raise DeclarationError(f"deadline {str(deadline)[:40]!r} is not a local date and time like 2027-01-15T18:00 "
                           f"(the device's own time zone, no offset)")
