"""First run: is the config set up yet, and writing the operator's values into the commented TOML.

The config is edited line by line rather than re-serialized, so every comment of the reference file
(config/appliance.toml, shipped inside the package as reference.toml) stays where the operator reads it.
"""

from __future__ import annotations

import json
import re
import tomllib
from importlib.resources import files
from pathlib import Path
from urllib.parse import urlsplit

# RFC 2606 names for documentation: a public_url on one of them has not been chosen yet.
_EXAMPLE_DOMAINS = ("example.org", "example.com", "example.net")
_EXAMPLE_TLDS = ("example", "invalid")

_SECTION = re.compile(r"^\s*\[([A-Za-z0-9_.-]+)\]\s*(#.*)?$")


def reference_config() -> str:
    """The commented reference config every key is explained in."""
    return files("appliance").joinpath("reference.toml").read_text(encoding="utf-8")


def is_example_url(url: str) -> bool:
    host = (urlsplit(url).hostname or "").lower().rstrip(".")
    return (host in _EXAMPLE_DOMAINS or host.endswith(tuple("." + d for d in _EXAMPLE_DOMAINS))
            or host.rsplit(".", 1)[-1] in _EXAMPLE_TLDS)


def setup_needed(path: Path) -> str | None:
    """Why the config at `path` is not set up yet, or None once it names a real public_url.

    A file that cannot be read as TOML counts as set up: `serve` then reports its mistakes."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return f"{path} does not exist"
    except OSError as exc:
        return f"cannot read {path}: {exc.strerror or exc}"
    try:
        server = tomllib.loads(raw.decode("utf-8")).get("server", {})
    except (tomllib.TOMLDecodeError, UnicodeDecodeError):
        return None
    url = server.get("public_url") if isinstance(server, dict) else None
    if not isinstance(url, str) or not url:
        return f"{path} has no [server] public_url"
    if is_example_url(url):
        return f"{path} still has the example public_url ({url})"
    return None


def toml_string(value: str) -> str:
    # JSON's string escapes (\" \\ \n \uXXXX) are all valid in a TOML basic string.
    return json.dumps(value, ensure_ascii=False)


def set_values(text: str, values: dict[tuple[str, str], str]) -> str:
    """`text` with each (section, key) set to its TOML literal.

    An active `key = ...` line is replaced; else a commented-out `# key = ...` example in the section
    is replaced (the comments above it stay); else the key is added at the end of its section, or a
    new section is added at the end of the file.
    """
    lines = text.splitlines()
    for (section, key), literal in values.items():
        assignment = f"{key} = {literal}"
        start, end = _section_span(lines, section)
        if start is None:
            lines += ["", f"[{section}]", assignment]
            continue
        active = re.compile(rf"^\s*{re.escape(key)}\s*=")
        commented = re.compile(rf"^\s*#\s*{re.escape(key)}\s*=")
        body = range(start + 1, end)
        found = (next((i for i in body if active.match(lines[i])), None)
                 or next((i for i in body if commented.match(lines[i])), None))
        if found is not None:
            lines[found] = assignment
        else:
            insert_at = end
            while insert_at > start + 1 and not lines[insert_at - 1].strip():
                insert_at -= 1
            lines.insert(insert_at, assignment)
    return "\n".join(lines) + "\n"


def _section_span(lines: list[str], section: str) -> tuple[int | None, int]:
    """(index of the `[section]` header, index where the next section starts)."""
    start = None
    for index, line in enumerate(lines):
        match = _SECTION.match(line)
        if match and start is not None:
            return start, index
        if match and match.group(1) == section:
            start = index
    return start, len(lines)
