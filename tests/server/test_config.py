"""Config validation: every class of mistake, several at once, with key paths; check-config's output."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from appliance.config import ConfigError, load_config
from tests.support.harness import write_toml
from tests.support.identity_pki import make_ca


def problems_of(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    return caught.value.problems


def test_several_mistakes_are_reported_at_once_with_their_key_paths(tmp_path):
    path = write_toml(tmp_path / "bad.toml", {
        "server": {"listen": "not-an-address", "public_url": "http://mdm.example.org", "colour": "blue"},
        "storage": {"data_dir": 42},
        "apns": {"timeout": "soon", "max_streams": 0},
        "identity": {"trusted_ca_files": ["missing-ca.pem"], "trusted_proxies": ["10.0.0.0/8", "proxy"]},
        "logging": {"level": "loud"},
        "nonsense": {"x": 1},
    })
    found = problems_of(path)
    expected_keys = [
        "server.listen", "server.public_url", "server.colour", "storage.data_dir", "apns.timeout",
        "apns.max_streams", "identity.trusted_ca_files.0", "identity.trusted_proxies", "logging.level",
        "nonsense",
    ]
    for key in expected_keys:
        assert any(p.startswith(key + ":") for p in found), (key, found)
    assert any("unknown key" in p and p.startswith("server.colour") for p in found)
    assert any("https" in p for p in found if p.startswith("server.public_url"))
    assert any(str(tmp_path / "missing-ca.pem") in p for p in found)


def test_missing_required_public_url_and_wrong_types(tmp_path):
    path = write_toml(tmp_path / "bad.toml", {"server": {"tls": "yes please"}, "enrollment": {"certificate_validity_days": "a year"}})
    found = problems_of(path)
    assert any(p.startswith("server.public_url: required key is missing") for p in found)
    assert any(p.startswith("server.tls:") for p in found)
    assert any(p.startswith("enrollment.certificate_validity_days:") for p in found)


def test_tls_cert_without_key_is_refused(tmp_path):
    (tmp_path / "cert.pem").write_text("x")
    path = write_toml(tmp_path / "bad.toml", {"server": {"public_url": "https://a.example", "tls_cert": "cert.pem"}})
    assert any("tls_cert and tls_key go together" in p for p in problems_of(path))


def test_plain_http_allowed_only_without_tls(tmp_path):
    path = write_toml(tmp_path / "ok.toml", {"server": {"public_url": "http://proxy.internal", "tls": False}})
    assert load_config(path).server.tls is False


def test_not_toml_and_unreadable_file(tmp_path):
    bad = tmp_path / "broken.toml"
    bad.write_text("[server\nlisten = ")
    assert problems_of(bad)[0].startswith("not valid TOML")
    assert problems_of(tmp_path / "absent.toml")[0].startswith("cannot read the config file")


def test_relative_paths_resolve_against_the_files_folder_and_units_parse(tmp_path):
    folder = tmp_path / "etc"
    folder.mkdir()
    (folder / "extra-ca.pem").write_bytes(make_ca("Extra CA").pem)  # contents are validated too
    path = write_toml(folder / "appliance.toml", {
        "server": {"public_url": "https://mdm.example.org", "max_body_size": "1MiB", "shutdown_grace": "2m"},
        "storage": {"data_dir": "state"},
        "apns": {"repush_interval": "24h", "expiration": "3d"},
        "identity": {"trusted_ca_files": ["extra-ca.pem"]},
    })
    config = load_config(path)
    assert config.data_dir == folder / "state"
    assert config.identity.trusted_ca_files == [folder / "extra-ca.pem"]
    assert config.server.max_body_size == 1024 * 1024
    assert config.server.shutdown_grace == 120
    assert config.apns.repush_interval == 86400 and config.apns.expiration == 3 * 86400


def test_environment_variable_names_the_default_config(tmp_path, monkeypatch):
    path = write_toml(tmp_path / "env.toml", {"server": {"public_url": "https://env.example.org"}})
    monkeypatch.setenv("MDM_APPLIANCE_CONFIG", str(path))
    assert load_config().server.public_url == "https://env.example.org"


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "appliance", *args], capture_output=True, text=True, timeout=60)


def test_check_config_prints_effective_config_with_secrets_redacted(tmp_path):
    path = write_toml(tmp_path / "ok.toml", {
        "server": {"public_url": "https://mdm.example.org"},
        "api": {"key": "super-secret-api-key-123"},
        "enrollment": {"scep_challenge": "challenge-secret", "secret": "enroll-secret"},
        "webhook": {"url": "https://hooks.example.org/x", "hmac_key": "hmac-secret"},
    })
    result = run_cli("check-config", "--config", str(path))
    assert result.returncode == 0, result.stderr
    for secret in ("super-secret-api-key-123", "challenge-secret", "enroll-secret", "hmac-secret"):
        assert secret not in result.stdout
    assert 'key = "(redacted)"' in result.stdout
    assert 'public_url = "https://mdm.example.org"' in result.stdout
    assert 'url = "https://hooks.example.org/x"' in result.stdout


def test_check_config_lists_every_error_and_exits_1(tmp_path):
    path = write_toml(tmp_path / "bad.toml", {"server": {"listen": "x", "public_url": "ftp://x"}, "oops": {}})
    result = run_cli("check-config", "--config", str(path))
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 3, lines
    assert all(line.startswith(str(path)) for line in lines)


def test_serve_refuses_to_start_on_a_bad_config(tmp_path):
    path = write_toml(tmp_path / "bad.toml", {"server": {"public_url": "https://x.example", "listen": "nope"}})
    result = run_cli("serve", "--config", str(path))
    assert result.returncode == 1
    assert "server.listen" in result.stderr
    assert not (tmp_path / "state").exists()


def test_the_shipped_configs_are_valid():
    root = Path(__file__).resolve().parents[2] / "config"
    for name in ("appliance.toml", "local.toml"):
        result = run_cli("check-config", "--config", str(root / name))
        assert result.returncode == 0, (name, result.stderr)


def test_readme_and_reference_config_name_every_key():
    """The README's key table and the commented config/appliance.toml must not drift from the model."""
    import re
    import tomllib

    from pydantic import BaseModel

    from appliance.config import Config

    root = Path(__file__).resolve().parents[2]
    readme = (root / "README.md").read_text()
    # Keys that are commented out in the reference still count: they show the operator the option.
    reference = (root / "config" / "appliance.toml").read_text()
    uncommented = re.sub(r"^# ?([a-z_]+ = )", r"\1", reference, flags=re.M)
    documented = tomllib.loads(uncommented)
    for section, field in Config.model_fields.items():
        model = field.annotation
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            continue
        row = next((line for line in readme.splitlines() if line.startswith(f"| `[{section}]` |")), "")
        for key in model.model_fields:
            assert f"`{key}`" in row, f"README config table lacks [{section}] {key}"
            assert key in documented.get(section, {}), f"config/appliance.toml lacks [{section}] {key}"
