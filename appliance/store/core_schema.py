"""The core tables: devices and their enrollments, the command queue, results, certificate bindings,
the webhook outbox, and small facts about the appliance itself (meta).

Times are ISO-8601 UTC text with microseconds ("2026-11-21T21:30:00.123456Z"): they sort as text.
"""

NAME = "core"

MIGRATIONS = [
    """
    -- A device, keyed by its device-channel enrollment ID (UDID, or EnrollmentID for User Enrollment).
    CREATE TABLE devices (
        id                  TEXT PRIMARY KEY,
        serial_number       TEXT,
        model               TEXT,
        model_name          TEXT,
        product_name        TEXT,
        os_version          TEXT,
        build_version       TEXT,
        device_name         TEXT,
        imei                TEXT,
        meid                TEXT,
        authenticate_raw    BLOB,
        authenticated_at    TEXT,
        bootstrap_token     BLOB,
        bootstrap_token_at  TEXT,
        unlock_token        BLOB,
        unlock_token_at     TEXT,
        created_at          TEXT NOT NULL,
        updated_at          TEXT NOT NULL
    );
    CREATE INDEX devices_serial ON devices (serial_number);

    -- A channel the device speaks on: the device channel (id = device id) or a user channel
    -- ("UDID:UserID", Shared iPad "UDID:UserShortName"), the NanoMDM convention.
    CREATE TABLE enrollments (
        id                      TEXT PRIMARY KEY,
        device_id               TEXT NOT NULL REFERENCES devices (id),
        type                    TEXT NOT NULL,
        user_id                 TEXT,
        user_short_name         TEXT,
        user_long_name          TEXT,
        topic                   TEXT,
        push_magic              TEXT,
        token                   BLOB,
        token_update_count      INTEGER NOT NULL DEFAULT 0,
        awaiting_configuration  INTEGER,
        active                  INTEGER NOT NULL DEFAULT 0,
        enrolled_at             TEXT,
        checked_out_at          TEXT,
        -- Counts the device's Idle reports: a command NotNow'd in the current session carries its number.
        idle_session            INTEGER NOT NULL DEFAULT 0,
        token_update_raw        BLOB,
        last_seen_at            TEXT,
        last_idle_at            TEXT,
        token_invalid_at        TEXT,
        last_push_at            TEXT,
        last_push_result        TEXT,
        last_push_id            TEXT,
        last_push_error         TEXT,
        push_backoff_until      TEXT,
        created_at              TEXT NOT NULL,
        updated_at              TEXT NOT NULL
    );
    CREATE INDEX enrollments_device ON enrollments (device_id);

    -- One stored body per command, shared by every enrollment it was enqueued to.
    CREATE TABLE commands (
        uuid          TEXT PRIMARY KEY,
        request_type  TEXT NOT NULL,
        body          BLOB NOT NULL,
        created_at    TEXT NOT NULL
    );

    -- Pending work: a row per (enrollment, command) until its final status arrives. id gives FIFO order.
    CREATE TABLE queue (
        id             INTEGER PRIMARY KEY,
        enrollment_id  TEXT NOT NULL REFERENCES enrollments (id),
        command_uuid   TEXT NOT NULL REFERENCES commands (uuid),
        created_at     TEXT NOT NULL,
        sent_at        TEXT,
        not_now_count  INTEGER NOT NULL DEFAULT 0,
        not_now_at     TEXT,
        not_now_session INTEGER,
        -- Cancelled after it was sent: never offered again, but the device's late report is still kept.
        cancelled_at   TEXT,
        UNIQUE (enrollment_id, command_uuid)
    );
    CREATE INDEX queue_next ON queue (enrollment_id, id);
    CREATE INDEX queue_command ON queue (command_uuid);

    -- Final statuses (Acknowledged, Error, CommandFormatError): the whole report, kept forever.
    CREATE TABLE results (
        enrollment_id  TEXT NOT NULL,
        command_uuid   TEXT NOT NULL,
        status         TEXT NOT NULL,
        raw            BLOB NOT NULL,
        error_chain    TEXT,
        queued_at      TEXT,
        received_at    TEXT NOT NULL,
        PRIMARY KEY (enrollment_id, command_uuid)
    );
    CREATE INDEX results_command ON results (command_uuid);
    CREATE INDEX results_received ON results (enrollment_id, received_at);

    -- The identity certificate bound to a device at Authenticate (SHA-256 of its DER).
    CREATE TABLE cert_bindings (
        device_id    TEXT PRIMARY KEY REFERENCES devices (id),
        sha256       TEXT NOT NULL,
        subject      TEXT,
        not_after    TEXT,
        bound_at     TEXT NOT NULL
    );
    CREATE INDEX cert_bindings_sha256 ON cert_bindings (sha256);

    -- Webhook events, written in the same transaction as the change that caused them.
    CREATE TABLE outbox (
        id               INTEGER PRIMARY KEY,
        enrollment_id    TEXT,
        topic            TEXT NOT NULL,
        body             BLOB NOT NULL,
        created_at       TEXT NOT NULL,
        attempts         INTEGER NOT NULL DEFAULT 0,
        next_attempt_at  TEXT,
        last_error       TEXT
    );
    CREATE INDEX outbox_enrollment ON outbox (enrollment_id, id);

    CREATE TABLE meta (
        key    TEXT PRIMARY KEY,
        value  TEXT NOT NULL
    );
    """,
    """
    -- Certificates that were bound to a device and replaced (renewal, re-enrollment): still that device's,
    -- so an old certificate can never be used to Authenticate as another device.
    CREATE TABLE cert_history (
        sha256       TEXT PRIMARY KEY,
        device_id    TEXT NOT NULL,
        bound_at     TEXT NOT NULL,
        replaced_at  TEXT NOT NULL
    );
    """,
    """
    -- Reports naming a command the sending enrollment was never given (an unknown CommandUUID, another
    -- device's command): answered 200 like any report, tied to no command, queue row or result, and kept
    -- here for people to read (the latest few per enrollment, see appliance.store.queue).
    CREATE TABLE stray_reports (
        id             INTEGER PRIMARY KEY,
        enrollment_id  TEXT NOT NULL,
        command_uuid   TEXT NOT NULL,
        status         TEXT NOT NULL,
        raw            BLOB NOT NULL,
        received_at    TEXT NOT NULL,
        UNIQUE (enrollment_id, command_uuid, status)
    );
    CREATE INDEX stray_reports_enrollment ON stray_reports (enrollment_id, id);
    """,
    """
    -- Certificates issued as proven renewals of a device's bound certificate (a SCEP RenewalReq signed by
    -- it, or a one-time challenge tied to it): the first request with one moves the binding to it while
    -- `predecessor` is still the bound certificate, and the device keeps its queue and bootstrap token.
    CREATE TABLE cert_successors (
        sha256       TEXT PRIMARY KEY,
        device_id    TEXT NOT NULL,
        predecessor  TEXT NOT NULL,
        proof        TEXT NOT NULL,          -- 'renewal_request' or 'renewal_challenge'
        recorded_at  TEXT NOT NULL
    );
    """,
    """
    -- What identity renewal needs of the bound certificate: its lifetime starts at not_before, and only
    -- certificates our CA issued (issuer = the appliance CA's subject) are renewed by the appliance.
    ALTER TABLE cert_bindings ADD COLUMN not_before TEXT;
    ALTER TABLE cert_bindings ADD COLUMN issuer TEXT;
    CREATE INDEX cert_bindings_not_after ON cert_bindings (not_after);
    """,
]
