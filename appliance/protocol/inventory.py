"""Inventory: the commands the appliance sends to learn about a device, and their answers read into facts.

The commands are built from the catalog (every one checked against Apple's schema); the answers are read
leniently, key by key: a device that sends an odd type for one key loses that fact, not its whole
inventory, and `problems` names what was skipped. Keys and types follow Apple's schema
(apple/device-management mdm/commands: information.device, information.security, profile.list,
certificate.list, application.installed.list). Sans-I/O and stdlib only.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

from appliance.protocol import catalog
from appliance.protocol.errors import MessageError
from appliance.protocol.plistjson import JsonPlistError, to_json

DEVICE_INFORMATION = "DeviceInformation"
SECURITY_INFO = "SecurityInfo"
PROFILE_LIST = "ProfileList"
CERTIFICATE_LIST = "CertificateList"
INSTALLED_APPLICATION_LIST = "InstalledApplicationList"
REQUEST_TYPES = (DEVICE_INFORMATION, SECURITY_INFO, PROFILE_LIST, CERTIFICATE_LIST, INSTALLED_APPLICATION_LIST)

# What DeviceInformation asks (README "Inventory" lists them): identity, hardware, OS, storage, battery,
# management state and network ids. A device leaves out what its platform does not have.
QUERIES = (
    "DeviceName", "OSVersion", "BuildVersion", "SupplementalOSVersionExtra", "SupplementalBuildVersion",
    "ProductName", "Model", "ModelName", "ModelNumber", "SerialNumber", "UDID", "IMEI", "MEID",
    "DeviceCapacity", "AvailableDeviceCapacity", "BatteryLevel", "HasBattery", "IsAppleSilicon",
    "IsSupervised", "IsActivationLockEnabled", "IsActivationLockSupported", "IsDeviceLocatorServiceEnabled",
    "IsMultiUser", "IsMDMLostModeEnabled", "SystemIntegrityProtectionEnabled", "AwaitingConfiguration",
    "WiFiMAC", "BluetoothMAC", "EthernetMAC", "LocalHostName", "HostName", "TimeZone",
)


class InventoryError(MessageError):
    """The answer lacks what makes it an inventory answer (e.g. no QueryResponses dictionary)."""


def command(request_type: str) -> dict[str, Any]:
    """The Command dictionary for one inventory request type, checked against the catalog."""
    if request_type not in REQUEST_TYPES:
        raise ValueError(f"{request_type} is not an inventory command ({', '.join(REQUEST_TYPES)})")
    inner: dict[str, Any] = {"RequestType": request_type}
    if request_type == DEVICE_INFORMATION:
        inner["Queries"] = list(QUERIES)
    catalog.check(inner)
    return inner


# --- answers ------------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class DeviceFacts:
    """DeviceInformation's QueryResponses: the facts with a column of their own, and all of them as JSON."""

    device_name: str | None = None
    os_version: str | None = None
    build_version: str | None = None
    product_name: str | None = None
    model: str | None = None
    model_name: str | None = None
    model_number: str | None = None
    serial_number: str | None = None
    imei: str | None = None
    meid: str | None = None
    device_capacity: float | None = None     # GB
    available_capacity: float | None = None  # GB
    battery_level: float | None = None       # 0.0-1.0; None when the device cannot tell (-1)
    supervised: bool | None = None
    activation_lock: bool | None = None
    responses: dict[str, Any] = field(default_factory=dict)  # every answered query, as JSON values


@dataclass(frozen=True, slots=True)
class SecurityFacts:
    passcode_present: bool | None = None
    passcode_compliant: bool | None = None
    filevault: bool | None = None           # FDE_Enabled (macOS)
    enrolled_via_dep: bool | None = None
    user_approved_enrollment: bool | None = None
    info: dict[str, Any] = field(default_factory=dict)  # the whole SecurityInfo, as JSON values


@dataclass(frozen=True, slots=True)
class Profile:
    identifier: str
    uuid: str | None
    display_name: str | None
    organization: str | None
    version: int | None
    managed: bool | None
    encrypted: bool | None
    removal_disallowed: bool | None
    payload_types: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Certificate:
    common_name: str | None
    is_identity: bool | None
    data: bytes  # DER

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


@dataclass(frozen=True, slots=True)
class Application:
    identifier: str | None
    name: str | None
    short_version: str | None
    version: str | None
    bundle_size: int | None
    installing: bool | None


@dataclass(frozen=True, slots=True)
class Answer:
    """One inventory answer read: exactly one of the fields is set, by request type."""

    request_type: str
    device: DeviceFacts | None = None
    security: SecurityFacts | None = None
    profiles: tuple[Profile, ...] | None = None
    certificates: tuple[Certificate, ...] | None = None
    applications: tuple[Application, ...] | None = None
    problems: tuple[str, ...] = ()  # keys skipped for their type, e.g. "QueryResponses.OSVersion: ..."


def read_answer(request_type: str, result: dict[str, Any]) -> Answer:
    """An Acknowledged report (the whole plist dict) to an inventory command, read into facts."""
    reader = _READERS.get(request_type)
    if reader is None:
        raise ValueError(f"{request_type} is not an inventory command")
    problems: list[str] = []
    answer = reader(result, problems)
    return Answer(request_type, problems=tuple(problems), **answer)


