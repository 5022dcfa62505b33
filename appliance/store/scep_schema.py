"""SCEP tables: every certificate the SCEP CA issued, and the one-time enrollment challenges.

Challenges are stored as SHA-256 hashes only: a copy of the database does not hand out enrollments.
"""

NAME = "scep"

MIGRATIONS = [
    """
    -- One row per issued certificate. transaction_id is unique: a replayed request with the same
    -- CSR gets this certificate back, a different CSR under the same transaction ID is refused.
    CREATE TABLE scep_certificates (
        serial          TEXT PRIMARY KEY,        -- hex, lower case
        subject         TEXT NOT NULL,           -- RFC 4514 string
        not_after       TEXT NOT NULL,
        transaction_id  TEXT NOT NULL UNIQUE,
        message_type    INTEGER NOT NULL,        -- 19 PKCSReq, 17 RenewalReq
        csr_sha256      BLOB NOT NULL,
        certificate     BLOB NOT NULL,           -- DER
        issued_at       TEXT NOT NULL
    );
    CREATE INDEX scep_certificates_not_after ON scep_certificates (not_after);

    CREATE TABLE scep_challenges (
        challenge_sha256  BLOB PRIMARY KEY,
        created_at        TEXT NOT NULL,
        expires_at        TEXT NOT NULL,
        used_at           TEXT,
        used_by           TEXT                   -- the transaction ID that spent it
    );
    CREATE INDEX scep_challenges_expires ON scep_challenges (expires_at);
    """,
    """
    -- A challenge minted to renew one device's identity (sent over its authenticated channel): the
    -- certificate issued against it is that device's proven successor while renews_sha256 is still bound.
    ALTER TABLE scep_challenges ADD COLUMN renews_device TEXT;
    ALTER TABLE scep_challenges ADD COLUMN renews_sha256 TEXT;
    """,
]
