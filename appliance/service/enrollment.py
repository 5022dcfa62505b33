"""Enrollment: one-time challenges and the enrollment profile, for the web endpoint and the CLI alike.

A profile is made in two steps so that the slow part never runs on the database thread:
`prepare_profile(conn, ...)` (inside one write transaction: read the push topic, mint the
challenge, remember which Topic/ServerURL/CheckInURL this profile hands out) and then
`render_profile(...)` (key generation for PKCS#12, plist, optional CMS signature).
"""

from __future__ import annotations

import hashlib
import json
import secrets
import sqlite3
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import pkcs7, pkcs12
from cryptography.x509.oid import NameOID

from appliance.config import Config
from appliance.identity.ca import ApplianceCA
from appliance.logs import get_logger
from appliance.protocol.profile import (
    EnrolledUrls,
    Pkcs12Identity,
    ProfileError,
    ProfileSettings,
    ScepIdentity,
    build_enrollment_profile,
    check_public_url,
    encode_profile,
    enrolled_urls,
)
from appliance.service import certauth
from appliance.store import scep as scep_store
from appliance.store.timefmt import now as utc_now, to_text

log = get_logger("enrollment")

PROFILE_CONTENT_TYPE = "application/x-apple-aspen-config"
META_PROFILE_URLS = "enrollment.profile_urls"
_MAX_URL_SETS = 20


def new_challenge() -> str:
    return secrets.token_urlsafe(24)


def _expiry(config: Config, now: datetime, ttl: float | None = None) -> datetime:
    return now + timedelta(seconds=config.enrollment.challenge_ttl if ttl is None else ttl)


async def mint_challenge(runtime) -> tuple[str, datetime]:
    challenge, now = new_challenge(), utc_now()
    expires = _expiry(runtime.config, now)
    await runtime.store.write(scep_store.add_challenge, challenge, now, expires)
    log.info("challenge_minted", expires_at=to_text(expires))
    return challenge, expires


def mint_challenge_sync(conn: sqlite3.Connection, config: Config, *, renewal_of: str | None = None,
                        ttl: float | None = None) -> tuple[str, datetime]:
    """renewal_of: a device id. The challenge then renews that device's bound identity: sent to the device
    over its authenticated channel, the certificate issued against it is the binding's proven successor and
    keeps the device's queue and bootstrap token (service/certauth.py). ValueError if nothing is bound.
    ttl: seconds it stays valid ([enrollment] challenge_ttl unless given)."""
    renews = certauth.renewal_of(conn, renewal_of) if renewal_of is not None else None
    challenge, now = new_challenge(), utc_now()
    expires = _expiry(config, now, ttl)
    scep_store.add_challenge(conn, challenge, now, expires, renews)
    if renews is not None:
        log.info("renewal_challenge_minted", device_id=renewal_of, expires_at=to_text(expires))
    return challenge, expires


# --- the push topic (owned by the push certificate store) ---------------------------------


def push_topic(conn: sqlite3.Connection) -> str | None:
    """The imported push certificate's topic, or None when none is imported yet.

    The push certificate store (store/push_schema.py) keeps every import; the newest is in use.
    """
    try:
        from appliance.store import push as push_store

        return push_store.current_topic(conn)
    except (ImportError, sqlite3.OperationalError):  # the push component is not installed
        return None


# --- which Topic/ServerURL/CheckInURL profiles handed out ---------------------------------


def recorded_url_sets(conn: sqlite3.Connection) -> list[dict]:
    row = conn.execute("SELECT value FROM meta WHERE key = ?", (META_PROFILE_URLS,)).fetchone()
    try:
        return json.loads(row[0]) if row else []
    except ValueError:
        return []


def _store_url_sets(conn: sqlite3.Connection, sets: list[dict]) -> None:
    conn.execute(
        "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        (META_PROFILE_URLS, json.dumps(sets[-_MAX_URL_SETS:])),
    )


def record_profile_urls(conn: sqlite3.Connection, urls: EnrolledUrls, now: datetime) -> None:
    sets = recorded_url_sets(conn)
    current = {"topic": urls.topic, "server_url": urls.server_url, "checkin_url": urls.checkin_url}
    for entry in sets:
        if {k: entry.get(k) for k in current} == current:
            entry["last_built_at"] = to_text(now)
            break
    else:
        sets.append({**current, "first_built_at": to_text(now), "last_built_at": to_text(now)})
    _store_url_sets(conn, sets)


