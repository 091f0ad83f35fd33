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

-- A person's status change in the local tracker is a delivery like a
-- webhook's (source `local`): the source CHECK of 0001 is widened. SQLite
-- cannot alter a CHECK, so the table is rebuilt with its rows, ids and
-- indexes (nothing references it).
CREATE TABLE webhook_deliveries_new (
    id           INTEGER PRIMARY KEY,
    source       TEXT    NOT NULL CHECK (source IN ('plane','gitea','local')),
    delivery_id  TEXT    NOT NULL,
    event        TEXT    NOT NULL DEFAULT '',
    content_key  TEXT,
    headers      TEXT    NOT NULL DEFAULT '{}',
    body         BLOB    NOT NULL,
    received_at  INTEGER NOT NULL,
    processed_at INTEGER,
    outcome      TEXT,
    UNIQUE (source, delivery_id)
);
INSERT INTO webhook_deliveries_new
    (id, source, delivery_id, event, content_key, headers, body, received_at, processed_at, outcome)
SELECT id, source, delivery_id, event, content_key, headers, body, received_at, processed_at, outcome
FROM webhook_deliveries;
DROP TABLE webhook_deliveries;
ALTER TABLE webhook_deliveries_new RENAME TO webhook_deliveries;
CREATE UNIQUE INDEX webhook_deliveries_content ON webhook_deliveries (source, content_key)
    WHERE content_key IS NOT NULL;
CREATE INDEX webhook_deliveries_pending ON webhook_deliveries (id) WHERE processed_at IS NULL;
