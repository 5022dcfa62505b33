"""Push tables: the MDM push certificates imported over time (the newest row is the one in use).

Push outcomes per enrollment live in the core enrollments table (last_push_*, token_invalid_at,
push_backoff_until) so the device API shows them without a join.
"""

NAME = "push"

MIGRATIONS = [
    """
    -- Every imported push certificate, kept for the record; the highest id is current. The id is also
    -- the version the running server polls to pick up an import made by the CLI.
    CREATE TABLE push_certificates (
        id           INTEGER PRIMARY KEY,
        topic        TEXT NOT NULL,
        certificate  BLOB NOT NULL,      -- PEM, the push certificate first, then any chain
        private_key  BLOB NOT NULL,      -- PEM (PKCS#8, unencrypted: the database is 0600 in data_dir)
        sha256       TEXT NOT NULL,
        not_before   TEXT NOT NULL,
        not_after    TEXT NOT NULL,
        imported_at  TEXT NOT NULL,
        replaced_topic TEXT              -- set when an import was forced over a different topic
    );

    -- The re-push worker looks for commands waiting longer than [apns] repush_interval.
    CREATE INDEX queue_waiting ON queue (created_at) WHERE cancelled_at IS NULL;
    """,
]
