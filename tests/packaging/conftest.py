"""Builds the executable and the Debian package once per test session (packaging/build), for every
test in tests/packaging. These tests are marked `packaging`: `pytest -m "not packaging"` skips them.
MDM_PACKAGING_PREBUILT=1 tests what dist/ holds instead (after running packaging/build yourself)."""

from __future__ import annotations

import fcntl
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
        log = _build_once_per_run([] if has_dpkg else ["--no-deb"])
    deb = None
    if has_dpkg:
        arch = subprocess.run(["dpkg", "--print-architecture"], capture_output=True, text=True).stdout.strip()
        deb = ROOT / "dist" / f"mdm-appliance_{pyproject_version()}_{arch}.deb"
        assert deb.is_file()
    return Built(ROOT / "dist" / "mdm-appliance", deb, log)


def _build_once_per_run(options: list[str]) -> str:
    """Run packaging/build, once per test run even under pytest-xdist: workers share one build, the first
    to take the lock builds and the others wait for it and read its log."""
    run_id = os.environ.get("PYTEST_XDIST_TESTRUNUID")  # None without xdist: one session, one build
    (ROOT / "build").mkdir(exist_ok=True)
    done, log_file = ROOT / "build" / "tests-built-for", ROOT / "build" / "tests-build.log"
    with open(ROOT / "build" / "tests-build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if run_id is not None and done.exists() and done.read_text() == run_id:
            return log_file.read_text()
        done.unlink(missing_ok=True)
        command = [str(ROOT / "packaging" / "build"), *options]
        result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=BUILD_TIMEOUT)
        assert result.returncode == 0, f"packaging/build failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        log_file.write_text(result.stdout + result.stderr)
        done.write_text(run_id or "")
        return result.stdout + result.stderr


@pytest.fixture(autouse=True)
def _usual_umask():
    """Install and run as an administrator would, with the usual umask: serve() sets 0077 for the whole
    process, and under xdist a server test may have run in this worker before."""
    before = os.umask(0o022)
    yield
    os.umask(before)


@pytest.fixture
def deb(built: Built) -> Path:
    if built.deb is None:
        pytest.skip("dpkg-dev is not installed (.ci/run installs it)")
    return built.deb
