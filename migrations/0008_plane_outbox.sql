-- Plane writes that could not be sent at once (issue 11 pt 2, F-03, F-16):
-- the rate budget was spent, Plane answered 429, 5xx or not at all. They
-- are sent later by the outbox sender, in `id` order per work item, never
-- dropped: a row ends `sent`, or `failed` when Plane refused it for good (a
-- 4xx other than 429, a write the guard blocks). Times are unix
-- milliseconds.
CREATE TABLE plane_outbox (
    id                 INTEGER PRIMARY KEY AUTOINCREMENT,
    project            TEXT    NOT NULL,
    tracker_project_id TEXT    NOT NULL,
    issue_id           TEXT    NOT NULL,
    work_item          TEXT    NOT NULL,
    op                 TEXT    NOT NULL CHECK (op IN ('set_status', 'add_comment')),
    -- set_status: the status key; add_comment: NULL.
    status_key         TEXT,
    -- add_comment: the external id as sent to Plane, and the HTML.
    external_id        TEXT,
    html               TEXT,
    state              TEXT    NOT NULL DEFAULT 'pending'
                               CHECK (state IN ('pending', 'sent', 'failed')),
    attempts           INTEGER NOT NULL DEFAULT 0,
    last_error         TEXT,
    created_at         INTEGER NOT NULL,
    next_attempt_at    INTEGER NOT NULL DEFAULT 0,
    sent_at            INTEGER
);
CREATE INDEX plane_outbox_pending ON plane_outbox (state, issue_id, id);

-- This database's identity (issue 11 pt 6): Plane deduplicates comments on
-- (project, external_source, external_id) across every client of the
-- project, so our external ids carry it; a reset or a second daemon's
-- database gets a new one and its comments are never taken for ours.
CREATE TABLE daemon_identity (
    id       INTEGER PRIMARY KEY CHECK (id = 1),
    instance TEXT    NOT NULL
);
INSERT INTO daemon_identity (id, instance) VALUES (1, lower(hex(randomblob(8))));
