"""Apple Business Manager tables: the MDM server entries (key pair, token, cursor, profile), the devices
ABM assigned to them, and what the ADE enrollment endpoint handed out (profile served, setup state, the
one-time challenges and identities tied to a serial number).

The server token holds OAuth secrets: like every key here it stays in this database (0600 in data_dir).
"""

NAME = "abm"

MIGRATIONS = [
    """
    -- One row per MDM server entry in ABM. version goes up with every key pair or token change: a running
    -- appliance polls it, so a token imported by the CLI is used without a restart.
    CREATE TABLE abm_servers (
        name                TEXT PRIMARY KEY,
        certificate         BLOB NOT NULL,       -- PEM, uploaded in ABM
        private_key         BLOB NOT NULL,       -- PEM (PKCS#8): the token is encrypted to it
        created_at          TEXT NOT NULL,
        version             INTEGER NOT NULL DEFAULT 1,
        token               TEXT,                -- the decrypted server token (JSON with the OAuth secrets)
        token_expires_at    TEXT,
        token_imported_at   TEXT,
        account             TEXT,                -- JSON: the account detail Apple gives (server_name, org_name)
        phase               TEXT NOT NULL DEFAULT 'fetch',   -- 'fetch' (a full fetch runs or is due) or 'sync'
        cursor              TEXT,                -- where the fetch or the syncs go on
        cursor_at           TEXT,                -- when the cursor's run began: Apple refuses one 7 days old
        fetch_started_at    TEXT,                -- the full fetch in progress began (who it missed is gone)
        last_full_fetch_at  TEXT,
        last_sync_at        TEXT,
        last_error          TEXT,
        last_error_at       TEXT,
        profile_uuid        TEXT,                -- the ADE profile defined with Apple for this server
        profile_hash        TEXT,                -- of the profile body it was defined from
        profile_defined_at  TEXT
    );

    -- The devices ABM assigned to a server, by serial number (a device moved to another of our servers
    -- moves its row). assign_state: pending (should get our profile), assigned, failed / throttled (tried
    -- again at assign_next_at), not_accessible (ABM says it is not this server's), unassigned (by an
    -- operator: never assigned automatically), removed (no longer assigned to this server in ABM).
    CREATE TABLE abm_devices (
        serial_number          TEXT PRIMARY KEY,
        server                 TEXT NOT NULL,
        model                  TEXT,
        description            TEXT,
        color                  TEXT,
        asset_tag              TEXT,
        os                     TEXT,
        device_family          TEXT,
        profile_status         TEXT,             -- as Apple reports it: empty, assigned, pushed, removed
        profile_uuid           TEXT,             -- as Apple reports it
        profile_assign_time    TEXT,
        profile_push_time      TEXT,
        device_assigned_date   TEXT,
        device_assigned_by     TEXT,
        op_type                TEXT,
        op_date                TEXT,
        added_at               TEXT NOT NULL,    -- first named to us (or again after a removal)
        modified_at            TEXT,
        deleted_at             TEXT,
        seen_at                TEXT NOT NULL,    -- the last fetch or sync that named it
        assign_state           TEXT NOT NULL DEFAULT 'pending',
        assign_reason          TEXT,
        assign_attempts        INTEGER NOT NULL DEFAULT 0,
        assign_next_at         TEXT,
        assigned_profile_uuid  TEXT,
        assigned_at            TEXT
    );
    CREATE INDEX abm_devices_server ON abm_devices (server, serial_number);
    CREATE INDEX abm_devices_due ON abm_devices (server, assign_next_at)
        WHERE assign_state IN ('pending', 'failed', 'throttled');

    -- A device that fetched its enrollment profile from the ADE endpoint (its signed machine info), and
    -- where it stands in Setup Assistant. setup_state: awaiting (profile served, told to wait for
    -- DeviceConfigured), setup_commands (they are queued), device_configured_sent, configured; NULL when
    -- the profile did not ask it to wait.
    CREATE TABLE ade_enrollments (
        serial_number           TEXT PRIMARY KEY,
        udid                    TEXT NOT NULL,
        server                  TEXT,            -- the ABM server it is assigned to (NULL: not known from ABM)
        product                 TEXT,
        version                 TEXT,
        os_version              TEXT,
        language                TEXT,
        imei                    TEXT,
        meid                    TEXT,
        signed                  INTEGER NOT NULL, -- the machine info's signature was verified
        profile_served_at       TEXT NOT NULL,
        profiles_served         INTEGER NOT NULL DEFAULT 1,
        setup_state             TEXT,
        setup_commands          TEXT,            -- JSON: the CommandUUIDs sent while it waits
        device_configured_uuid  TEXT,
        setup_started_at        TEXT,
        configured_at           TEXT,
        updated_at              TEXT NOT NULL
    );
    CREATE INDEX ade_enrollments_udid ON ade_enrollments (udid);

    -- One-time SCEP challenges put in an ADE profile (scep_challenges holds the challenge itself), tied to
    -- the serial number of the device they were handed to; and the identity certificates issued against
    -- them, which can then Authenticate only with that serial number.
    CREATE TABLE ade_challenges (
        challenge_sha256  BLOB PRIMARY KEY,
        serial_number     TEXT NOT NULL,
        created_at        TEXT NOT NULL
    );
    CREATE TABLE ade_identities (
        sha256            TEXT PRIMARY KEY,
        serial_number     TEXT NOT NULL,
        issued_at         TEXT NOT NULL
    );
    """,
]
