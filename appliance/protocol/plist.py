"""The one property-list codec of the appliance: every plist read from the network or written to it passes here.

plistlib does the parsing (XML and binary); this module turns every way it can fail on hostile bytes
(broken XML, entity declarations, truncated binary tables, absurd nesting) into one PlistError, checks
the top-level type, and writes XML plists with the keys in the order they were given.
"""

from __future__ import annotations

import plistlib
from typing import Any

# Apple's own answers and the examples in its documentation are XML plists in UTF-8.
CONTENT_TYPE = "application/xml; charset=UTF-8"


class PlistError(ValueError):
    """The bytes are not an acceptable property list; str(error) is a short reason fit for a 400 answer."""


class PlistTooLarge(PlistError):
    pass


def load(data: bytes, *, max_size: int | None = None) -> Any:
    """Parse a plist (XML or binary) of any top-level type."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise PlistError("expected bytes")
    if max_size is not None and len(data) > max_size:
        raise PlistTooLarge(f"property list of {len(data)} bytes is over the limit of {max_size} bytes")
    if not data:
        raise PlistError("empty body, expected a property list")
    try:
        return plistlib.loads(bytes(data))
    except plistlib.InvalidFileException as exc:
        raise PlistError(f"not a property list: {exc}") from None
    except RecursionError:
        raise PlistError("not a property list: nested too deeply") from None
    except MemoryError:
        raise PlistError("not a property list: does not fit in memory") from None
    except Exception as exc:  # expat, struct, Unicode, index, overflow errors from malformed input
        raise PlistError(f"not a property list: {type(exc).__name__}: {exc}") from None


def load_dict(data: bytes, *, max_size: int | None = None) -> dict[str, Any]:
    """Parse a plist whose top level must be a dictionary (every MDM message, command and report)."""
    value = load(data, max_size=max_size)
    if not isinstance(value, dict):
        raise PlistError(f"property list must be a dictionary, got {type_name(value)}")
    return value


def dump(value: Any) -> bytes:
    """An XML plist in UTF-8, keys in insertion order (the order is part of what a reader expects to see)."""
    return plistlib.dumps(value, fmt=plistlib.FMT_XML, sort_keys=False)


def type_name(value: Any) -> str:
    """'a string', 'an array', ... for error messages naming what was found."""
    return {
        str: "a string", bytes: "data", bool: "a boolean", int: "an integer", float: "a real",
        list: "an array", dict: "a dictionary",
    }.get(type(value), type(value).__name__)

