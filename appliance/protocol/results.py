"""What a device's answer to a command means, as plain data a person can read: the status, the ErrorChain,
and a per-command summary (facts as label/value pairs, tables as columns and rows of text).

The CLI prints a Summary as text tables, the console as HTML; neither needs to know a command's result
keys. Sans-I/O and stdlib only. Keys and types follow Apple's schema (responsekeys of mdm/commands/*.yaml).

Stable API:
    summarize(request_type, result) -> Summary   result: the report as a dict (plistlib's values), or None
                                                  when the device has not answered yet
    summarize_plist(request_type, raw) -> Summary the stored report bytes (a plist), or None
    text(value) -> str                            one way to show any plist value as short text
Every cell and fact value is a str; None never appears (a missing value is left out, or "-" in a table).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from appliance.protocol import plist

# Report keys every answer carries (or may): shown by the Summary's own fields, not as facts.
_ENVELOPE = {"Status", "CommandUUID", "ErrorChain", "UDID", "UserID", "UserShortName", "UserLongName",
             "EnrollmentID", "EnrollmentUserID", "RequestType"}
MAX_TEXT = 200  # characters of one cell or fact; the raw result (--json, --plist) has the rest


@dataclass(frozen=True, slots=True)
class ErrorEntry:
    code: int | None
    domain: str | None
    description: str | None  # USEnglishDescription, else LocalizedDescription

    def to_json(self) -> dict[str, Any]:
        return {"code": self.code, "domain": self.domain, "description": self.description}


@dataclass(frozen=True, slots=True)
class Table:
    title: str
    columns: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]

    def to_json(self) -> dict[str, Any]:
        return {"title": self.title, "columns": list(self.columns), "rows": [list(row) for row in self.rows]}


@dataclass(frozen=True, slots=True)
class Summary:
    request_type: str | None
    status: str | None                      # Acknowledged, Error, CommandFormatError, NotNow; None: no answer yet
    errors: tuple[ErrorEntry, ...] = ()
    facts: tuple[tuple[str, str], ...] = ()  # (label, value)
    tables: tuple[Table, ...] = field(default=())

    def to_json(self) -> dict[str, Any]:
        return {"request_type": self.request_type, "status": self.status,
                "errors": [entry.to_json() for entry in self.errors],
                "facts": [list(fact) for fact in self.facts], "tables": [table.to_json() for table in self.tables]}


def summarize_plist(request_type: str | None, raw: bytes | None) -> Summary:
    if raw is None:
        return Summary(request_type, None)
    try:
        result = plist.load_dict(bytes(raw))
    except plist.PlistError as exc:
        return Summary(request_type, None, facts=(("result", f"unreadable ({len(raw)} bytes): {exc}"[:MAX_TEXT]),))
    return summarize(request_type, result)


def summarize(request_type: str | None, result: dict[str, Any] | None) -> Summary:
    if result is None:
        return Summary(request_type, None)
    status = result.get("Status")
    errors = error_chain(result.get("ErrorChain"))
    summarizer = _SUMMARIZERS.get(request_type or "", _other)
    try:
        facts, tables = summarizer(result)
    except (TypeError, AttributeError, ValueError):  # a device's odd types must not hide the rest
        facts, tables = _other(result)
    return Summary(request_type, status if isinstance(status, str) else None, errors, tuple(facts), tuple(tables))


def error_chain(chain: Any) -> tuple[ErrorEntry, ...]:
    if not isinstance(chain, list):
        return ()
    entries = []
    for item in chain:
        if not isinstance(item, dict):
            continue
        code = item.get("ErrorCode")
        description = item.get("USEnglishDescription") or item.get("LocalizedDescription")
        entries.append(ErrorEntry(code if isinstance(code, int) and not isinstance(code, bool) else None,
                                  _str_or_none(item.get("ErrorDomain")), _str_or_none(description)))
    return tuple(entries)


def text(value: Any) -> str:
    """A plist value as one short line: yes/no, dates in UTC, data as its size, containers compact."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    if isinstance(value, (bytes, bytearray)):
        return f"<{len(value)} bytes>"
    if isinstance(value, dict):
        shown = ", ".join(f"{key}: {text(item)}" for key, item in value.items())
        return _cut("{" + shown + "}")
    if isinstance(value, list):
        return _cut(", ".join(text(item) for item in value))
    return _cut(str(value))


