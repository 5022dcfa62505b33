"""Apple's Device Assignment service (ADE, "DEP"), sans-I/O: the server token, the JSON requests and answers
of fetch/sync, define/assign/remove profile and account detail, and its error codes.

Facts from Apple's "Device Assignment" documentation: a fetch pages through every device assigned to the
MDM server (limit up to 1000); its last cursor starts the syncs, which return the changes since (op_type
added, modified, deleted) and may name a device twice (the latest op_date is the truth); a cursor older
than 7 days is refused (EXPIRED_CURSOR). Errors come as a code in the body (EXPIRED_CURSOR, or as JSON).
Every parse error names the key that is wrong.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

DEFAULT_URL = "https://mdmenrollment.apple.com"
# X-Server-Protocol-Version: 7 reports iPads as "iPadOS" and carries device_family.
PROTOCOL_VERSION = "7"
MAX_LIMIT = 1000
CURSOR_MAX_AGE_DAYS = 7

# op_type of a sync record.
ADDED, MODIFIED, DELETED = "added", "modified", "deleted"
# Per-device answers of assign / remove profile.
SUCCESS, NOT_ACCESSIBLE, FAILED, THROTTLED = "SUCCESS", "NOT_ACCESSIBLE", "FAILED", "THROTTLED"

# Error codes of the cursor (400) and of the session (401/403).
EXPIRED_CURSOR, INVALID_CURSOR, EXHAUSTED_CURSOR = "EXPIRED_CURSOR", "INVALID_CURSOR", "EXHAUSTED_CURSOR"
CURSOR_REQUIRED = "CURSOR_REQUIRED"
CURSOR_ERRORS = frozenset({EXPIRED_CURSOR, INVALID_CURSOR, CURSOR_REQUIRED})
FORBIDDEN, UNAUTHORIZED, TERMS_NOT_SIGNED = "FORBIDDEN", "UNAUTHORIZED", "T_C_NOT_SIGNED"

# Setup Assistant panes a profile can skip (apple/device-management other/skipkeys.yaml, and the older keys
# earlier OS versions still read). An unknown name is refused: a typo would silently skip nothing.
SKIP_SETUP_ITEMS = frozenset({
    "Accessibility", "ActionButton", "Android", "Appearance", "AppleID", "AppStore", "Biometric",
    "CameraButton", "DeviceToDeviceMigration", "Diagnostics", "DisplayTone", "EnableLockdownMode", "FileVault",
    "HomeButtonSensitivity", "iCloudDiagnostics", "iCloudStorage", "iMessageAndFaceTime", "Intelligence",
    "Keyboard", "Location", "MessagingActivationUsingPhoneNumber", "OnBoarding", "Passcode", "Payment",
    "Privacy", "Restore", "RestoreCompleted", "ScreenSaver", "Safety", "ScreenTime", "SIMSetup", "Siri",
    "SoftwareUpdate", "SpokenLanguage", "TapToSetup", "TermsOfAddress", "TOS", "TVHomeScreenSync",
    "TVProviderSignIn", "TVRoom", "UpdateCompleted", "Wallpaper", "WatchMigration", "Welcome", "Zoom",
    # Older keys, still honoured by the OS versions that had them.
    "Registration", "UnlockWithWatch", "ExpressLanguage", "PreferredLanguage", "Avatar", "Tone",
})


class DepAnswerError(ValueError):
    """An answer of the service that does not have the shape its documentation gives; names the key."""


# --- the server token ---------------------------------------------------------------------------------

@dataclass(frozen=True, repr=False)
class ServerToken:
    consumer_key: str
    consumer_secret: str
    access_token: str
    access_secret: str
    expires_at: datetime | None  # access_token_expiry

    def __repr__(self) -> str:
        return f"ServerToken(consumer_key={self.consumer_key[:8]}..., expires_at={self.expires_at})"

    def as_json(self) -> str:
        return json.dumps({
            "consumer_key": self.consumer_key, "consumer_secret": self.consumer_secret,
            "access_token": self.access_token, "access_secret": self.access_secret,
            "access_token_expiry": _iso(self.expires_at),
        })


_TOKEN_KEYS = ("consumer_key", "consumer_secret", "access_token", "access_secret")


def parse_server_token(text: bytes | str) -> ServerToken:
    """The decrypted content of a server token file: a MIME header block, then the token JSON between
    -----BEGIN MESSAGE----- and -----END MESSAGE----- (plain JSON is accepted as well)."""
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError:
            raise DepAnswerError("the token is not UTF-8 text") from None
    body = text
    start, end = body.find("-----BEGIN MESSAGE-----"), body.find("-----END MESSAGE-----")
    if start != -1 and end > start:
        body = body[start + len("-----BEGIN MESSAGE-----"):end]
    elif "{" in body:
        body = body[body.find("{"):]
    try:
        document = json.loads(body)
    except ValueError:
        raise DepAnswerError("the token holds no JSON") from None
    if not isinstance(document, dict):
        raise DepAnswerError("the token JSON is not an object")
    for key in _TOKEN_KEYS:
        if not isinstance(document.get(key), str) or not document[key]:
            raise DepAnswerError(f"the token has no {key}")
    expiry = document.get("access_token_expiry")
    return ServerToken(*(document[key] for key in _TOKEN_KEYS),
                       expires_at=parse_time(expiry, "access_token_expiry") if expiry else None)


# --- devices ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class DepDevice:
    serial_number: str
    model: str | None = None
    description: str | None = None
    color: str | None = None
    asset_tag: str | None = None
    os: str | None = None
    device_family: str | None = None
    profile_status: str | None = None  # empty, assigned, pushed, removed
    profile_uuid: str | None = None
    profile_assign_time: datetime | None = None
    profile_push_time: datetime | None = None
    device_assigned_date: datetime | None = None
    device_assigned_by: str | None = None
    op_type: str | None = None  # sync only: added, modified, deleted
    op_date: datetime | None = None


@dataclass(frozen=True)
class DevicePage:
    """One answer of fetch or sync."""

    devices: tuple[DepDevice, ...]
    cursor: str
    more_to_follow: bool
    fetched_until: datetime | None = None


_DEVICE_TEXT = ("model", "description", "color", "asset_tag", "os", "device_family", "profile_status",
                "profile_uuid", "device_assigned_by")
_DEVICE_TIMES = ("profile_assign_time", "profile_push_time", "device_assigned_date", "op_date")


def parse_device(item: Any, where: str = "device") -> DepDevice:
    if not isinstance(item, dict):
        raise DepAnswerError(f"{where} is not an object")
    serial = item.get("serial_number")
    if not isinstance(serial, str) or not serial.strip():
        raise DepAnswerError(f"{where}.serial_number is missing or not a string")
    values: dict[str, Any] = {}
    for key in _DEVICE_TEXT:
        value = item.get(key)
        if value is not None and not isinstance(value, str):
            raise DepAnswerError(f"{where}.{key} is not a string")
        values[key] = value or None
    for key in _DEVICE_TIMES:
        value = item.get(key)
        values[key] = parse_time(value, f"{where}.{key}") if value else None
    op_type = item.get("op_type")
    if op_type is not None and not isinstance(op_type, str):
        raise DepAnswerError(f"{where}.op_type is not a string")
    return DepDevice(serial_number=serial.strip(), op_type=op_type.lower() if op_type else None, **values)


def parse_device_page(data: bytes) -> DevicePage:
    document = _object(data, "fetch/sync answer")
    cursor = document.get("cursor")
    if not isinstance(cursor, str) or not cursor:
        raise DepAnswerError("cursor is missing or not a string")
    more = document.get("more_to_follow", False)
    if not isinstance(more, bool):
        raise DepAnswerError("more_to_follow is not true or false")
    items = document.get("devices")
    items = [] if items is None else items
    if not isinstance(items, list):
        raise DepAnswerError("devices is not an array")
    devices = tuple(parse_device(item, f"devices[{index}]") for index, item in enumerate(items))
    fetched = document.get("fetched_until")
    return DevicePage(devices, cursor, more, parse_time(fetched, "fetched_until") if fetched else None)


def latest_per_serial(devices: tuple[DepDevice, ...] | list[DepDevice]) -> list[DepDevice]:
    """One record per serial number: the one with the latest op_date (Apple: sync may name a device more
    than once; the latest op_date is its last known state). A tie, or no dates: the later record."""
    latest: dict[str, DepDevice] = {}
    for device in devices:
        seen = latest.get(device.serial_number)
        if seen is None or _op_moment(device) >= _op_moment(seen):
            latest[device.serial_number] = device
    return list(latest.values())


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _op_moment(device: DepDevice) -> datetime:
    return device.op_date or _EPOCH


def fetch_request(cursor: str | None, limit: int) -> dict:
    body: dict[str, Any] = {"limit": max(1, min(MAX_LIMIT, limit))}
    if cursor:
        body["cursor"] = cursor
    return body


# --- profiles -----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ProfileSettings:
    """What the appliance defines with Apple for its ADE devices (Apple's DEP profile keys)."""

    profile_name: str
    url: str
    is_supervised: bool = True
    is_mandatory: bool = True
    is_mdm_removable: bool = False
    await_device_configured: bool = False
    auto_advance_setup: bool = False
    department: str | None = None
    support_phone_number: str | None = None
    support_email_address: str | None = None
    org_magic: str | None = None
    language: str | None = None
    region: str | None = None
    skip_setup_items: tuple[str, ...] = ()
    anchor_certs: tuple[str, ...] = ()  # base64 DER: what the device trusts for the TLS of `url`


def define_profile_body(settings: ProfileSettings) -> dict:
    """The Define-a-Profile request body, without devices (assignment is a separate call)."""
    unknown = [item for item in settings.skip_setup_items if item not in SKIP_SETUP_ITEMS]
    if unknown:
        raise ValueError(f"unknown Setup Assistant pane(s) to skip: {', '.join(unknown)}")
    body: dict[str, Any] = {
        "profile_name": settings.profile_name,
        "url": settings.url,
        "is_supervised": settings.is_supervised,
        "is_mandatory": settings.is_mandatory,
        "is_mdm_removable": settings.is_mdm_removable,
        "await_device_configured": settings.await_device_configured,
        "auto_advance_setup": settings.auto_advance_setup,
        "skip_setup_items": list(settings.skip_setup_items),
    }
    for key in ("department", "support_phone_number", "support_email_address", "org_magic", "language", "region"):
        value = getattr(settings, key)
        if value:
            body[key] = value
    if settings.anchor_certs:
        body["anchor_certs"] = list(settings.anchor_certs)
    return body


def profile_hash(body: dict) -> str:
    """A stable fingerprint of a profile body: a changed config means the profile is defined again."""
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def parse_define_answer(data: bytes) -> str:
    document = _object(data, "define profile answer")
    uuid = document.get("profile_uuid")
    if not isinstance(uuid, str) or not uuid:
        raise DepAnswerError("profile_uuid is missing or not a string")
    return uuid


@dataclass(frozen=True)
class AssignAnswer:
    profile_uuid: str | None
    devices: dict[str, str]  # serial -> SUCCESS, NOT_ACCESSIBLE, FAILED, THROTTLED (or a newer word)


def parse_assign_answer(data: bytes) -> AssignAnswer:
    """Also the answer of Remove a Profile (no profile_uuid there)."""
    document = _object(data, "profile answer")
    devices = document.get("devices") or {}
    if not isinstance(devices, dict) or not all(isinstance(v, str) for v in devices.values()):
        raise DepAnswerError("devices is not an object of serial number -> status")
    uuid = document.get("profile_uuid")
    return AssignAnswer(uuid if isinstance(uuid, str) else None, {str(k): v.upper() for k, v in devices.items()})


def profile_devices_request(profile_uuid: str | None, serials: list[str]) -> dict:
    body: dict[str, Any] = {"devices": list(serials)}
    if profile_uuid:
        body["profile_uuid"] = profile_uuid
    return body


# --- the account --------------------------------------------------------------------------------------

_ACCOUNT_KEYS = ("server_name", "server_uuid", "org_name", "org_email", "org_phone", "org_address", "org_id",
                 "org_type", "org_version", "admin_id", "facilitator_id")


def parse_account(data: bytes) -> dict[str, str]:
    """Account detail: the MDM server's name in ABM and the organization (the text fields only)."""
    document = _object(data, "account answer")
    return {key: document[key] for key in _ACCOUNT_KEYS if isinstance(document.get(key), str)}


# --- errors -------------------------------------------------------------------------------------------

_CODE = re.compile(r"[A-Z][A-Z0-9_]{2,63}")


def error_code(body: bytes) -> str | None:
    """The error code of an answer: a bare word (EXPIRED_CURSOR), a JSON string ("EXPIRED_CURSOR", as the
    simulator depsim writes it) or a JSON object's "code"; None when the body carries none."""
    text = body[:4096].decode("utf-8", "replace").strip()
    try:
        decoded = json.loads(text)
    except ValueError:
        decoded = text
    if isinstance(decoded, dict):
        decoded = decoded.get("code") or decoded.get("error") or ""
    if isinstance(decoded, str) and _CODE.fullmatch(decoded.strip()):
        return decoded.strip()
    return None


# --- shared -------------------------------------------------------------------------------------------

def parse_time(value: Any, key: str) -> datetime:
    """ISO 8601 as Apple writes it ("2024-05-29T19:08:17Z", with or without fractions or an offset)."""
    if not isinstance(value, str):
        raise DepAnswerError(f"{key} is not a time string")
    try:
        moment = datetime.fromisoformat(value.strip())
    except ValueError:
        raise DepAnswerError(f"{key} is not an ISO 8601 time: {value[:40]!r}") from None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _object(data: bytes, what: str) -> dict:
    try:
        document = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        raise DepAnswerError(f"the {what} is not JSON") from None
    except RecursionError:
        raise DepAnswerError(f"the {what} is nested too deeply") from None
    if not isinstance(document, dict):
        raise DepAnswerError(f"the {what} is not a JSON object")
    return document
