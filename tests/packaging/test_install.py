"""The .deb installed, set up, served, upgraded, removed and purged for real, with dpkg and its
maintainer scripts, in a throwaway copy of this machine's root: an overlay (upper layer in a tmpfs) in
a private mount namespace, so the machine itself is never touched and nothing has to be downloaded.
PID 1 is not systemd here: the unit is checked as far as dpkg and deb-systemd-helper take it, and the
service's commands are run as the unit runs them (same user, same command lines)."""

from __future__ import annotations

import os
import re
import shutil
import signal
import ssl
import subprocess
import tempfile
from pathlib import Path

import httpx
import pytest

from tests.support.notify import NotifySocket
from tests.support.harness import free_port
from tests.support.project import pyproject_version

pytestmark = pytest.mark.packaging

SHARE = "/srv/mdm-appliance-test"  # where the test's folder appears inside the throwaway root
CONFIG = "/etc/mdm-appliance/appliance.toml"


class ThrowawayRoot:
    """A copy-on-write view of / in a mount namespace held open by one process; commands enter it."""

    def __init__(self, share: Path) -> None:
        self.base = Path(tempfile.mkdtemp(prefix="mdm-root-"))
        root = self.base / "root"
        script = f"""set -e
mount --make-rprivate /
mount -t tmpfs tmpfs {self.base}
mkdir {self.base}/upper {self.base}/work {root}
mount -t overlay overlay -o lowerdir=/,upperdir={self.base}/upper,workdir={self.base}/work {root}
mount -t proc proc {root}/proc
mount --rbind /dev {root}/dev
mkdir -p {root}{SHARE}
mount --bind {share} {root}{SHARE}
echo ready
exec cat >/dev/null
"""
        self.holder = subprocess.Popen(["unshare", "--mount", "sh", "-c", script], stdin=subprocess.PIPE,
                                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = self.holder.stdout.readline()
        if line.strip() != "ready":
            _, stderr = self.holder.communicate(timeout=10)
            raise RuntimeError(f"no throwaway root: {stderr.strip()}")
        self.root = root

    def command(self, *args: str, user: str | None = None) -> list[str]:
        as_user = ["setpriv", f"--reuid={user}", f"--regid={user}", "--init-groups", "--"] if user else []
        return ["nsenter", f"--target={self.holder.pid}", "--mount", "--", "chroot", str(self.root),
                "/usr/bin/env", "-i", "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                *as_user, *args]

    def run(self, *args: str, user: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
        result = subprocess.run(self.command(*args, user=user), capture_output=True, text=True, timeout=300)
        if check:
            assert result.returncode == 0, f"{args}: {result.stdout}\n{result.stderr}"
        return result

    def stat(self, path: str) -> str:
        return self.run("stat", "-c", "%U:%G %a", path).stdout.strip()

    def exists(self, path: str) -> bool:
        return self.run("test", "-e", path, check=False).returncode == 0

    def close(self) -> None:
        self.holder.communicate(timeout=30)  # closing its stdin ends the holder, and the namespace with it
        shutil.rmtree(self.base, ignore_errors=True)


@pytest.fixture
def throwaway_root(tmp_path):
    if os.geteuid() != 0 or not all(shutil.which(t) for t in ("unshare", "nsenter", "setpriv", "dpkg")):
        pytest.skip("needs root with unshare, nsenter, setpriv and dpkg (CI has them)")
    share = tmp_path / "share"
    share.mkdir(mode=0o755)
    try:
        root = ThrowawayRoot(share)
    except RuntimeError as exc:
        pytest.skip(str(exc))  # no mount namespaces or overlayfs here
    try:
        yield root, share
    finally:
        root.close()


def test_install_setup_serve_upgrade_remove_and_purge(deb, throwaway_root):
    root, share = throwaway_root
    assert not root.exists("/usr/bin/mdm-appliance"), "the machine has mdm-appliance installed already"
    shutil.copy(deb, share / deb.name)

    # Install: the user, the config readable by its group only, data_dir, the unit enabled.
    install = root.run("dpkg", "-i", f"{SHARE}/{deb.name}")
    assert "not set up yet: run 'sudo mdm-appliance setup'" in install.stdout
    assert root.run("dpkg-query", "-W", "-f=${Version} ${db:Status-Status}", "mdm-appliance").stdout == \
        f"{pyproject_version()} installed"
    passwd = root.run("getent", "passwd", "mdm-appliance").stdout.strip().split(":")
    assert passwd[5] == "/var/lib/mdm-appliance" and passwd[6].endswith("nologin")
    assert root.stat(CONFIG) == "root:mdm-appliance 640"
    assert root.stat("/etc/mdm-appliance") == "root:mdm-appliance 750"
    assert root.stat("/var/lib/mdm-appliance") == "mdm-appliance:mdm-appliance 700"
    wants = "/etc/systemd/system/multi-user.target.wants/mdm-appliance.service"
    assert root.run("readlink", wants).stdout.strip() == "/lib/systemd/system/mdm-appliance.service"
    unit = root.run("cat", "/lib/systemd/system/mdm-appliance.service").stdout
    if root.exists("/usr/bin/systemd-analyze"):  # where it is installed: it checks every command line exists
        verify = root.run("systemd-analyze", "verify", "mdm-appliance.service", check=False)
        assert (verify.returncode, verify.stdout + verify.stderr) == (0, "")
    condition = re.search(r"^ExecCondition=(.+)$", unit, re.M).group(1).split()
    start = re.search(r"^ExecStart=(.+)$", unit, re.M).group(1).split()

    # Not set up: the unit's ExecCondition skips the start and says what to do (systemctl status shows it).
    skipped = root.run(*condition, user="mdm-appliance", check=False)
    assert skipped.returncode == 1
    assert "example public_url" in skipped.stderr and "sudo mdm-appliance setup" in skipped.stderr

    port = free_port()
    setup = root.run("mdm-appliance", "setup", "--non-interactive", "--public-url", f"https://127.0.0.1:{port}",
                     "--listen", f"127.0.0.1:{port}")
    assert "OK" in setup.stdout and "sudo systemctl restart mdm-appliance" in setup.stdout
    assert root.stat(CONFIG) == "root:mdm-appliance 640"  # setup keeps owner, group and mode
    assert root.run(*condition, user="mdm-appliance", check=False).returncode == 0

    # Start it as the unit does: the service user, the unit's command line, our own notify socket.
    notify = NotifySocket(share / "notify.sock")
    os.chmod(share / "notify.sock", 0o777)
    server = subprocess.Popen(root.command("env", f"NOTIFY_SOCKET={SHARE}/notify.sock", *start, user="mdm-appliance"),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        notify.wait_for("READY=1", timeout=60)
        ca = share / "ca.crt"
        ca.write_text(root.run("cat", "/var/lib/mdm-appliance/ca.crt").stdout)
        response = httpx.get(f"https://127.0.0.1:{port}/healthz", timeout=10,
                             verify=ssl.create_default_context(cafile=str(ca)))
        assert response.status_code == 200 and response.json()["version"] == pyproject_version()
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=60) == 0
    finally:
        if server.poll() is None:
            server.kill()
        _, stderr = server.communicate(timeout=30)
        notify.close()
    assert "event=stopped" in stderr
    configured = root.run("cat", CONFIG).stdout
    assert root.exists("/var/lib/mdm-appliance/appliance.db")

    # Upgrade (the same package again runs the upgrade paths): config, data and enablement stay.
    root.run("dpkg", "-i", f"{SHARE}/{deb.name}")
    assert root.run("cat", CONFIG).stdout == configured
    assert root.stat(CONFIG) == "root:mdm-appliance 640"
    assert root.exists("/var/lib/mdm-appliance/appliance.db") and root.exists(wants)

    # Remove: the program goes, the config and data_dir stay.
    root.run("dpkg", "--remove", "mdm-appliance")
    assert not root.exists("/usr/bin/mdm-appliance") and not root.exists("/usr/lib/mdm-appliance")
    assert root.run("cat", CONFIG).stdout == configured
    assert root.exists("/var/lib/mdm-appliance/appliance.db") and root.exists("/var/lib/mdm-appliance/ca.key")

    # Purge: says what it removes, and removes it; the user stays.
    purge = root.run("dpkg", "--purge", "mdm-appliance")
    assert "removes /var/lib/mdm-appliance" in purge.stdout and "removed /etc/mdm-appliance" in purge.stdout
    assert not root.exists("/var/lib/mdm-appliance") and not root.exists("/etc/mdm-appliance")
    assert not root.exists(wants)
    assert "mdm-appliance" not in root.run("dpkg-statoverride", "--list").stdout
    assert root.run("getent", "passwd", "mdm-appliance").returncode == 0