def _changed_keys(conn: sqlite3.Connection, config: Config, entry: dict) -> list[tuple[str, str]]:
    """(key, value now) for each of Topic/ServerURL/CheckInURL that differs from a recorded set."""
    topic = push_topic(conn)
    wanted = enrolled_urls(config.server.public_url, topic or "")
    return [(key, now_value) for key, now_value in (("topic", wanted.topic), ("server_url", wanted.server_url),
                                                     ("checkin_url", wanted.checkin_url))
            if (key != "topic" or topic) and entry.get(key) != now_value]


def url_mismatches(conn: sqlite3.Connection, config: Config) -> list[str]:
    """Warnings, one per key that differs from what an earlier profile gave devices."""
    problems = [
        f"profiles built since {entry.get('first_built_at')} gave devices {key} "
        f"{entry.get(key)!r} but the appliance now uses {now_value!r}: devices enrolled with "
        f"those profiles keep the old value and will not reach this server until re-enrolled"
        for entry in recorded_url_sets(conn) for key, now_value in _changed_keys(conn, config, entry)
    ]
    return list(dict.fromkeys(problems))


def forget_changed_urls(conn: sqlite3.Connection, config: Config) -> list[dict]:
    """Drop the recorded sets that differ from the config (the operator has re-enrolled, or retired,
    the devices that had them), so the start warning and the health warning stop; return them."""
    sets = recorded_url_sets(conn)
    forgotten = [entry for entry in sets if _changed_keys(conn, config, entry)]
    _store_url_sets(conn, [entry for entry in sets if entry not in forgotten])
    return forgotten


async def warn_on_changed_urls(runtime) -> list[str]:
    """Called once at start by the supervisor: Topic, ServerURL and CheckInURL never change for a
    device. Logs each change, and keeps reporting them in /healthz (check "enrollment")."""
    problems = await runtime.store.read(url_mismatches, runtime.config)
    for problem in problems:
        log.warning("enrollment_urls_changed", problem=problem)
    runtime.health_checks.append(lambda: _enrollment_health(runtime))
    return problems


async def _enrollment_health(runtime) -> tuple[str, dict, str]:
    problems = await runtime.store.read(url_mismatches, runtime.config)
    issued = await runtime.store.read(scep_store.count_issued)
    details = {"certificates_issued": issued, "profile_url_changes": problems}
    return "enrollment", details, "warning" if problems else "ok"


# --- the profile ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ProfileInputs:
    topic: str
    challenge: str | None


def prepare_profile(conn: sqlite3.Connection, config: Config, *, one_time_challenge: bool = False) -> ProfileInputs:
    """Inside one write transaction: what the profile needs from the database. one_time_challenge: mint one
    whatever [enrollment] says (the ADE endpoint ties it to the device's serial number)."""
    check_public_url(config.server.public_url)  # before anything is minted or recorded
    topic = push_topic(conn)
    if not topic:
        raise ProfileError(
            "no push certificate imported, so the profile has no Topic: import one with "
            "`mdm-appliance push-cert import` and try again"
        )
    settings = config.enrollment
    challenge = None
    if settings.identity == "scep":
        if settings.one_time_challenge or one_time_challenge:
            challenge, _ = mint_challenge_sync(conn, config)
        elif settings.scep_challenge:
            challenge = settings.scep_challenge
        else:
            raise ProfileError(
                "the SCEP payload needs a challenge: set [enrollment] scep_challenge, or "
                "one_time_challenge = true"
            )
    record_profile_urls(conn, enrolled_urls(config.server.public_url, topic), utc_now())
    return ProfileInputs(topic=topic, challenge=challenge)


def _identity_name(config: Config) -> x509.Name:
    return x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, config.server.organization),
        x509.NameAttribute(NameOID.COMMON_NAME, f"MDM identity {uuid.uuid4()}"),
    ])


