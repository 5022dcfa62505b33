"""A device's report made readable for a page: the status, the ErrorChain (code, domain, description) and
the answer itself as key/value facts and tables, never raw plist."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from appliance.protocol import plist

# Keys every report carries that say nothing about the answer.
_ENVELOPE = {"Status", "UDID", "CommandUUID", "ErrorChain", "EnrollmentID", "EnrollmentUserID", "UserID",
             "UserShortName", "UserLongName", "RequestType"}
MAX_ROWS = 500
MAX_COLUMNS = 6


def error_chain(text_or_list) -> list[dict]:
    """ErrorChain as stored (JSON text) or as reported (a list) -> [{code, domain, description}]."""
    chain = text_or_list
    if isinstance(chain, str):
        try:
            chain = json.loads(chain)
        except ValueError:
            return [{"code": None, "domain": None, "description": chain}]
    if not isinstance(chain, list):
        return []
    shown = []
    for entry in chain:
        if isinstance(entry, dict):
            shown.append({"code": entry.get("ErrorCode"), "domain": entry.get("ErrorDomain"),
                          "description": entry.get("USEnglishDescription") or entry.get("LocalizedDescription")})
    return shown


def view(request_type: str | None, status: str | None, raw: bytes | None, stored_chain=None) -> dict:
    """{status, errors, facts: [(key, text)], tables: [{title, columns, rows}]} for a template."""
    shown: dict[str, Any] = {"status": status, "errors": error_chain(stored_chain) if stored_chain else [],
                             "facts": [], "tables": []}
    if raw is None:
        return shown
    try:
        report = plist.load_dict(bytes(raw))
    except plist.PlistError:
        shown["facts"].append(("result", f"not a property list ({len(raw)} bytes)"))
        return shown
    if not shown["errors"] and "ErrorChain" in report:
        shown["errors"] = error_chain(report["ErrorChain"])
    for key, value in report.items():
        if key not in _ENVELOPE:
            _add(shown, key, value)
    return shown


def _add(shown: dict, key: str, value: Any) -> None:
    if isinstance(value, dict):
        for inner, inner_value in value.items():
            _add(shown, inner if key == "QueryResponses" else f"{key}.{inner}", inner_value)
    elif isinstance(value, list) and value and all(isinstance(item, dict) for item in value):
        shown["tables"].append(_table(key, value))
    else:
        shown["facts"].append((key, text(value)))


def _table(title: str, items: list[dict]) -> dict:
    columns: list[str] = []
    for item in items[:MAX_ROWS]:
        for key, value in item.items():
            if key not in columns and not isinstance(value, (dict, list)) and len(columns) < MAX_COLUMNS:
                columns.append(key)
    rows = [[text(item.get(column)) for column in columns] for item in items[:MAX_ROWS]]
    return {"title": title, "columns": columns, "rows": rows, "more": max(0, len(items) - MAX_ROWS)}


def text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (bytes, bytearray)):
        return f"({len(value)} bytes of data)"
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    if isinstance(value, list):
        return ", ".join(text(item) for item in value)
    if isinstance(value, dict):
        return ", ".join(f"{key}: {text(item)}" for key, item in value.items())
    return str(value)
