"""Identity renewal: where the renewal of each device's bound certificate stands (service/renewal.py)."""

NAME = "renewal"

MIGRATIONS = [
    """
    -- One row per device: the renewal of the certificate `sha256` (bound when it began). Each attempt sends
    -- the enrollment profile with a one-time challenge tied to that certificate (InstallProfile
    -- `command_uuid`); one not completed by next_attempt_at is replaced by the next. completed_at and
    -- successor are set when the device presents the renewed certificate; given_up_at when the certificate
    -- expired first. The row stays as the record of the last renewal until the next one begins.
    CREATE TABLE identity_renewals (
        device_id        TEXT PRIMARY KEY,
        sha256           TEXT NOT NULL,
        not_after        TEXT NOT NULL,
        started_at       TEXT NOT NULL,
        attempts         INTEGER NOT NULL DEFAULT 0,
        command_uuid     TEXT,
        attempted_at     TEXT,
        next_attempt_at  TEXT,
        last_failure     TEXT,
        completed_at     TEXT,
        successor        TEXT,
        given_up_at      TEXT
    );
    """,
]