def _cut(shown: str) -> str:
    shown = " ".join(shown.split())  # no line breaks inside a cell
    return shown if len(shown) <= MAX_TEXT else shown[:MAX_TEXT - 1] + "…"


def _str_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) else None


# --- per command ----------------------------------------------------------------------------------

Facts = list[tuple[str, str]]
Parts = tuple[Facts, list[Table]]


def _facts(source: dict, labels: dict[str, str]) -> Facts:
    return [(label, text(source[key])) for key, label in labels.items() if key in source]


def _rows(items: Any, columns: dict[str, Callable[[dict], Any] | str], sort: str | None = None) -> tuple[tuple[str, ...], ...]:
    entries = [item for item in items if isinstance(item, dict)] if isinstance(items, list) else []
    rows = []
    for item in entries:
        row = []
        for how in columns.values():
            value = how(item) if callable(how) else item.get(how)
            row.append(text(value))
        rows.append(tuple(row))
    if sort is not None:
        at = list(columns).index(sort)
        rows.sort(key=lambda row: row[at].lower())
    return tuple(rows)


def _table(title: str, items: Any, columns: dict[str, Callable[[dict], Any] | str], sort: str | None = None) -> Table:
    return Table(title, tuple(columns), _rows(items, columns, sort))


def _device_information(result: dict) -> Parts:
    responses = result.get("QueryResponses")
    if not isinstance(responses, dict):
        return _other(result)
    rows = tuple((str(key), text(value)) for key, value in responses.items())
    return [], [Table("Query responses", ("Query", "Value"), rows)]


# SecurityInfo: the facts an operator checks first, in reading order; the rest follow as they come.
_SECURITY = {
    "PasscodePresent": "Passcode set", "PasscodeCompliant": "Passcode compliant",
    "PasscodeCompliantWithProfiles": "Passcode compliant with profiles", "AutoLockTime": "Auto-lock (seconds)",
    "FDE_Enabled": "FileVault", "FDE_HasPersonalRecoveryKey": "FileVault personal recovery key",
    "FDE_HasInstitutionalRecoveryKey": "FileVault institutional recovery key",
    "SystemIntegrityProtectionEnabled": "System Integrity Protection",
    "AuthenticatedRootVolumeEnabled": "Signed system volume", "IsRecoveryLockEnabled": "Recovery lock",
    "RemoteDesktopEnabled": "Remote Desktop", "HardwareEncryptionCaps": "Hardware encryption (1 block, 2 file, 3 both)",
    "BootstrapTokenAllowedForAuthentication": "Bootstrap token for authentication",
    "BootstrapTokenRequiredForSoftwareUpdate": "Bootstrap token required for updates",
    "BootstrapTokenRequiredForKernelExtensionApproval": "Bootstrap token required for kext approval",
}
_FIREWALL = {"FirewallEnabled": "Firewall", "BlockAllIncoming": "Firewall blocks all incoming",
             "StealthMode": "Firewall stealth mode"}
_SECURE_BOOT = {"SecureBootLevel": "Secure boot", "ExternalBootLevel": "External boot"}
_MANAGEMENT = {"EnrolledViaDEP": "Enrolled via Automated Device Enrollment",
               "UserApprovedEnrollment": "User-approved enrollment", "IsUserEnrollment": "User Enrollment",
               "IsActivationLockManageable": "Activation Lock manageable"}
_FIRMWARE = {"PasswordExists": "Firmware password", "ChangePending": "Firmware password change pending"}


def _security_info(result: dict) -> Parts:
    info = result.get("SecurityInfo")
    if not isinstance(info, dict):
        return _other(result)
    facts = _facts(info, _SECURITY)
    for key, labels in (("FirewallSettings", _FIREWALL), ("SecureBoot", _SECURE_BOOT),
                        ("ManagementStatus", _MANAGEMENT), ("FirmwarePasswordStatus", _FIRMWARE)):
        if isinstance(info.get(key), dict):
            facts += _facts(info[key], labels)
    shown = set(_SECURITY) | {"FirewallSettings", "SecureBoot", "ManagementStatus", "FirmwarePasswordStatus"}
    facts += [(key, text(value)) for key, value in info.items() if key not in shown]
    return facts, []


