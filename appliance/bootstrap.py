"""First start on an empty data_dir, and every start after: the folder, the appliance CA, the server's TLS
certificate (when none is configured), the admin API key and the console's session signing key. Each file is
written atomically and checked on the next start, so a first start killed midway recovers cleanly. The
generated TLS certificate is renewed by the same rule as device identities ([renewal] renew_before), at
start and, by service/own_certificates.py, while the server runs.
"""

from __future__ import annotations

import ipaddress
import secrets
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from appliance import clock
from appliance.config import Config
from appliance.files import ensure_private_dir, write_atomic
from appliance.identity.ca import ApplianceCA, key_pem
from appliance.logs import get_logger
from appliance.protocol.renewal import renewal_starts

log = get_logger("bootstrap")

DB_FILE = "appliance.db"
API_KEY_FILE = "api.key"
CONSOLE_KEY_FILE = "console.key"
SERVER_KEY_FILE = "server.key"
SERVER_CERT_FILE = "server.crt"
LOCAL_NAMES = ["localhost", "127.0.0.1", "::1"]


@dataclass(frozen=True)
class Prepared:
    ca: ApplianceCA
    db_path: Path
    tls_cert: Path | None
    tls_key: Path | None
    server_cert_from_ca: bool  # the TLS certificate is issued by our CA (so profiles must carry the CA)
    api_key: str
    console_key: str  # signs console session cookies; replacing it signs everyone out


def prepare_data_dir(config: Config) -> Prepared:
    data_dir = config.data_dir
    ensure_private_dir(data_dir)
    ca = ApplianceCA.load_or_create(data_dir, config.server.organization)
    tls_cert, tls_key, from_ca = config.server.tls_cert, config.server.tls_key, False
    if config.server.tls and tls_cert is None:
        tls_cert, tls_key = data_dir / SERVER_CERT_FILE, data_dir / SERVER_KEY_FILE
        ensure_server_certificate(ca, config)
        from_ca = True
    return Prepared(
        ca=ca,
        db_path=data_dir / DB_FILE,
        tls_cert=tls_cert,
        tls_key=tls_key,
        server_cert_from_ca=from_ca,
        api_key=_api_key(config, data_dir),
        console_key=_generated_secret(data_dir / CONSOLE_KEY_FILE),
    )


def ensure_server_certificate(ca: ApplianceCA, config: Config) -> bool:
    """The generated TLS certificate in data_dir, issued anew when missing, broken, for other names, or due
    for renewal. True when a new one was written (the key first: a start killed between the two files
    finds them mismatched and issues again)."""
    data_dir = config.data_dir
    cert_path, key_path = data_dir / SERVER_CERT_FILE, data_dir / SERVER_KEY_FILE
    names = list(dict.fromkeys([config.server.public_host, *LOCAL_NAMES]))
    renew_before = timedelta(seconds=config.renewal.renew_before)
    if _server_certificate_usable(ca, cert_path, key_path, names, renew_before):
        return False
    key, certificate = ca.issue_server_certificate(names)
    write_atomic(key_path, key_pem(key), 0o600)
    # The chain: leaf first, then our CA, so clients that trust the CA can build the path.
    chain = certificate.public_bytes(serialization.Encoding.PEM) + ca.certificate_pem
    write_atomic(cert_path, chain, 0o644)
    log.info("server_certificate_issued", path=cert_path, names=",".join(names),
             not_after=certificate.not_valid_after_utc.isoformat())
    return True


def _server_certificate_usable(ca: ApplianceCA, cert_path: Path, key_path: Path, names: list[str],
                               renew_before: timedelta) -> bool:
    try:
        certificate = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except (OSError, ValueError):
        return False
    if certificate.public_key().public_numbers() != key.public_key().public_numbers():
        return False
    if certificate.issuer != ca.certificate.subject:
        return False
    try:
        certificate.verify_directly_issued_by(ca.certificate)
    except (ValueError, TypeError, Exception):
        return False
    if clock.now() >= renewal_starts(certificate.not_valid_before_utc, certificate.not_valid_after_utc,
                                     renew_before):
        return False
    try:
        san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    present = {str(v) for v in san.get_values_for_type(x509.DNSName)}
    present |= {str(v) for v in san.get_values_for_type(x509.IPAddress)}
    wanted = set()
    for name in names:
        try:
            wanted.add(str(ipaddress.ip_address(name)))
        except ValueError:
            wanted.add(name)
    return wanted <= present


def _api_key(config: Config, data_dir: Path) -> str:
    if config.api.key:
        return config.api.key
    return _generated_secret(data_dir / API_KEY_FILE)


def _generated_secret(path: Path) -> str:
    """The secret kept in `path`, made (random, 0600) on first start or when the file is unusable."""
    try:
        key = path.read_text().strip()
    except FileNotFoundError:
        key = ""
    if len(key) < 16:
        key = secrets.token_urlsafe(32)
        write_atomic(path, (key + "\n").encode(), 0o600)
        # The path, never the key itself.
        log.info("secret_created", path=path)
    return key


def read_api_key(config: Config) -> str | None:
    """For the CLI: the configured key, or the one the server generated in data_dir."""
    if config.api.key:
        return config.api.key
    try:
        return (config.data_dir / API_KEY_FILE).read_text().strip() or None
    except OSError:
        return None
