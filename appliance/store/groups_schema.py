"""Group tables: named groups of devices (static: members added by hand; dynamic: a filter over inventory
facts), their members, the log of membership changes, and each command's groups as they were when it was
enqueued."""

NAME = "groups"

MIGRATIONS = [
    """
    -- Names compare without case ("Lab-Macs" is "lab-macs"), so group:NAME finds what people typed.
    CREATE TABLE device_groups (
        name         TEXT PRIMARY KEY COLLATE NOCASE,
        kind         TEXT NOT NULL CHECK (kind IN ('static', 'dynamic')),
        filter       TEXT,               -- dynamic groups: the filter (appliance.store.device_filter)
        description  TEXT,
        created_at   TEXT NOT NULL,
        updated_at   TEXT NOT NULL
    );

    -- Members of both kinds: a dynamic group's rows are kept up to date whenever a device's facts or the
    -- filter change, so every membership change is an INSERT or a DELETE here, in the transaction that
    -- caused it.
    CREATE TABLE group_members (
        group_name  TEXT NOT NULL COLLATE NOCASE REFERENCES device_groups (name),
        device_id   TEXT NOT NULL REFERENCES devices (id),
        added_at    TEXT NOT NULL,
        PRIMARY KEY (group_name, device_id)
    ) WITHOUT ROWID;
    CREATE INDEX group_members_device ON group_members (device_id, group_name);

    -- Every membership change (appliance.store.groups writes it with the change): what a worker that
    -- follows memberships (declarative management) reads, by id, after the last change it handled.
    CREATE TABLE group_changes (
        id          INTEGER PRIMARY KEY,
        group_name  TEXT NOT NULL,
        device_id   TEXT NOT NULL,
        change      TEXT NOT NULL CHECK (change IN ('joined', 'left')),
        changed_at  TEXT NOT NULL
    );
    CREATE INDEX group_changes_changed ON group_changes (changed_at);

    -- A command enqueued to group:NAME keeps the group's members as they were then (JSON array of ids).
    CREATE TABLE command_groups (
        command_uuid  TEXT NOT NULL,
        group_name    TEXT NOT NULL,
        kind          TEXT NOT NULL,
        filter        TEXT,
        members       TEXT NOT NULL,
        recorded_at   TEXT NOT NULL,
        PRIMARY KEY (command_uuid, group_name)
    );
    """,
]
