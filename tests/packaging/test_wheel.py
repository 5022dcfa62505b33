"""The virtualenv route installs a wheel: it must carry every data file under appliance/ as well."""

from __future__ import annotations

import subprocess
import sys
import zipfile

import pytest

from tests.support.project import ROOT

pytestmark = pytest.mark.packaging


def test_wheel_carries_every_data_file_of_the_package(tmp_path):
    result = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                             "-w", str(tmp_path), str(ROOT)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    [wheel] = tmp_path.glob("mdm_appliance-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        reference = archive.read("appliance/reference.toml")
    source = ROOT / "appliance"
    data = {str(p.relative_to(ROOT)) for p in source.rglob("*")
            if p.is_file() and p.suffix not in (".py", ".pyc") and "__pycache__" not in p.parts}
    assert "appliance/reference.toml" in data
    # A file missing here needs a pattern in pyproject.toml [tool.setuptools.package-data].
    assert data - names == set()
    assert reference == (ROOT / "config" / "appliance.toml").read_bytes()
