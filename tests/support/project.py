"""Facts about the project read from its own files (imports nothing from appliance)."""

from __future__ import annotations

import os
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# Where packaging/build keeps its virtualenv (PyInstaller and its tools).
BUILD_VENV = Path(os.environ.get("BUILD_VENV", ROOT / "build" / "venv"))


def pyproject_version() -> str:
    """The one version number, as pyproject.toml states it."""
    with open(ROOT / "pyproject.toml", "rb") as file:
        return tomllib.load(file)["project"]["version"]
