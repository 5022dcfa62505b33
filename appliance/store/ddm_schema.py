"""Declarative Device Management tables: declarations, sets, their assignment to enrollments and to groups
of devices, what each enrollment was last told (tokens, the pending DeclarativeManagement command), the
enrollments waiting to be told of a change, and the status devices report.

Sets exist by their members, as in KMFDDM: a set name is a set once a declaration, an enrollment or a group
names it.
"""

NAME = "ddm"

MIGRATIONS = [
    """
    -- Declarations as given (Payload as JSON text); server_token changes with the content or a touch.
    -- builtin: NULL for an operator's; 'any', 'device' or 'user' for the appliance's own (served to every
    -- DDM enrollment, or to its device or user channels).
    CREATE TABLE ddm_declarations (
        identifier    TEXT PRIMARY KEY,
        type          TEXT NOT NULL,
        kind          TEXT NOT NULL,
        payload       TEXT NOT NULL,
        server_token  TEXT NOT NULL,
        touch         INTEGER NOT NULL DEFAULT 0,
        builtin       TEXT,
        created_at    TEXT NOT NULL,
        updated_at    TEXT NOT NULL
    );
    CREATE INDEX ddm_declarations_builtin ON ddm_declarations (builtin) WHERE builtin IS NOT NULL;

    -- An activation naming configurations, a configuration naming assets: what it names comes with it.
    CREATE TABLE ddm_references (
        identifier  TEXT NOT NULL REFERENCES ddm_declarations (identifier) ON DELETE CASCADE,
        target      TEXT NOT NULL REFERENCES ddm_declarations (identifier),
        PRIMARY KEY (identifier, target)
    );
    CREATE INDEX ddm_references_target ON ddm_references (target);

    CREATE TABLE ddm_set_declarations (
        set_name    TEXT NOT NULL,
        identifier  TEXT NOT NULL REFERENCES ddm_declarations (identifier),
        created_at  TEXT NOT NULL,
        PRIMARY KEY (set_name, identifier)
    );
    CREATE INDEX ddm_set_declarations_identifier ON ddm_set_declarations (identifier);

    -- Sets assigned to enrollment ids (known or not yet enrolled: the assignment waits for them).
    CREATE TABLE ddm_enrollment_sets (
        enrollment_id  TEXT NOT NULL,
        set_name       TEXT NOT NULL,
        created_at     TEXT NOT NULL,
        PRIMARY KEY (enrollment_id, set_name)
    );
    CREATE INDEX ddm_enrollment_sets_set ON ddm_enrollment_sets (set_name);

    -- Every way a set reaches an enrollment; group assignment joins in by redefining this view.
    CREATE VIEW ddm_assignments AS SELECT enrollment_id, set_name FROM ddm_enrollment_sets;

    -- What each enrollment was last told: the DeclarationsToken and since when (SyncTokens.Timestamp),
    -- the DeclarativeManagement command queued for it last, when it last synced and reported status.
    CREATE TABLE ddm_enrollments (
        enrollment_id       TEXT PRIMARY KEY,
        declarations_token  TEXT,
        token_changed_at    TEXT,
        command_uuid        TEXT,
        notified_at         TEXT,
        last_sync_at        TEXT,
        last_status_at      TEXT
    );

    -- Enrollments whose effective declarations may have changed, waiting for the notifier (durable: a
    -- restart resumes). forced: tell it even if its tokens did not change (the notify API).
    CREATE TABLE ddm_dirty (
        enrollment_id  TEXT PRIMARY KEY,
        forced         INTEGER NOT NULL DEFAULT 0,
        marked_at      TEXT NOT NULL
    );

    -- The latest status per enrollment and declaration, as the device reported it.
    CREATE TABLE ddm_status (
        enrollment_id  TEXT NOT NULL,
        identifier     TEXT NOT NULL,
        kind           TEXT NOT NULL,
        active         INTEGER NOT NULL,
        valid          TEXT NOT NULL,
        server_token   TEXT NOT NULL,
        reasons        TEXT,
        report_id      TEXT NOT NULL,
        received_at    TEXT NOT NULL,
        PRIMARY KEY (enrollment_id, identifier)
    );
    CREATE INDEX ddm_status_identifier ON ddm_status (identifier);

    -- Other reported values, one row per leaf (an array's items share their path).
    CREATE TABLE ddm_status_values (
        enrollment_id  TEXT NOT NULL,
        path           TEXT NOT NULL,
        value          TEXT NOT NULL,
        report_id      TEXT NOT NULL,
        received_at    TEXT NOT NULL
    );
    CREATE INDEX ddm_status_values_path ON ddm_status_values (enrollment_id, path);

    -- Errors the reports carried (the newest few per enrollment).
    CREATE TABLE ddm_status_errors (
        id             INTEGER PRIMARY KEY,
        enrollment_id  TEXT NOT NULL,
        path           TEXT NOT NULL,
        error          TEXT NOT NULL,
        report_id      TEXT NOT NULL,
        received_at    TEXT NOT NULL
    );
    CREATE INDEX ddm_status_errors_enrollment ON ddm_status_errors (enrollment_id, id);

    -- The raw reports (the newest [ddm] status_reports_kept per enrollment).
    CREATE TABLE ddm_status_reports (
        id             INTEGER PRIMARY KEY,
        enrollment_id  TEXT NOT NULL,
        report_id      TEXT NOT NULL UNIQUE,
        raw            BLOB NOT NULL,
        received_at    TEXT NOT NULL
    );
    CREATE INDEX ddm_status_reports_enrollment ON ddm_status_reports (enrollment_id, id);

    -- Asset content the appliance hosts for asset declarations of the same identifier.
    CREATE TABLE ddm_assets (
        identifier    TEXT PRIMARY KEY,
        content_type  TEXT NOT NULL,
        data          BLOB NOT NULL,
        sha256        TEXT NOT NULL,
        updated_at    TEXT NOT NULL
    );
    """,
    """
    -- Sets assigned to groups of devices (appliance.store.groups): every member's device channel gets them,
    -- for as long as it is a member. A group's deletion takes its assignments with it. (device_groups is
    -- created by the groups component, which migrates after this one: SQLite checks a foreign key only
    -- when rows change.)
    CREATE TABLE ddm_group_sets (
        group_name  TEXT NOT NULL COLLATE NOCASE REFERENCES device_groups (name) ON DELETE CASCADE,
        set_name    TEXT NOT NULL,
        created_at  TEXT NOT NULL,
        PRIMARY KEY (group_name, set_name)
    );
    CREATE INDEX ddm_group_sets_set ON ddm_group_sets (set_name);

    -- A group member's device id is its device channel's enrollment id. UNION ALL keeps a lookup by
    -- enrollment or by set on the indexes; a set that reaches an enrollment both ways shows twice.
    DROP VIEW ddm_assignments;
    CREATE VIEW ddm_assignments AS
        SELECT enrollment_id, set_name FROM ddm_enrollment_sets
        UNION ALL
        SELECT m.device_id, gs.set_name FROM ddm_group_sets AS gs
            JOIN group_members AS m ON m.group_name = gs.group_name;
    """,
]
