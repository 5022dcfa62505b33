"""Builds the executable and the Debian package once per test session (packaging/build), for every
test in tests/packaging. These tests are marked `packaging`: `pytest -m "not packaging"` skips them.
MDM_PACKAGING_PREBUILT=1 tests what dist/ holds instead (after running packaging/build yourself)."""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.project import ROOT, pyproject_version

BUILD_TIMEOUT = 900  # seconds: a first build (virtualenv, PyInstaller, dpkg-deb, lintian) takes 2-4 minutes


@dataclass(frozen=True)
class Built:
    executable: Path  # dist/mdm-appliance, one file
    deb: Path | None  # dist/mdm-appliance_<version>_<arch>.deb, where dpkg-deb exists
    log: str | None  # what packaging/build printed (None: MDM_PACKAGING_PREBUILT)


@pytest.fixture(scope="session")
def built() -> Built:
    has_dpkg = shutil.which("dpkg-deb") is not None and shutil.which("dpkg-shlibdeps") is not None
    log = None
    if os.environ.get("MDM_PACKAGING_PREBUILT") != "1":
        command = [str(ROOT / "packaging" / "build")] + ([] if has_dpkg else ["--no-deb"])
        result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=BUILD_TIMEOUT)
        assert result.returncode == 0, f"packaging/build failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        log = result.stdout + result.stderr
    deb = None
    if has_dpkg:
        arch = subprocess.run(["dpkg", "--print-architecture"], capture_output=True, text=True).stdout.strip()
        deb = ROOT / "dist" / f"mdm-appliance_{pyproject_version()}_{arch}.deb"
        assert deb.is_file()
    return Built(ROOT / "dist" / "mdm-appliance", deb, log)


@pytest.fixture
def deb(built: Built) -> Path:
    if built.deb is None:
        pytest.skip("dpkg-dev is not installed (.ci/run installs it)")
    return built.deb
