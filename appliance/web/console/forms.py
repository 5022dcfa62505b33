"""The "Send a command" form drawn from the command catalog (appliance.protocol.catalog): one field per key,
shaped by its type, and the form's answers turned back into the (key, text) pairs catalog.build types."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from appliance.protocol.catalog import CommandSpec, Key

FIELD = "key."  # form field name prefix: key.Queries, key.PIN, ...


@dataclass(frozen=True)
class Field:
    key: Key
    widget: str  # select, checkboxes, boolean, number, text, lines, json, file

    @property
    def name(self) -> str:
        return FIELD + self.key.name

    @property
    def hint(self) -> str:
        hints = {"lines": "one per line (or a JSON array)", "json": "JSON",
                 "file": "a file", "text": self.key.describe()}
        return hints.get(self.widget, self.key.describe() if self.widget == "number" else "")


def widget(key: Key) -> str:
    if key.type == "array":
        item = key.items[0] if len(key.items) == 1 else None
        if item is not None and item.allowed:
            return "checkboxes"
        if item is not None and item.type in ("string", "integer", "real"):
            return "lines"
        return "json"
    if key.allowed:
        return "select"
    return {"boolean": "boolean", "integer": "number", "real": "number", "data": "file",
            "dictionary": "json", "any": "json"}.get(key.type, "text")


def fields(spec: CommandSpec) -> list[Field]:
    return [Field(key, widget(key)) for key in spec.keys]


def pairs(spec: CommandSpec, form, files) -> list[tuple[str, Any]]:
    """(key, value) pairs for catalog.build from the posted form; empty fields are left out."""
    found: list[tuple[str, Any]] = []
    for entry in fields(spec):
        name, kind = entry.key.name, entry.widget
        if kind == "file":
            upload = files.get(entry.name)
            data = upload.read() if upload is not None else b""
            if data:
                found.append((name, data))
        elif kind == "checkboxes":
            found += [(name, value) for value in form.getlist(entry.name) if value]
        elif kind == "lines":
            text = (form.get(entry.name) or "").strip()
            if text.startswith("["):
                found.append((name, text))
            else:
                found += [(name, line.strip()) for line in text.splitlines() if line.strip()]
        else:
            value = (form.get(entry.name) or "").strip() if kind != "text" else form.get(entry.name) or ""
            if value != "":
                found.append((name, value))
    return found
