"""A start-up failure is one line naming what failed, through the real CLI (`python -m appliance serve`):
the port and what holds it, or the path and the OS error; a non-zero exit, no traceback below debug."""

from __future__ import annotations

import os
import socket
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from appliance.bootstrap import prepare_data_dir
from appliance.config import load_config
from appliance.store.schema import COMPONENTS
from tests.support.harness import free_port, make_config, write_toml
from tests.support.identity_pki import make_ca

ROOT = Path(__file__).resolve().parents[2]


def run(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "JOURNAL_STREAM")}
    environment.update(PYTHONPATH=str(ROOT), **(env or {}))
    return subprocess.run([sys.executable, "-m", "appliance", *args], env=environment,
                          capture_output=True, text=True, timeout=60)


def serve(tmp_path: Path, level: str = "info", **overrides) -> subprocess.CompletedProcess:
    config = make_config(tmp_path, port=free_port(), logging={"level": level}, **overrides)
    return run("serve", "--config", str(config))


def failure_line(result: subprocess.CompletedProcess, *names: str) -> str:
    """The one startup_failed line, after checking that nothing else went wrong in the output."""
    assert result.returncode != 0, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert all(line.startswith("ts=") for line in lines), lines  # every line one log event
    errors = [line for line in lines if "level=error" in line]
    assert len(errors) == 1 and "event=startup_failed" in errors[0], lines
    for name in names:
        assert name in errors[0], (name, errors[0])
    return errors[0]