def issue_pkcs12(config: Config, ca: ApplianceCA) -> tuple[Pkcs12Identity, scep_store.IssuedCertificate]:
    """A fresh device identity with a random password, for [enrollment] identity = "pkcs12"."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    days = config.enrollment.certificate_validity_days
    certificate = ca.issue(key.public_key(), _identity_name(config), days=days, client_auth=True)
    password = secrets.token_urlsafe(18)
    # 3DES/SHA-1 PKCS#12: the form every Apple OS version imports (AES-PBES2 fails on older ones).
    encryption = (
        serialization.PrivateFormat.PKCS12.encryption_builder()
        .kdf_rounds(50000)
        .key_cert_algorithm(pkcs12.PBES.PBESv1SHA1And3KeyTripleDESCBC)
        .hmac_hash(hashes.SHA1())
        .build(password.encode())
    )
    data = pkcs12.serialize_key_and_certificates(b"MDM identity", key, certificate, [ca.certificate], encryption)
    der = certificate.public_bytes(serialization.Encoding.DER)
    public_der = key.public_key().public_bytes(serialization.Encoding.DER,
                                               serialization.PublicFormat.SubjectPublicKeyInfo)
    record = scep_store.IssuedCertificate(
        serial=format(certificate.serial_number, "x"),
        subject=certificate.subject.rfc4514_string(),
        not_after=to_text(certificate.not_valid_after_utc),
        transaction_id=f"pkcs12:{uuid.uuid4()}",
        message_type=0,  # not SCEP: issued into a profile
        csr_sha256=hashlib.sha256(public_der).digest(),
        certificate=der,
        issued_at=to_text(utc_now()),
    )
    return Pkcs12Identity(pkcs12=data, password=password), record


def scep_ca_fingerprint(ca_der: bytes) -> bytes:
    """The SCEP payload's CAFingerprint: the device refuses a GetCACert answer that does not match.

    SHA-1, not SHA-256: Apple documents the key as an MD5 or SHA-1 fingerprint of the CA
    certificate (Profile Manager's and Configurator's SCEP settings); a longer hash is not
    documented to work. Matching an existing certificate takes a second preimage, which SHA-1
    still resists (its weakness is collisions between two certificates an attacker makes).
    """
    return hashlib.sha1(ca_der).digest()


def render_profile(config: Config, ca: ApplianceCA, inputs: ProfileInputs, *, server_cert_from_ca: bool,
                   tls_cert: Path | None, tls_key: Path | None
                   ) -> tuple[bytes, scep_store.IssuedCertificate | None]:
    """The .mobileconfig bytes, and the certificate issued into it (PKCS#12 identity) to record."""
    record = None
    if config.enrollment.identity == "pkcs12":
        identity, record = issue_pkcs12(config, ca)
    else:
        assert inputs.challenge is not None
        identity = ScepIdentity(challenge=inputs.challenge,
                                subject_common_name=f"MDM identity {uuid.uuid4()}",
                                name=config.server.organization,
                                ca_fingerprint=scep_ca_fingerprint(ca.certificate_der))
    settings = ProfileSettings(
        public_url=config.server.public_url,
        organization=config.server.organization,
        identifier=config.enrollment.profile_identifier,
        topic=inputs.topic,
        identity=identity,
        root_certificate_der=ca.certificate_der if server_cert_from_ca else None,
    )
    data = encode_profile(build_enrollment_profile(settings))
    if config.enrollment.sign_profile:
        data = sign_profile(data, tls_cert, tls_key)
    return data, record


def sign_profile(data: bytes, tls_cert: Path | None, tls_key: Path | None) -> bytes:
    """CMS SignedData (content attached) with the server's TLS key, so devices show "Verified"."""
    if tls_cert is None or tls_key is None:
        raise ProfileError("[enrollment] sign_profile needs the server's TLS certificate and key "
                           "([server] tls = true)")
    try:
        chain = x509.load_pem_x509_certificates(tls_cert.read_bytes())
        key = serialization.load_pem_private_key(tls_key.read_bytes(), password=None)
    except (OSError, ValueError) as exc:
        raise ProfileError(f"cannot read the TLS certificate/key to sign the profile: {exc}") from None
    builder = pkcs7.PKCS7SignatureBuilder().set_data(data).add_signer(chain[0], key, hashes.SHA256())
    for extra in chain[1:]:
        builder = builder.add_certificate(extra)
    return builder.sign(serialization.Encoding.DER, [pkcs7.PKCS7Options.Binary])


async def build_profile(runtime) -> bytes:
    """For GET /mdm/enroll. Raises ProfileError with an operator-facing message."""
    import trio

    inputs = await runtime.store.write(prepare_profile, runtime.config)
    data, record = await trio.to_thread.run_sync(
        lambda: render_profile(runtime.config, runtime.ca, inputs,
                               server_cert_from_ca=runtime.server_cert_from_ca,
                               tls_cert=runtime.tls_cert, tls_key=runtime.tls_key))
    if record is not None:
        await runtime.store.write(scep_store.record_issued, record)
        runtime.metrics.scep_issued.labels("PKCS12").inc()
    return data
