"""MachineInfo: what a device in Setup Assistant sends to the ADE profile's url before it enrolls.

Apple ("MachineInfo", Device Management): a dictionary, CMS-signed with the device identity certificate,
with UDID, SERIAL, PRODUCT, VERSION, IMEI, MEID, LANGUAGE (and on newer systems OS_VERSION,
SOFTWARE_UPDATE_DEVICE_ID, MDM_CAN_REQUEST_SOFTWARE_UPDATE). The signature is checked in
appliance.identity.machine_info; this module reads the signed bytes. Errors name the key.
"""

from __future__ import annotations

from dataclasses import dataclass

from appliance.protocol import plist
from appliance.protocol.errors import MessageError

MAX_SIZE = 64 * 1024  # a real one is a few hundred bytes
CONTENT_TYPE = "application/pkcs7-signature"


@dataclass(frozen=True)
class MachineInfo:
    udid: str
    serial_number: str
    product: str | None = None
    version: str | None = None  # the build version
    os_version: str | None = None
    imei: str | None = None
    meid: str | None = None
    language: str | None = None


_OPTIONAL = {"product": "PRODUCT", "version": "VERSION", "os_version": "OS_VERSION", "imei": "IMEI",
             "meid": "MEID", "language": "LANGUAGE"}


def parse_machine_info(data: bytes) -> MachineInfo:
    try:
        document = plist.load_dict(data, max_size=MAX_SIZE)
    except plist.PlistError as exc:
        raise MessageError(f"machine info is not a property list: {exc}") from None
    required = {}
    for key in ("UDID", "SERIAL"):
        value = document.get(key)
        if not isinstance(value, str) or not value.strip() or len(value) > 128 or not value.isprintable():
            raise MessageError(f"machine info: {key} is missing or not a short printable string")
        required[key] = value.strip()
    optional = {}
    for name, key in _OPTIONAL.items():
        value = document.get(key)
        if value is not None and (not isinstance(value, str) or len(value) > 256):
            raise MessageError(f"machine info: {key} is not a string")
        optional[name] = value or None
    return MachineInfo(udid=required["UDID"], serial_number=required["SERIAL"], **optional)
