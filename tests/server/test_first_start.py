"""First start on an empty data_dir makes the PKI, database and API key with the right permissions;
later starts reuse them; a first start killed midway recovers."""

from __future__ import annotations

import sqlite3
import stat

import pytest

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from appliance.bootstrap import prepare_data_dir
from appliance.config import load_config
from appliance.store.db import connect_sync
from tests.support.harness import make_config, start_server


def mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def load(path):
    return x509.load_pem_x509_certificate(path.read_bytes())


async def test_first_start_creates_pki_database_and_key_privately(tmp_path, nursery):
    path = make_config(tmp_path, api={"key": None})
    server = await start_server(nursery, path)
    data = server.config.data_dir
    assert mode(data) == 0o700
    for secret in ("ca.key", "server.key", "api.key"):
        assert mode(data / secret) == 0o600, secret
    assert mode(data / "appliance.db") & 0o077 == 0
    ca, leaf = load(data / "ca.crt"), load(data / "server.crt")
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is True
    leaf.verify_directly_issued_by(ca)
    names = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "localhost" in names.get_values_for_type(x509.DNSName)
    assert "127.0.0.1" in {str(ip) for ip in names.get_values_for_type(x509.IPAddress)}
    assert (data / "api.key").read_text().strip() == server.api_key
    with sqlite3.connect(data / "appliance.db") as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        versions = dict(conn.execute("SELECT component, version FROM schema_versions"))
    assert versions["core"] >= 1
    server.stop()


async def test_second_start_reuses_everything(tmp_path, nursery):
    path = make_config(tmp_path, api={"key": None})
    first = await start_server(nursery, path)
    data = first.config.data_dir
    before = {name: (data / name).read_bytes() for name in ("ca.key", "ca.crt", "server.key", "server.crt", "api.key")}
    await first.aclose()
    second = await start_server(nursery, make_config(tmp_path, port=0, api={"key": None}))
    after = {name: (data / name).read_bytes() for name in before}
    assert before == after
    assert second.api_key == first.api_key
    second.stop()


def test_half_finished_first_start_recovers(tmp_path):
    config = load_config(make_config(tmp_path))
    prepared = prepare_data_dir(config)
    data = config.data_dir
    ca_key = (data / "ca.key").read_bytes()
    # Killed after writing the CA key but before its certificate, and with a torn temp file about.
    (data / "ca.crt").unlink()
    (data / ".ca.crt.tmp").write_bytes(b"-----BEGIN CERT")
    (data / "server.key").write_bytes(b"")  # and a server key emptied mid-write
    again = prepare_data_dir(config)
    assert (data / "ca.key").read_bytes() != ca_key  # a key with no certificate issued nothing: replaced
    ca = load(data / "ca.crt")
    load(data / "server.crt").verify_directly_issued_by(ca)
    key = serialization.load_pem_private_key((data / "server.key").read_bytes(), None)
    assert key.public_key().public_numbers() == load(data / "server.crt").public_key().public_numbers()
    assert again.ca.certificate == ca and prepared.api_key == again.api_key


@pytest.mark.parametrize("damage", ["key_missing", "other_key"])
def test_a_ca_certificate_without_its_key_is_refused_not_replaced(tmp_path, damage):
    # The CA issued every device identity: making a new one would orphan the fleet without a word.
    config = load_config(make_config(tmp_path))
    prepare_data_dir(config)
    data = config.data_dir
    if damage == "key_missing":
        (data / "ca.key").unlink()
    else:
        other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        (data / "ca.key").write_bytes(other.private_bytes(serialization.Encoding.PEM,
                                                          serialization.PrivateFormat.PKCS8,
                                                          serialization.NoEncryption()))
    before = {path.name: path.read_bytes() for path in data.iterdir() if path.is_file()}
    with pytest.raises(ValueError, match="ca.crt") as refused:
        prepare_data_dir(config)
    assert "enroll again" in str(refused.value)
    assert {path.name: path.read_bytes() for path in data.iterdir() if path.is_file()} == before


def test_server_certificate_follows_public_url_host(tmp_path):
    prepare_data_dir(load_config(make_config(tmp_path)))
    config = load_config(make_config(tmp_path, server={"public_url": "https://mdm.example.org"}))
    prepare_data_dir(config)
    leaf = load(config.data_dir / "server.crt")
    names = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "mdm.example.org" in names.get_values_for_type(x509.DNSName)


def test_migrations_are_recorded_and_not_rerun(tmp_path):
    conn = connect_sync(tmp_path / "a.db")
    conn.execute("INSERT INTO meta (key, value) VALUES ('x', '1')")
    conn.close()
    conn = connect_sync(tmp_path / "a.db")
    assert conn.execute("SELECT value FROM meta WHERE key = 'x'").fetchone()[0] == "1"
    conn.close()


def test_a_newer_database_is_refused(tmp_path):
    conn = connect_sync(tmp_path / "a.db")
    conn.execute("UPDATE schema_versions SET version = 999 WHERE component = 'core'")
    conn.close()
    try:
        connect_sync(tmp_path / "a.db")
    except RuntimeError as exc:
        assert "newer" in str(exc)
    else:
        raise AssertionError("a database from a newer version must be refused")
