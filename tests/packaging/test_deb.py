"""The .deb as dpkg-deb shows it: what it installs where, with which modes, conffiles and scripts."""

from __future__ import annotations

import gzip
import io
import re
import shutil
import subprocess
import tarfile

import pytest

from tests.support.project import ROOT, pyproject_version

pytestmark = pytest.mark.packaging

UNIT = "./lib/systemd/system/mdm-appliance.service"


def dpkg_deb(*args) -> str:
    return subprocess.run(["dpkg-deb", *map(str, args)], capture_output=True, text=True, check=True, timeout=120).stdout


def contents(deb) -> dict[str, tuple[str, str, str]]:
    """path -> (mode string, owner/group, link target) from `dpkg-deb --contents`."""
    entries = {}
    for line in dpkg_deb("--contents", deb).splitlines():
        mode, owner, _size, _date, _time, path, *link = line.split(None, 6)
        target = link[0].removeprefix("-> ").strip() if link else ""
        entries[path.rstrip("/") if path != "./" else path] = (mode, owner, target)
    return entries


def member(deb, path: str) -> bytes:
    data = subprocess.run(["dpkg-deb", "--fsys-tarfile", str(deb)], capture_output=True, check=True, timeout=120).stdout
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return tar.extractfile(path).read()


def test_deb_control_names_version_architecture_dependencies_and_conffile(deb):
    info = dpkg_deb("--info", deb)
    field = dict(re.findall(r"^ ([A-Z][\w-]+): (.*)$", info, re.M))
    arch = subprocess.run(["dpkg", "--print-architecture"], capture_output=True, text=True).stdout.strip()
    assert field["Package"] == "mdm-appliance"
    assert field["Version"] == pyproject_version()
    assert field["Architecture"] == arch
    assert deb.name == f"mdm-appliance_{pyproject_version()}_{arch}.deb"
    assert re.search(r"\blibc6 \(>= [\d.]+\)", field["Depends"])
    assert "systemd | systemd-standalone-sysusers | systemd-sysusers" in field["Depends"]
    assert int(field["Installed-Size"]) > 10_000  # KiB: the runtime is inside
    assert dpkg_deb("--info", deb, "conffiles").split() == ["/etc/mdm-appliance/appliance.toml"]
    for script in ("postinst", "prerm", "postrm"):
        assert dpkg_deb("--info", deb, script).startswith("#!/bin/sh\n")
    control = subprocess.run(["dpkg-deb", "--ctrl-tarfile", str(deb)], capture_output=True, check=True).stdout
    with tarfile.open(fileobj=io.BytesIO(control)) as tar:
        modes = {m.name: m.mode for m in tar.getmembers() if m.isfile()}
    assert {modes[f"./{s}"] for s in ("postinst", "prerm", "postrm")} == {0o755}


def test_deb_installs_executable_unit_sysusers_config_and_docs_with_their_modes(deb):
    entries = contents(deb)
    assert {owner for _, owner, _ in entries.values()} == {"root/root"}
    expected = {
        "./usr/bin/mdm-appliance": ("lrwxrwxrwx", "../lib/mdm-appliance/mdm-appliance"),
        "./usr/lib/mdm-appliance/mdm-appliance": ("-rwxr-xr-x", ""),
        UNIT: ("-rw-r--r--", ""),
        "./usr/lib/sysusers.d/mdm-appliance.conf": ("-rw-r--r--", ""),
        # The config carries secrets: not world-readable (postinst gives it the service's group).
        "./etc/mdm-appliance/appliance.toml": ("-rw-r-----", ""),
        "./usr/share/doc/mdm-appliance/README.md": ("-rw-r--r--", ""),
        "./usr/share/doc/mdm-appliance/copyright": ("-rw-r--r--", ""),
        "./usr/share/doc/mdm-appliance/changelog.gz": ("-rw-r--r--", ""),
        "./usr/share/man/man1/mdm-appliance.1.gz": ("-rw-r--r--", ""),
    }
    for path, (mode, target) in expected.items():
        assert path in entries, path
        assert (entries[path][0], entries[path][2]) == (mode, target), path
    assert any(p.startswith("./usr/lib/mdm-appliance/_internal/libpython3") for p in entries)
    assert not [p for p in entries if "/__pycache__/" in p or p.endswith(".pyc")]
    # Nothing under /var: data_dir is made by postinst and kept across upgrades and removal.
    assert not [p for p in entries if p.startswith("./var/")]


def test_packaged_unit_is_the_repository_unit_pointing_at_the_packaged_executable(deb):
    packaged = member(deb, UNIT).decode()
    repository = (ROOT / "systemd" / "mdm-appliance.service").read_text()
    assert "/opt/mdm-appliance" not in packaged
    assert "ExecStart=/usr/bin/mdm-appliance serve --config /etc/mdm-appliance/appliance.toml" in packaged
    assert "ExecCondition=/usr/bin/mdm-appliance setup --check --config /etc/mdm-appliance/appliance.toml" in packaged
    assert packaged == (repository.replace("/opt/mdm-appliance/venv/bin/mdm-appliance", "/usr/bin/mdm-appliance")
                        .replace("file:///opt/mdm-appliance/README.md", "file:///usr/share/doc/mdm-appliance/README.md"))
    sysusers = member(deb, "./usr/lib/sysusers.d/mdm-appliance.conf").decode()
    assert sysusers == (ROOT / "systemd" / "mdm-appliance.sysusers.conf").read_text()


def test_packaged_config_is_the_commented_reference(deb):
    assert member(deb, "./etc/mdm-appliance/appliance.toml") == (ROOT / "config" / "appliance.toml").read_bytes()


def test_debian_changelog_and_release_notes_come_from_changelog_md(deb):
    changelog = gzip.decompress(member(deb, "./usr/share/doc/mdm-appliance/changelog.gz")).decode()
    assert changelog.startswith(f"mdm-appliance ({pyproject_version()}) unstable; urgency=medium\n")
    assert re.search(r"^ -- .+ <.+>  \w{3}, \d{2} \w{3} \d{4} \d{2}:\d{2}:\d{2} \+0000$", changelog, re.M)
    assert max(len(line) for line in changelog.splitlines() if not line.startswith(" -- ")) <= 80
    notes = (ROOT / "dist" / "RELEASE_NOTES.md").read_text()
    assert notes.startswith(f"# mdm-appliance {pyproject_version()}\n")
    assert "SCEP" in notes  # the 0.1.0 section's text


def test_build_checked_the_deb_with_lintian_where_installed(built, deb):
    if shutil.which("lintian") is None:
        pytest.skip("lintian is not installed (.ci/run installs it)")
    if built.log is None:
        pytest.skip("MDM_PACKAGING_PREBUILT: this session did not build")
    # packaging/build runs lintian --fail-on error,warning and stops on any finding.
    assert "+ lintian --fail-on error,warning" in built.log
