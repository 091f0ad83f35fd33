-- The built-in tracker (B-10): work items, their status and comments in our
-- own database, for projects with `tracker = "local"`. `status` is a status
-- KEY of `[plane].statuses` (`to_analyse`, `approved`, ...), so a renamed
-- status name never strands an item. `seq` numbers the items of a project
-- (`DEMO-<seq>`); `revision` counts the person's status changes and names
-- the delivery each one stores in `webhook_deliveries` (source `local`).
-- Times are unix milliseconds.
CREATE TABLE local_items (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    project     TEXT    NOT NULL,
    seq         INTEGER NOT NULL,
    work_item   TEXT    NOT NULL UNIQUE,
    title       TEXT    NOT NULL,
    description TEXT    NOT NULL DEFAULT '',
    status      TEXT    NOT NULL,
    revision    INTEGER NOT NULL DEFAULT 0,
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL,
    UNIQUE (project, seq)
);

-- `author` is `person` (HTTP, CLI, board) or `orchestrator` (the pipeline's
-- comments, written once per idempotency key).
CREATE TABLE local_comments (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    item_id         INTEGER NOT NULL REFERENCES local_items (id),
    author          TEXT    NOT NULL CHECK (author IN ('person', 'orchestrator')),
    idempotency_key TEXT,
    html            TEXT    NOT NULL,
    created_at      INTEGER NOT NULL,
    UNIQUE (item_id, idempotency_key)
);
CREATE INDEX local_comments_item ON local_comments (item_id, id);
