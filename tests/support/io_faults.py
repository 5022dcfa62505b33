"""Real I/O errors for a server process: tests/support/faultfs.c compiled at test time and preloaded.

    shim = build_shim(tmp_path)                  # skips the test when no C compiler is at hand
    env = shim.env(db_path, trigger)             # for the server process: LD_PRELOAD and the two paths
    trigger.touch()                              # from now on writes and fsyncs on the database fail (EIO)
    trigger.unlink()                             # and from now on they work again
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

SOURCE = Path(__file__).with_name("faultfs.c")


@dataclass(frozen=True)
class Shim:
    library: Path

    def env(self, db_path: Path, trigger: Path) -> dict[str, str]:
        return {"LD_PRELOAD": str(self.library), "FAULTFS_PATH": str(db_path), "FAULTFS_TRIGGER": str(trigger)}


def build_shim(directory: Path) -> Shim:
    compiler = shutil.which("gcc") or shutil.which("cc")
    if compiler is None:
        pytest.skip("no C compiler to build the I/O fault shim (apt-get install gcc)")
    library = directory / "faultfs.so"
    done = subprocess.run([compiler, "-shared", "-fPIC", "-O1", "-o", str(library), str(SOURCE), "-ldl"],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot build the I/O fault shim: {done.stderr.strip()[:300]}")
    return Shim(library)
