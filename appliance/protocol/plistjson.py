"""Property-list values as JSON and back, for the admin API and the CLI.

JSON has no binary data or dates, plists have no null. The mapping, documented in the OpenAPI document:
  data  <->  {"$data": "<base64>"}
  date  <->  {"$date": "2026-11-21T21:30:00Z"}   (UTC, ISO 8601)
Everything else maps one to one (dict, array, string, integer, real, boolean). A JSON object with a
"$data"/"$date" key and any other key is an error, so the markers can never be confused with a payload.
Nesting is limited to MAX_DEPTH levels both ways: both walks recurse, and a hostile document (or a
device's result) nested thousands deep must be an error, not a crash.
"""

from __future__ import annotations

import base64
import binascii
import math
from datetime import UTC, datetime
from typing import Any

DATA = "$data"
DATE = "$date"
MAX_DEPTH = 100  # far beyond any real command or result; well inside Python's recursion limit


class JsonPlistError(ValueError):
    """str(error) names where in the document the problem is, e.g. 'Command.Payload: ...'."""


def to_json(value: Any, depth: int = 0) -> Any:
    if isinstance(value, (dict, list, tuple)) and depth >= MAX_DEPTH:
        raise JsonPlistError(f"nested deeper than {MAX_DEPTH} levels")
    if isinstance(value, dict):
        return {str(key): to_json(item, depth + 1) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_json(item, depth + 1) for item in value]
    if isinstance(value, (bytes, bytearray)):
        return {DATA: base64.b64encode(bytes(value)).decode("ascii")}
    if isinstance(value, datetime):
        moment = value if value.tzinfo else value.replace(tzinfo=UTC)
        return {DATE: moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")}
    return value


def from_json(value: Any, where: str = "", depth: int = 0) -> Any:
    """A JSON value (as json.loads gives it) -> a value plistlib can write."""
    if isinstance(value, (dict, list)) and depth >= MAX_DEPTH:
        raise JsonPlistError(f"{where or 'value'}: nested deeper than {MAX_DEPTH} levels")
    if isinstance(value, dict):
        if DATA in value or DATE in value:
            return _marker(value, where)
        return {key: from_json(item, _join(where, key), depth + 1) for key, item in value.items()}
    if isinstance(value, list):
        return [from_json(item, f"{where}[{index}]", depth + 1) for index, item in enumerate(value)]
    if value is None:
        raise JsonPlistError(f"{where or 'value'}: null has no property-list equivalent; leave the key out")
    if isinstance(value, float) and not math.isfinite(value):
        raise JsonPlistError(f"{where or 'value'}: not a finite number")
    if isinstance(value, int) and not isinstance(value, bool) and not -(2**63) <= value < 2**64:
        raise JsonPlistError(f"{where or 'value'}: integer out of the 64-bit range")
    return value


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _marker(value: dict, where: str) -> Any:
    name = where or "value"
    if len(value) != 1:
        raise JsonPlistError(f"{name}: an object with {DATA!r} or {DATE!r} must have no other key")
    ((marker, text),) = value.items()
    if not isinstance(text, str):
        raise JsonPlistError(f"{name}: {marker!r} must be a string")
    if marker == DATA:
        try:
            return base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raise JsonPlistError(f"{name}: {DATA!r} is not valid base64") from None
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise JsonPlistError(f"{name}: {DATE!r} is not an ISO 8601 date-time") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    try:
        # plistlib writes naive datetimes as UTC.
        return moment.astimezone(UTC).replace(tzinfo=None)
    except OverflowError:  # e.g. 0001-01-01T00:00:00+14:00 is before year 1 in UTC
        raise JsonPlistError(f"{name}: {DATE!r} is out of range in UTC") from None
