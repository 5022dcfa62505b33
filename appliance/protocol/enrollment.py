"""Enrollment IDs: one string per channel a device speaks on, in NanoMDM's convention so that scripts
written for NanoMDM target the same ids here.

    Device channel                UDID                      (User Enrollment: EnrollmentID)
    User channel                  UDID:UserID               (User Enrollment: EnrollmentID:EnrollmentUserID)
    Shared iPad user channel      UDID:UserShortName        (UserID is then the fixed all-F value)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from appliance.protocol.errors import MessageError
from appliance.protocol.plist import type_name

# Shared iPad users all connect with this UserID; the managed Apple ID in UserShortName tells them apart.
SHARED_IPAD_USER_ID = "FFFFFFFF-FFFF-FFFF-FFFF-FFFFFFFFFFFF"

DEVICE = "Device"
USER = "User"
USER_ENROLLMENT_DEVICE = "User Enrollment (Device)"
USER_ENROLLMENT = "User Enrollment"
SHARED_IPAD = "Shared iPad"

_MAX_ID = 256


@dataclass(frozen=True, slots=True)
class Enrollment:
    id: str                     # the enrollment ID commands are queued to
    device_id: str              # the device channel's id (== id on the device channel)
    type: str                   # one of the five type names above (NanoMDM's words)
    udid: str                   # the message's UDID ("" for User Enrollment)
    enrollment_id: str          # the message's EnrollmentID ("" for device enrollments)
    user_id: str | None = None
    user_short_name: str | None = None
    user_long_name: str | None = None

    @property
    def is_user_channel(self) -> bool:
        return self.id != self.device_id

    def ids(self) -> dict[str, str | None]:
        """NanoMDM's resolved-ids object, as webhook events carry it."""
        return {"id": self.id, "parent_id": self.device_id if self.is_user_channel else None, "type": self.type}


def from_record(enrollment_id: str, device_id: str, kind: str) -> Enrollment:
    """An enrollment as the database keeps it (id, device id, type), for events no device message carries
    (user names are not needed there)."""
    user_enrollment = kind in (USER_ENROLLMENT_DEVICE, USER_ENROLLMENT)
    return Enrollment(enrollment_id, device_id, kind, "" if user_enrollment else device_id,
                      device_id if user_enrollment else "")


def _optional_str(message: dict[str, Any], key: str) -> str | None:
    value = message.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise MessageError(f"key {key} must be a string, got {type_name(value)}")
    return value or None


def _channel_part(value: str, key: str, *, may_hold_colon: bool) -> str:
    if len(value) > _MAX_ID:
        raise MessageError(f"key {key} is longer than {_MAX_ID} characters")
    if not value.isprintable():
        raise MessageError(f"key {key} holds control characters")
    # A colon in a device id would let one device name another's user channel ("UDID:UserID").
    if not may_hold_colon and ":" in value:
        raise MessageError(f"key {key} must not contain ':'")
    return value


def resolve(message: dict[str, Any]) -> Enrollment:
    """The enrollment a check-in or report speaks for; MessageError if it names none."""
    udid = _optional_str(message, "UDID")
    enrollment_id = _optional_str(message, "EnrollmentID")
    user_id = _optional_str(message, "UserID")
    short_name = _optional_str(message, "UserShortName")
    long_name = _optional_str(message, "UserLongName")
    if udid:
        device = _channel_part(udid, "UDID", may_hold_colon=False)
        if user_id is None:
            return Enrollment(device, device, DEVICE, udid, enrollment_id or "")
        if user_id == SHARED_IPAD_USER_ID:
            if short_name is None:
                raise MessageError("Shared iPad user channel without UserShortName")
            user = _channel_part(short_name, "UserShortName", may_hold_colon=True)
            kind = SHARED_IPAD
        else:
            user = _channel_part(user_id, "UserID", may_hold_colon=True)
            kind = USER
        return Enrollment(f"{device}:{user}", device, kind, udid, enrollment_id or "",
                          user_id, short_name, long_name)
    if enrollment_id:
        device = _channel_part(enrollment_id, "EnrollmentID", may_hold_colon=False)
        user_part = _optional_str(message, "EnrollmentUserID")
        if user_part is None:
            return Enrollment(device, device, USER_ENROLLMENT_DEVICE, "", enrollment_id)
        user = _channel_part(user_part, "EnrollmentUserID", may_hold_colon=True)
        return Enrollment(f"{device}:{user}", device, USER_ENROLLMENT, "", enrollment_id,
                          user_id, short_name, long_name)
    raise MessageError("missing key UDID (or EnrollmentID for User Enrollment)")