class _Keys:
    """Typed access to one dictionary of a device's answer; a wrong type is noted and read as absent."""

    def __init__(self, source: dict, path: str, problems: list[str]) -> None:
        self.source, self.path, self.problems = source, path, problems

    def get(self, key: str, kind: type | tuple[type, ...]) -> Any:
        value = self.source.get(key)
        if value is None:
            return None
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if isinstance(value, bool) and bool not in kinds or not isinstance(value, kinds):
            self.problems.append(f"{self.path}.{key}: expected {_kind_name(kinds[0])}, got {type(value).__name__}")
            return None
        return value

    def text(self, key: str) -> str | None:
        return self.get(key, str)

    def flag(self, key: str) -> bool | None:
        return self.get(key, bool)

    def number(self, key: str) -> float | None:
        value = self.get(key, (float, int))
        return None if value is None else float(value)

    def whole(self, key: str) -> int | None:
        return self.get(key, int)


def _kind_name(kind: type) -> str:
    return {str: "a string", bool: "a boolean", float: "a number", int: "an integer", dict: "a dictionary",
            list: "an array", bytes: "data"}.get(kind, kind.__name__)


def _container(result: dict, key: str, kind: type) -> Any:
    value = result.get(key)
    if not isinstance(value, kind):
        got = "nothing" if value is None else type(value).__name__
        raise InventoryError(f"{key} must be {_kind_name(kind)}, got {got}")
    return value


def _items(values: list, path: str, problems: list[str]):
    for index, item in enumerate(values):
        if isinstance(item, dict):
            yield _Keys(item, f"{path}[{index}]", problems)
        else:
            problems.append(f"{path}[{index}]: expected a dictionary, got {type(item).__name__}")


def _as_json(value: dict, path: str, problems: list[str]) -> dict[str, Any]:
    try:
        return to_json(value)
    except JsonPlistError as exc:
        problems.append(f"{path}: {exc}")
        return {}


def _device_information(result: dict, problems: list[str]) -> dict:
    responses = _Keys(_container(result, "QueryResponses", dict), "QueryResponses", problems)
    battery = responses.number("BatteryLevel")
    return {"device": DeviceFacts(
        device_name=responses.text("DeviceName"), os_version=responses.text("OSVersion"),
        build_version=responses.text("BuildVersion"), product_name=responses.text("ProductName"),
        model=responses.text("Model"), model_name=responses.text("ModelName"),
        model_number=responses.text("ModelNumber"), serial_number=responses.text("SerialNumber"),
        imei=responses.text("IMEI"), meid=responses.text("MEID"),
        device_capacity=responses.number("DeviceCapacity"),
        available_capacity=responses.number("AvailableDeviceCapacity"),
        battery_level=battery if battery is not None and 0.0 <= battery <= 1.0 else None,
        supervised=responses.flag("IsSupervised"), activation_lock=responses.flag("IsActivationLockEnabled"),
        responses=_as_json(responses.source, "QueryResponses", problems),
    )}


def _security_info(result: dict, problems: list[str]) -> dict:
    info = _Keys(_container(result, "SecurityInfo", dict), "SecurityInfo", problems)
    status = info.get("ManagementStatus", dict) or {}
    management = _Keys(status, "SecurityInfo.ManagementStatus", problems)
    return {"security": SecurityFacts(
        passcode_present=info.flag("PasscodePresent"), passcode_compliant=info.flag("PasscodeCompliant"),
        filevault=info.flag("FDE_Enabled"), enrolled_via_dep=management.flag("EnrolledViaDEP"),
        user_approved_enrollment=management.flag("UserApprovedEnrollment"),
        info=_as_json(info.source, "SecurityInfo", problems),
    )}


def _profile_list(result: dict, problems: list[str]) -> dict:
    profiles = []
    for item in _items(_container(result, "ProfileList", list), "ProfileList", problems):
        identifier = item.text("PayloadIdentifier")
        if identifier is None:
            problems.append(f"{item.path}: no PayloadIdentifier, skipped")
            continue
        contents = item.get("PayloadContent", list) or []
        types = tuple(payload.text("PayloadType") or "" for payload in _items(contents, f"{item.path}.PayloadContent",
                                                                               problems))
        profiles.append(Profile(
            identifier, item.text("PayloadUUID"), item.text("PayloadDisplayName"), item.text("PayloadOrganization"),
            item.whole("PayloadVersion"), item.flag("IsManaged"), item.flag("IsEncrypted"),
            item.flag("PayloadRemovalDisallowed"), tuple(t for t in types if t),
        ))
    return {"profiles": tuple(profiles)}


def _certificate_list(result: dict, problems: list[str]) -> dict:
    certificates = []
    for item in _items(_container(result, "CertificateList", list), "CertificateList", problems):
        data = item.get("Data", bytes)
        if data is None:
            problems.append(f"{item.path}: no Data, skipped")
            continue
        certificates.append(Certificate(item.text("CommonName"), item.flag("IsIdentity"), bytes(data)))
    return {"certificates": tuple(certificates)}


def _installed_applications(result: dict, problems: list[str]) -> dict:
    apps = []
    for item in _items(_container(result, "InstalledApplicationList", list), "InstalledApplicationList", problems):
        apps.append(Application(item.text("Identifier"), item.text("Name"), item.text("ShortVersion"),
                                item.text("Version"), item.whole("BundleSize"), item.flag("Installing")))
    return {"applications": tuple(apps)}


_READERS = {
    DEVICE_INFORMATION: _device_information,
    SECURITY_INFO: _security_info,
    PROFILE_LIST: _profile_list,
    CERTIFICATE_LIST: _certificate_list,
    INSTALLED_APPLICATION_LIST: _installed_applications,
}
