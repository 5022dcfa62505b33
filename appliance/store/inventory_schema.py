"""Inventory tables: what the inventory commands taught us about each device, the dated history of its OS
and name, and when its next inventory is due. Name, model, OS and serial stay in the core devices table
(Authenticate writes them first, a newer inventory answer replaces them); the rest lives here."""

NAME = "inventory"

MIGRATIONS = [
    """
    -- One row per device that has answered an inventory command. *_at: when each answer arrived;
    -- inventory_at: the newest of them. *_json: the whole answer (QueryResponses, SecurityInfo) as JSON.
    CREATE TABLE device_inventory (
        device_id                 TEXT PRIMARY KEY REFERENCES devices (id),
        model_number              TEXT,
        device_capacity           REAL,     -- GB
        available_capacity        REAL,     -- GB
        battery_level             REAL,     -- 0.0-1.0
        supervised                INTEGER,
        activation_lock           INTEGER,
        passcode_present          INTEGER,
        passcode_compliant        INTEGER,
        filevault                 INTEGER,
        enrolled_via_dep          INTEGER,
        user_approved_enrollment  INTEGER,
        device_information_json   TEXT,
        security_info_json        TEXT,
        device_information_at     TEXT,
        security_info_at          TEXT,
        profiles_at               TEXT,
        certificates_at           TEXT,
        applications_at           TEXT,
        -- SHA-256 of the last list stored: an unchanged list (the usual daily answer) is not rewritten.
        profiles_sha256           TEXT,
        certificates_sha256       TEXT,
        applications_sha256       TEXT,
        inventory_at              TEXT
    );

    -- The lists a device reported last (ProfileList, CertificateList, InstalledApplicationList); each
    -- answer replaces the device's whole list.
    CREATE TABLE device_profiles (
        device_id           TEXT NOT NULL REFERENCES devices (id),
        identifier          TEXT NOT NULL,
        uuid                TEXT,
        display_name        TEXT,
        organization        TEXT,
        version             INTEGER,
        managed             INTEGER,
        encrypted           INTEGER,
        removal_disallowed  INTEGER,
        payload_types       TEXT        -- JSON array of PayloadType
    );
    CREATE INDEX device_profiles_device ON device_profiles (device_id);
    CREATE INDEX device_profiles_identifier ON device_profiles (identifier);

    CREATE TABLE device_certificates (
        device_id     TEXT NOT NULL REFERENCES devices (id),
        common_name   TEXT,
        is_identity   INTEGER,
        sha256        TEXT NOT NULL,
        subject       TEXT,
        issuer        TEXT,
        not_after     TEXT
    );
    CREATE INDEX device_certificates_device ON device_certificates (device_id);

    CREATE TABLE device_applications (
        device_id      TEXT NOT NULL REFERENCES devices (id),
        identifier     TEXT,
        name           TEXT,
        short_version  TEXT,
        version        TEXT,
        bundle_size    INTEGER,
        installing     INTEGER
    );
    CREATE INDEX device_applications_device ON device_applications (device_id);
    CREATE INDEX device_applications_identifier ON device_applications (identifier);

    -- Dated changes of a device's OS version, build and name (from Authenticate or DeviceInformation).
    -- Pruned by age like other history; the devices table always holds the current values.
    CREATE TABLE inventory_history (
        id          INTEGER PRIMARY KEY,
        device_id   TEXT NOT NULL,
        fact        TEXT NOT NULL,      -- 'os_version', 'build_version' or 'device_name'
        old_value   TEXT,
        new_value   TEXT,
        source      TEXT NOT NULL,      -- 'Authenticate' or 'DeviceInformation'
        changed_at  TEXT NOT NULL
    );
    CREATE INDEX inventory_history_device ON inventory_history (device_id, id);
    CREATE INDEX inventory_history_changed ON inventory_history (changed_at);

    -- When each enrolled device's inventory was last queued and when the next one is due. A device
    -- without a row, or enrolled again since queued_at, is due now.
    CREATE TABLE inventory_schedule (
        device_id   TEXT PRIMARY KEY,
        queued_at   TEXT NOT NULL,
        due_at      TEXT NOT NULL
    );
    CREATE INDEX inventory_schedule_due ON inventory_schedule (due_at);
    """,
]
