"""dist/mdm-appliance: one file that runs with no Python and no virtualenv, with everything inside."""

from __future__ import annotations

import os
import signal
import ssl
import subprocess
import sys

import httpx
import pytest

from tests.support.harness import free_port
from tests.support.notify import NotifySocket
from tests.support.project import BUILD_VENV, ROOT, pyproject_version

pytestmark = pytest.mark.packaging


def bare(*args, **env) -> list[str]:
    """A command run as if on a box without Python: empty environment, no PATH, no virtualenv."""
    return ["env", "-i", *(f"{k}={v}" for k, v in env.items()), *map(str, args)]


def test_executable_answers_version_and_help_with_an_empty_environment(built):
    version = subprocess.run(bare(built.executable, "--version"), capture_output=True, text=True, timeout=60)
    assert version.returncode == 0, version.stderr
    assert version.stdout.strip() == f"mdm-appliance, version {pyproject_version()}"
    source = subprocess.run([sys.executable, "-m", "appliance", "--help"], capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=60)
    packaged = subprocess.run(bare(built.executable, "--help"), capture_output=True, text=True, timeout=60)
    # The same commands as the console script.
    assert packaged.stdout == source.stdout.replace("python -m appliance", "mdm-appliance")


def test_executable_serves_the_local_config_until_sigterm(built, tmp_path):
    port = free_port()
    text = (ROOT / "config" / "local.toml").read_text().replace(":8443", f":{port}")
    assert f"127.0.0.1:{port}" in text
    (tmp_path / "local.toml").write_text(text)
    notify = NotifySocket(tmp_path / "notify.sock")
    process = subprocess.Popen(bare(built.executable, "serve", "--config", "local.toml",
                                    NOTIFY_SOCKET=tmp_path / "notify.sock"),
                               cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        notify.wait_for("READY=1", timeout=60)
        context = ssl.create_default_context(cafile=str(tmp_path / "state" / "ca.crt"))
        response = httpx.get(f"https://127.0.0.1:{port}/healthz", verify=context, timeout=10)
        assert response.status_code == 200
        assert response.json()["version"] == pyproject_version()
        # Blueprints the app imports by module path answer too (admin API, OpenAPI document, SCEP).
        key = (tmp_path / "state" / "api.key").read_text().strip()
        api = httpx.get(f"https://127.0.0.1:{port}/v1/devices", verify=context, timeout=10,
                        headers={"Authorization": f"Bearer {key}"})
        assert api.status_code == 200
        scep = httpx.get(f"https://127.0.0.1:{port}/scep?operation=GetCACaps", verify=context, timeout=10)
        assert scep.status_code == 200 and b"POSTPKIOperation" in scep.content
        process.send_signal(signal.SIGTERM)
        notify.wait_for("STOPPING=1", timeout=30)
        assert process.wait(timeout=60) == 0
    finally:
        if process.poll() is None:
            process.kill()
        _, stderr = process.communicate(timeout=30)
        notify.close()
    assert "event=stopped" in stderr and "Traceback" not in stderr


def test_executable_holds_every_appliance_module_and_data_file(built):
    """What is loaded by module path (BLUEPRINTS, COMPONENTS) and every data file (reference config,
    console templates and static files) is in the archive, whatever is added to appliance/ later."""
    viewer = BUILD_VENV / "bin" / "pyi-archive_viewer"
    listing = subprocess.run([str(viewer), "--recursive", "--brief", str(built.executable)],
                             capture_output=True, text=True, timeout=120)
    assert listing.returncode == 0, listing.stderr
    entries = {line.strip() for line in listing.stdout.splitlines()}
    source = ROOT / "appliance"
    modules = {".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
               for p in source.rglob("*.py")}
    data = {str(p.relative_to(ROOT)) for p in source.rglob("*")
            if p.is_file() and p.suffix not in (".py", ".pyc") and "__pycache__" not in p.parts}
    assert {"appliance.web.health", "appliance.store.core_schema"} <= modules
    assert "appliance/reference.toml" in data
    assert modules - entries == set()
    assert data - entries == set()


def test_packaged_setup_reads_the_reference_config_from_inside(built, tmp_path):
    result = subprocess.run(bare(built.executable, "setup", "--non-interactive", "--config", tmp_path / "a.toml",
                                 "--public-url", "https://mdm.corp.test", "--data-dir", tmp_path / "state"),
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "a.toml").read_text().startswith((ROOT / "config" / "appliance.toml").read_text()[:200])
