"""`mdm-appliance setup`: the first-run helper, driven as an operator would (stdin or flags)."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

from tests.support.project import ROOT

REFERENCE = ROOT / "config" / "appliance.toml"


def setup(*args: str, stdin: str = "") -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "appliance", "setup", *args], input=stdin,
                          capture_output=True, text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(ROOT)})


def check_config(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "appliance", "check-config", "--config", str(path)],
                          capture_output=True, text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(ROOT)})


def comments(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.lstrip().startswith("#")]


def test_interactive_setup_asks_again_for_bad_answers_and_keeps_every_comment(tmp_path):
    path = tmp_path / "etc" / "appliance.toml"
    answers = "\n".join([
        "mdm.corp.test",                 # no scheme: asked again
        "https://mdm.example.org",       # the reference's example: asked again
        "https://mdm.corp.test:8443",
        "",                              # listen: the default from the URL's port
        "too-short",                     # asked again
        "an-enrollment-secret-of-30-chars",
    ]) + "\n"
    result = setup("--config", str(path), "--data-dir", str(tmp_path / "state"), stdin=answers)
    assert result.returncode == 0, result.stderr
    assert "https URL" in result.stderr and "example name" in result.stderr and "at least 16" in result.stderr

    text = path.read_text()
    written = tomllib.loads(text)
    assert written["server"]["public_url"] == "https://mdm.corp.test:8443"
    assert written["server"]["listen"] == "0.0.0.0:8443"
    assert written["enrollment"]["secret"] == "an-enrollment-secret-of-30-chars"
    assert written["enrollment"]["one_time_challenge"] is True  # devices need a challenge to enroll
    assert written["storage"]["data_dir"] == str(tmp_path / "state")
    # Every comment of the reference is still there, in order, but the commented-out example secret
    # that the real one replaced.
    example_secret = '# secret = "another-long-random-string"'
    assert comments(text) == [line for line in comments(REFERENCE.read_text()) if line != example_secret]
    assert written["apns"] == tomllib.loads(REFERENCE.read_text())["apns"]
    assert path.stat().st_mode & 0o777 == 0o640
    assert check_config(path).returncode == 0
    assert "OK" in result.stdout
    assert "push-cert import" in result.stdout
    assert "https://mdm.corp.test:8443/mdm/enroll?token=an-enrollment-secret-of-30-chars" in result.stdout


def test_non_interactive_setup_takes_flags_and_generates_a_secret(tmp_path):
    path = tmp_path / "appliance.toml"
    result = setup("--non-interactive", "--config", str(path), "--public-url", "https://mdm.corp.test/",
                   "--data-dir", str(tmp_path / "state"))
    assert result.returncode == 0, result.stderr
    written = tomllib.loads(path.read_text())
    assert written["server"]["public_url"] == "https://mdm.corp.test"
    assert written["server"]["listen"] == "0.0.0.0:443"
    secret = written["enrollment"]["secret"]
    assert len(secret) >= 24 and f"token={secret}" in result.stdout
    assert check_config(path).returncode == 0


def test_non_interactive_setup_refuses_bad_flags_in_one_line_and_writes_nothing(tmp_path):
    path = tmp_path / "appliance.toml"
    for args, message in [
        ([], "--public-url is required"),
        (["--public-url", "http://mdm.corp.test"], "https URL"),
        (["--public-url", "https://mdm.corp.test", "--listen", "nowhere"], "--listen"),
        (["--public-url", "https://mdm.corp.test", "--enrollment-secret", "short"], "at least 16"),
    ]:
        result = setup("--non-interactive", "--config", str(path), *args)
        assert result.returncode == 1, args
        assert result.stderr.startswith("error: ") and message in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
        assert not path.exists()


def test_setup_fills_in_the_unconfigured_default_but_refuses_a_configured_file_without_force(tmp_path):
    path = tmp_path / "appliance.toml"
    path.write_text(REFERENCE.read_text())  # what the Debian package installs
    os.chmod(path, 0o644)
    first = setup("--non-interactive", "--config", str(path), "--public-url", "https://mdm.corp.test",
                  "--enrollment-secret", "first-secret-1234567")
    assert first.returncode == 0, first.stderr
    assert path.stat().st_mode & 0o777 == 0o644  # an existing file keeps its mode (and owner)

    # The operator edits something else by hand.
    edited = path.read_text().replace('organization = "Example Org"', 'organization = "Corp"')
    path.write_text(edited)
    again = setup("--non-interactive", "--config", str(path), "--public-url", "https://other.corp.test")
    assert again.returncode == 1 and "--force" in again.stderr
    assert path.read_text() == edited

    forced = setup("--non-interactive", "--force", "--config", str(path), "--public-url", "https://other.corp.test")
    assert forced.returncode == 0, forced.stderr
    written = tomllib.loads(path.read_text())
    assert written["server"]["public_url"] == "https://other.corp.test"
    assert written["server"]["organization"] == "Corp"
    assert written["enrollment"]["secret"] == "first-secret-1234567"  # kept when not given


def test_setup_writes_nothing_when_the_result_would_not_pass_check_config(tmp_path):
    path = tmp_path / "appliance.toml"
    text = REFERENCE.read_text().replace('# tls_cert = "/etc/mdm-appliance/tls/fullchain.pem"',
                                         'tls_cert = "missing.pem"')
    path.write_text(text)
    result = setup("--non-interactive", "--config", str(path), "--public-url", "https://mdm.corp.test")
    assert result.returncode == 1
    assert "nothing written" in result.stderr and "server.tls_cert" in result.stderr
    assert path.read_text() == text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["appliance.toml"]  # no temporary file left


def test_setup_check_says_what_to_do_until_a_real_public_url_is_set(tmp_path):
    path = tmp_path / "appliance.toml"
    missing = setup("--check", "--config", str(path))
    assert missing.returncode == 1 and "does not exist" in missing.stderr
    path.write_text(REFERENCE.read_text())
    example = setup("--check", "--config", str(path))
    assert example.returncode == 1
    assert "example public_url" in example.stderr and "mdm-appliance setup" in example.stderr
    path.write_text(REFERENCE.read_text().replace("https://mdm.example.org", "https://mdm.corp.test"))
    ready = setup("--check", "--config", str(path))
    assert ready.returncode == 0 and ready.stderr == ""


def test_set_values_adds_missing_keys_and_sections_without_touching_other_lines():
    from appliance.firstrun import set_values

    text = '[server]\n# where\nlisten = "x:1"  \n\n[api]\n# listen = "127.0.0.1:8080"\n'
    result = set_values(text, {("server", "listen"): '"0.0.0.0:443"', ("server", "public_url"): '"https://a.test"',
                               ("enrollment", "secret"): '"s"'})
    assert result == ('[server]\n# where\nlisten = "0.0.0.0:443"\npublic_url = "https://a.test"\n\n'
                      '[api]\n# listen = "127.0.0.1:8080"\n\n[enrollment]\nsecret = "s"\n')
    assert tomllib.loads(result)["api"] == {}