@pytest.fixture
def held_port():
    """A port some other process listens on (this test's own: its pid is the one to be named)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    yield sock.getsockname()[1]
    sock.close()


def test_device_port_in_use_names_the_port_and_the_process_holding_it(tmp_path, held_port):
    config = make_config(tmp_path, port=held_port, logging={"level": "info"})
    line = failure_line(run("serve", "--config", str(config)), f"127.0.0.1:{held_port}", "[server] listen",
                        "address already in use", f"pid {os.getpid()}")
    assert "python" in line  # the holder's name, from /proc/PID/comm


def test_api_port_in_use_names_the_api_listener(tmp_path, held_port):
    failure_line(serve(tmp_path, api={"listen": f"127.0.0.1:{held_port}"}),
                 f"127.0.0.1:{held_port}", "[api] listen", "address already in use", f"pid {os.getpid()}")


def test_port_in_use_at_debug_level_adds_the_traceback(tmp_path, held_port):
    config = make_config(tmp_path, port=held_port, logging={"level": "debug"})
    result = run("serve", "--config", str(config))
    assert result.returncode != 0
    failures = [line for line in result.stderr.splitlines() if "event=startup_failed" in line]
    assert len(failures) == 1 and f"127.0.0.1:{held_port}" in failures[0]
    assert "Traceback" in result.stderr


def _os_error_of(make) -> str:
    """What the OS says when we try the same thing ourselves (root may write where others may not)."""
    try:
        make()
    except OSError as exc:
        return exc.strerror
    raise AssertionError("expected the OS to refuse")


def test_data_dir_under_a_file_names_the_path_and_the_os_error(tmp_path):
    (tmp_path / "a-file").write_text("")
    data_dir = tmp_path / "a-file" / "state"
    reason = _os_error_of(lambda: data_dir.mkdir(parents=True))
    failure_line(serve(tmp_path, storage={"data_dir": str(data_dir)}), f"data_dir {data_dir}", reason)


def test_data_dir_where_nothing_may_be_created_names_the_path_and_the_os_error(tmp_path):
    data_dir = Path("/sys/mdm-appliance-test/state")  # refused even to root (sysfs, often read-only)
    reason = _os_error_of(lambda: data_dir.mkdir(parents=True))
    failure_line(serve(tmp_path, storage={"data_dir": str(data_dir)}), f"data_dir {data_dir}",
                 "/sys/mdm-appliance-test", reason)


def test_unreadable_tls_certificate_names_the_file(tmp_path):
    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    cert.write_text("not a certificate\n")
    key.write_text("not a key\n")
    failure_line(serve(tmp_path, server={"tls_cert": str(cert), "tls_key": str(key)}),
                 f"TLS certificate {cert}", "no PEM certificate")


def test_tls_key_that_is_not_a_key_names_the_file(tmp_path):
    ca = make_ca("TLS test CA")
    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    cert.write_bytes(ca.pem)
    key.write_text("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
    failure_line(serve(tmp_path, server={"tls_cert": str(cert), "tls_key": str(key)}),
                 f"TLS key {key}", "no PEM private key")


def test_tls_certificate_and_key_of_different_pairs_are_named(tmp_path):
    first, second = make_ca("First"), make_ca("Second")
    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    cert.write_bytes(first.pem)
    key.write_bytes(second.key_pem)
    failure_line(serve(tmp_path, server={"tls_cert": str(cert), "tls_key": str(key)}),
                 str(cert), str(key), "do not belong together")


def test_a_ca_certificate_whose_key_is_gone_is_one_line_and_no_new_ca(tmp_path):
    config = make_config(tmp_path, port=free_port(), logging={"level": "info"})
    data = load_config(config).data_dir
    prepare_data_dir(load_config(config))
    ca = (data / "ca.crt").read_bytes()
    (data / "ca.key").unlink()
    failure_line(run("serve", "--config", str(config)), "ca.key is missing", "enroll again")
    assert (data / "ca.crt").read_bytes() == ca and not (data / "ca.key").exists()


def test_corrupt_database_names_the_file(tmp_path):
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    (state / "appliance.db").write_bytes(b"this is not an SQLite database\n" * 200)
    failure_line(serve(tmp_path), f"database {state / 'appliance.db'}", "not a database")


def test_database_that_is_a_folder_names_the_file(tmp_path):
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    (state / "appliance.db").mkdir()
    failure_line(serve(tmp_path), f"database {state / 'appliance.db'}", "unable to open database")


def test_database_of_a_newer_version_is_refused_in_one_line(tmp_path):
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    with sqlite3.connect(state / "appliance.db") as conn:  # as a later release would leave it
        conn.execute("CREATE TABLE schema_versions (component TEXT PRIMARY KEY, version INTEGER NOT NULL)")
        conn.executemany("INSERT INTO schema_versions VALUES (?, 999)",
                         [(path.rsplit(".", 1)[1].removesuffix("_schema"),) for path in COMPONENTS])
    failure_line(serve(tmp_path), f"database {state / 'appliance.db'}", "newer than this program knows")


def test_bad_trusted_ca_file_is_a_config_error_naming_the_file(tmp_path):
    bad = tmp_path / "not-a-ca.pem"
    bad.write_text("garbage\n")
    result = serve(tmp_path, identity={"trusted_ca_files": [str(bad)]})
    assert result.returncode != 0 and "Traceback" not in result.stderr
    [line] = result.stderr.strip().splitlines()
    assert "identity.trusted_ca_files" in line and str(bad) in line
    assert not (tmp_path / "state").exists()  # nothing started


@pytest.mark.parametrize("kind", ["missing", "a folder", "not UTF-8"])
def test_config_file_that_cannot_be_read_is_one_line(tmp_path, kind):
    path = tmp_path / "appliance.toml"
    if kind == "a folder":
        path.mkdir()
    elif kind == "not UTF-8":
        path.write_bytes(b"[server]\npublic_url = \"\xff\xfe\"\n")
    result = run("serve", "--config", str(path))
    assert result.returncode != 0 and "Traceback" not in result.stderr
    [line] = result.stderr.strip().splitlines()
    assert line.startswith(f"{path}: ")
    expected = {"missing": "No such file or directory", "a folder": "Is a directory",
                "not UTF-8": "not valid TOML"}[kind]
    assert expected in line


@pytest.mark.parametrize("where", ["$MDM_APPLIANCE_CA", "data_dir"])
def test_cli_with_a_ca_bundle_that_is_not_there_says_so_in_one_line(tmp_path, where):
    config = write_toml(tmp_path / "appliance.toml", {
        "server": {"listen": f"127.0.0.1:{free_port()}", "public_url": "https://127.0.0.1:8443"},
        "storage": {"data_dir": "state"}, "api": {"key": "test-api-key-0123456789abcdef"},
    })
    env = {"MDM_APPLIANCE_CA": "/nonexistent/ca.pem"} if where == "$MDM_APPLIANCE_CA" else {}
    missing = "/nonexistent/ca.pem" if env else str(tmp_path / "state" / "ca.crt")
    result = run("devices", "--config", str(config), env=env)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("error: cannot read the CA bundle") and missing in line
    assert "No such file or directory" in line