def _profile_list(result: dict) -> Parts:
    return [], [_table("Profiles", result.get("ProfileList"), {
        "Name": "PayloadDisplayName", "Identifier": "PayloadIdentifier", "Organization": "PayloadOrganization",
        "Managed": "IsManaged", "Removal disallowed": "PayloadRemovalDisallowed"}, sort="Name")]


def _certificate_list(result: dict) -> Parts:
    return [], [_table("Certificates", result.get("CertificateList"), {
        "Common name": "CommonName", "Identity": "IsIdentity"}, sort="Common name")]


def _version(app: dict) -> Any:
    short, build = app.get("ShortVersion"), app.get("Version")
    if short is not None and build is not None and short != build:
        return f"{text(short)} ({text(build)})"
    return short if short is not None else build


def _installed_applications(result: dict) -> Parts:
    return [], [_table("Installed apps", result.get("InstalledApplicationList"), {
        "Name": "Name", "Version": _version, "Bundle ID": "Identifier"}, sort="Name")]


def _managed_applications(result: dict) -> Parts:
    apps = result.get("ManagedApplicationList")
    items = [{"Identifier": bundle_id, **state} for bundle_id, state in apps.items() if isinstance(state, dict)] \
        if isinstance(apps, dict) else []
    return [], [_table("Managed apps", items, {"Bundle ID": "Identifier", "Status": "Status",
                                               "Management flags": "ManagementFlags"}, sort="Bundle ID")]


def _available_updates(result: dict) -> Parts:
    return [], [_table("Available OS updates", result.get("AvailableOSUpdates"), {
        "Name": lambda u: u.get("HumanReadableName") or u.get("ProductName"), "Version": "Version",
        "Build": "Build", "Product key": "ProductKey", "Critical": "IsCritical", "Restart": "RestartRequired"})]


def _update_status(result: dict) -> Parts:
    return [], [_table("OS update status", result.get("OSUpdateStatus"), {
        "Product key": "ProductKey", "Status": "Status", "Downloaded": "IsDownloaded",
        "Percent": lambda u: _percent(u.get("DownloadPercentComplete"))})]


def _percent(value: Any) -> Any:
    return f"{value * 100:.0f}%" if isinstance(value, (int, float)) and not isinstance(value, bool) else value


def _schedule_update(result: dict) -> Parts:
    return [], [_table("Scheduled updates", result.get("UpdateResults"), {
        "Product key": "ProductKey", "Action": "InstallAction", "Status": "Status"})]


def _user_list(result: dict) -> Parts:
    return [], [_table("Users", result.get("Users"), {
        "User name": "UserName", "Full name": "FullName", "Logged in": "IsLoggedIn",
        "Secure token": "HasSecureToken", "Data to sync": "HasDataToSync"}, sort="User name")]


def _location(result: dict) -> Parts:
    return _facts(result, {"Latitude": "Latitude", "Longitude": "Longitude",
                           "HorizontalAccuracy": "Accuracy (m)", "Altitude": "Altitude (m)",
                           "Timestamp": "Located at"}), []


def _settings(result: dict) -> Parts:
    outcomes = result.get("Settings")
    if isinstance(outcomes, dict):  # a dictionary in the schema; an array of them is read too
        outcomes = [outcomes]
    return [], [_table("Settings", outcomes, {
        "Identifier": "Identifier", "Status": "Status", "Error": lambda s: _first_error(s.get("ErrorChain"))})]


def _first_error(chain: Any) -> str | None:
    entries = error_chain(chain)
    return entries[0].description if entries else None


def _other(result: dict) -> Parts:
    """Any other command: its result keys as facts (DeviceLock's MessageResult, InstallApplication's State...)."""
    return [(str(key), text(value)) for key, value in result.items() if key not in _ENVELOPE], []


_SUMMARIZERS: dict[str, Callable[[dict], Parts]] = {
    "DeviceInformation": _device_information,
    "SecurityInfo": _security_info,
    "ProfileList": _profile_list,
    "CertificateList": _certificate_list,
    "InstalledApplicationList": _installed_applications,
    "ManagedApplicationList": _managed_applications,
    "AvailableOSUpdates": _available_updates,
    "OSUpdateStatus": _update_status,
    "ScheduleOSUpdate": _schedule_update,
    "UserList": _user_list,
    "DeviceLocation": _location,
    "Settings": _settings,
}
SUMMARIZED = tuple(_SUMMARIZERS)  # request types with a summary of their own (the rest: result keys as facts)
