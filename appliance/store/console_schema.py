"""Console tables: the people who sign in to the web console, and the audit log of every state change
made through the console, the admin API or the CLI (who, what, to whom, when)."""

NAME = "console"

MIGRATIONS = [
    """
    -- A console account. password_hash is an Argon2id PHC string (appliance.service.accounts).
    CREATE TABLE users (
        name           TEXT PRIMARY KEY,
        role           TEXT NOT NULL CHECK (role IN ('admin', 'operator', 'viewer')),
        password_hash  TEXT NOT NULL,
        created_at     TEXT NOT NULL,
        updated_at     TEXT NOT NULL,
        last_login_at  TEXT
    );

    -- Append-only. actor: "user NAME", "api key" or "cli (OS user)"; target: what the action was done to
    -- (enrollment ids, a command UUID, a user name), details: JSON with the rest.
    CREATE TABLE audit_log (
        id       INTEGER PRIMARY KEY,
        at       TEXT NOT NULL,
        actor    TEXT NOT NULL,
        action   TEXT NOT NULL,
        target   TEXT,
        details  TEXT,
        remote   TEXT
    );
    CREATE INDEX audit_log_actor ON audit_log (actor, id);

    -- The overview's "recent failures": newest failed results without scanning every result ever kept.
    CREATE INDEX results_failed ON results (received_at) WHERE status != 'Acknowledged';
    """,
]
