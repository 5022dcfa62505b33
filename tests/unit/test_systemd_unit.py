"""The shipped unit: `systemd-analyze verify` prints nothing, hardening scores 2.0 or lower."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

UNIT = Path(__file__).resolve().parents[2] / "systemd" / "mdm-appliance.service"
SHIPPED_EXEC = "/opt/mdm-appliance/venv/bin/mdm-appliance"

pytestmark = pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")


def unit_copy(tmp_path: Path) -> Path:
    # verify checks that ExecStart exists; on a test machine nothing is installed under /opt, so point
    # it at this interpreter and check every other line as shipped.
    text = UNIT.read_text()
    assert SHIPPED_EXEC in text
    copy = tmp_path / UNIT.name
    copy.write_text(text.replace(SHIPPED_EXEC, sys.executable))
    return copy


def test_unit_verifies_without_any_output(tmp_path):
    result = subprocess.run(["systemd-analyze", "verify", str(unit_copy(tmp_path))],
                            capture_output=True, text=True, timeout=60)
    # verify exits 0 even on unknown keys: any output at all is a failure.
    assert result.stdout + result.stderr == ""
    assert result.returncode == 0


def test_unit_hardening_exposure_is_at_most_2(tmp_path):
    result = subprocess.run(["systemd-analyze", "security", "--offline=yes", str(unit_copy(tmp_path))],
                            capture_output=True, text=True, timeout=60)
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)
    assert match, result.stdout[-500:] + result.stderr
    assert float(match.group(1)) <= 2.0


def test_unit_declares_what_the_appliance_relies_on():
    text = UNIT.read_text()
    for line in ("Type=notify", "NotifyAccess=main", "Restart=on-failure", "User=mdm-appliance",
                 "StateDirectory=mdm-appliance", "ConfigurationDirectory=mdm-appliance"):
        assert line in text.splitlines(), line
    assert re.search(r"^WatchdogSec=\d+", text, re.M)
    # Every connection is a file descriptor: systemd's default soft limit (1,024) is a few hundred clients.
    assert int(re.search(r"^LimitNOFILE=(\d+)$", text, re.M).group(1)) >= 16384
    sysusers = (UNIT.parent / "mdm-appliance.sysusers.conf").read_text()
    assert re.search(r"^u mdm-appliance ", sysusers, re.M)


def test_unit_skips_the_start_until_setup_has_run():
    text = UNIT.read_text()
    condition = re.search(r"^ExecCondition=(\S+) setup --check --config (\S+)$", text, re.M)
    start = re.search(r"^ExecStart=(\S+) serve --config (\S+)$", text, re.M)
    assert condition and start
    assert condition.groups() == start.groups()  # same executable, same config file
