"""One version number: pyproject.toml's, as `--version` and the package report it."""

from __future__ import annotations

import os
import subprocess
import sys

import appliance
from tests.support.project import ROOT, pyproject_version


def test_version_option_prints_pyproject_version():
    result = subprocess.run([sys.executable, "-m", "appliance", "--version"], capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=60)
    assert result.returncode == 0, result.stderr
    # A stale editable install (pyproject bumped, not reinstalled) fails here: pip install -e . again.
    assert result.stdout.strip() == f"mdm-appliance, version {pyproject_version()}"


def test_outgoing_user_agent_names_the_version():
    assert appliance.USER_AGENT == f"mdm-appliance/{pyproject_version()}"


def test_changelog_has_a_section_for_the_current_version():
    changelog = (ROOT / "CHANGELOG.md").read_text()
    assert f"\n## {pyproject_version()} " in changelog
