"""Full disks for tests, two real ways.

Tmpfs: a small tmpfs the test mounts and fills with a file until the kernel says ENOSPC; every commit then
fails as on a full disk (SQLite appends to its WAL file). Needs root with mount permission: skipped otherwise.
PageLimit: SQLite's own `PRAGMA max_page_count` on the server's connection: a write that needs a page beyond
the database's present size fails with SQLITE_FULL (small updates that fit in existing pages still work).
"""

from __future__ import annotations

import errno
import os
import subprocess
from pathlib import Path

import pytest


class Tmpfs:
    name = "tmpfs"

    def __init__(self, path: Path) -> None:
        self.path = path
        self.filler = path / "filler"

    @classmethod
    def mount(cls, path: Path, size_kib: int = 8192) -> Tmpfs:
        if os.geteuid() != 0:
            pytest.skip("mounting a tmpfs needs root")
        path.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kib}k,mode=0700", "tmpfs", str(path)],
                              capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
        return cls(path)

    async def fill(self) -> None:
        fd = os.open(self.filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            for chunk in (1 << 20, 1 << 12, 1):  # down to the last byte the file system will take
                block = b"\0" * chunk
                while True:
                    try:
                        os.write(fd, block)
                    except OSError as exc:
                        if exc.errno != errno.ENOSPC:
                            raise
                        break
        finally:
            os.close(fd)

    async def free(self) -> None:
        self.filler.unlink()

    def unmount(self) -> None:
        if subprocess.run(["umount", str(self.path)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(self.path)], check=True)


class PageLimit:
    name = "page_limit"

    def __init__(self, store) -> None:
        self.store = store

    async def fill(self) -> None:
        # Clamped by SQLite to the file's present size: not one page more.
        await self.store.read(lambda conn: conn.execute("PRAGMA max_page_count = 1").fetchone())

    async def free(self) -> None:
        await self.store.read(lambda conn: conn.execute("PRAGMA max_page_count = 1000000000").fetchone())
