"""Queries for the SCEP CA: issued certificates by transaction, one-time challenges.

Every function takes the connection first, to run inside `Store.read` / `Store.write`.
"""

from __future__ import annotations

import hashlib
import sqlite3
from dataclasses import dataclass
from datetime import datetime

from appliance.store.timefmt import to_text


@dataclass(frozen=True)
class IssuedCertificate:
    serial: str
    subject: str
    not_after: str
    transaction_id: str
    message_type: int
    csr_sha256: bytes
    certificate: bytes
    issued_at: str


def challenge_hash(challenge: str) -> bytes:
    return hashlib.sha256(challenge.encode("utf-8")).digest()


def by_transaction(conn: sqlite3.Connection, transaction_id: str) -> IssuedCertificate | None:
    row = conn.execute("SELECT * FROM scep_certificates WHERE transaction_id = ?",
                       (transaction_id,)).fetchone()
    return IssuedCertificate(**dict(row)) if row else None


def by_serial(conn: sqlite3.Connection, serial: str) -> IssuedCertificate | None:
    row = conn.execute("SELECT * FROM scep_certificates WHERE serial = ?", (serial,)).fetchone()
    return IssuedCertificate(**dict(row)) if row else None


def record_issued(conn: sqlite3.Connection, issued: IssuedCertificate) -> IssuedCertificate:
    """Insert, unless the transaction is already recorded; return what is recorded for it.

    Two copies of one request racing each other both issue, but only the first is kept and
    both answer with it.
    """
    conn.execute(
        "INSERT INTO scep_certificates (serial, subject, not_after, transaction_id, message_type,"
        " csr_sha256, certificate, issued_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
        " ON CONFLICT (transaction_id) DO NOTHING",
        (issued.serial, issued.subject, issued.not_after, issued.transaction_id, issued.message_type,
         issued.csr_sha256, issued.certificate, issued.issued_at),
    )
    recorded = by_transaction(conn, issued.transaction_id)
    assert recorded is not None
    return recorded


ISSUED, REPLAYED, CHALLENGE_SPENT = "issued", "replayed", "challenge_spent"


def record_enrollment(conn: sqlite3.Connection, issued: IssuedCertificate, one_time_challenge: str | None,
                      now: datetime) -> tuple[str, IssuedCertificate | None]:
    """In one transaction: a replay check, the one-time challenge spent, the certificate recorded.

    A resend racing its original (same transaction ID) finds the original's record instead of a
    spent challenge; two different requests with one challenge: the second is refused.
    """
    recorded = by_transaction(conn, issued.transaction_id)
    if recorded is not None:
        return REPLAYED, recorded
    if one_time_challenge is not None and not spend_challenge(conn, one_time_challenge, now,
                                                              issued.transaction_id):
        return CHALLENGE_SPENT, None
    return ISSUED, record_issued(conn, issued)


def challenge_usable(conn: sqlite3.Connection, challenge: str, now: datetime, transaction_id: str) -> bool:
    """Unused and unexpired, or spent by this very transaction: a resend that raced its original
    past the replay check, which `record_enrollment` then answers with the original's certificate."""
    row = conn.execute(
        "SELECT 1 FROM scep_challenges WHERE challenge_sha256 = ? AND expires_at > ?"
        " AND (used_at IS NULL OR used_by = ?)",
        (challenge_hash(challenge), to_text(now), transaction_id),
    ).fetchone()
    return row is not None


def count_issued(conn: sqlite3.Connection) -> int:
    return conn.execute("SELECT count(*) FROM scep_certificates").fetchone()[0]


def add_challenge(conn: sqlite3.Connection, challenge: str, created: datetime, expires: datetime,
                  renews: tuple[str, str] | None = None) -> None:
    """renews: (device id, bound certificate SHA-256) when the challenge is minted to renew that identity."""
    # Expired challenges are useless: drop them whenever a new one is minted.
    conn.execute("DELETE FROM scep_challenges WHERE expires_at < ?", (to_text(created),))
    device, sha256 = renews or (None, None)
    conn.execute(
        "INSERT INTO scep_challenges (challenge_sha256, created_at, expires_at, renews_device, renews_sha256)"
        " VALUES (?, ?, ?, ?, ?)",
        (challenge_hash(challenge), to_text(created), to_text(expires), device, sha256),
    )


def challenge_renews(conn: sqlite3.Connection, challenge: str) -> tuple[str, str] | None:
    """The (device id, certificate SHA-256) a challenge was minted to renew, if any."""
    row = conn.execute(
        "SELECT renews_device, renews_sha256 FROM scep_challenges WHERE challenge_sha256 = ?"
        " AND renews_device IS NOT NULL",
        (challenge_hash(challenge),),
    ).fetchone()
    return (row[0], row[1]) if row else None


def spend_challenge(conn: sqlite3.Connection, challenge: str, now: datetime, transaction_id: str) -> bool:
    """Mark a one-time challenge used; False if unknown, expired or already used."""
    row = conn.execute(
        "UPDATE scep_challenges SET used_at = ?, used_by = ?"
        " WHERE challenge_sha256 = ? AND used_at IS NULL AND expires_at > ? RETURNING 1",
        (to_text(now), transaction_id, challenge_hash(challenge), to_text(now)),
    ).fetchall()
    return bool(row)


def drop_renewal_challenges(conn: sqlite3.Connection, device_id: str) -> int:
    """Forget the unspent challenges minted to renew this device's identity (its renewal completed, moved
    on to a new attempt, or the device re-enrolled): an InstallProfile still carrying one then fails at
    SCEP instead of issuing a successor to a certificate that is no longer the device's."""
    return conn.execute(
        "DELETE FROM scep_challenges WHERE renews_device = ? AND used_at IS NULL", (device_id,)
    ).rowcount
