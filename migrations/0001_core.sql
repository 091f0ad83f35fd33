-- Core schema (F-09..F-11, B-1, B-6). Times are unix milliseconds (INTEGER).

-- One row per task. A cancelled task's natural keys are tombstoned
-- (tombstoned_at set) so "To Analyse" can create a fresh task for the same
-- work item; the old row keeps its work_item, so it stays recoverable.
CREATE TABLE tasks (
    id                  INTEGER PRIMARY KEY,
    work_item           TEXT    NOT NULL,
    plane_issue_id      TEXT,
    project             TEXT    NOT NULL,
    title               TEXT    NOT NULL DEFAULT '',
    description         TEXT    NOT NULL DEFAULT '',
    stage               TEXT    NOT NULL CHECK (stage IN ('created','analysis','architecture',
                            'development','review','testing','deploy-staging','deploy','done','cancelled')),
    -- Bumped by every stage write: the CAS compares (stage, stage_version),
    -- so a rollback to a stage name seen before cannot be confused with it.
    stage_version       INTEGER NOT NULL DEFAULT 0,
    branch              TEXT,
    worktree            TEXT,
    approved_at         INTEGER,
    deploy_confirmed_at INTEGER,
    hold_reason         TEXT,
    held_at             INTEGER,
    cancel_requested_at INTEGER,
    cancel_requested_by TEXT,
    cancel_reason       TEXT,
    cancel_notified_at  INTEGER,
    tombstoned_at       INTEGER,
    created_at          INTEGER NOT NULL,
    updated_at          INTEGER NOT NULL
);
CREATE UNIQUE INDEX tasks_live_work_item ON tasks (work_item) WHERE tombstoned_at IS NULL;
CREATE UNIQUE INDEX tasks_live_plane_issue ON tasks (plane_issue_id)
    WHERE tombstoned_at IS NULL AND plane_issue_id IS NOT NULL;
CREATE INDEX tasks_stage ON tasks (stage);

-- Every stage write, in the same transaction as the write.
CREATE TABLE stage_history (
    id           INTEGER PRIMARY KEY,
    task_id      INTEGER NOT NULL REFERENCES tasks (id),
    from_stage   TEXT    NOT NULL,
    to_stage     TEXT    NOT NULL,
    from_version INTEGER NOT NULL,
    to_version   INTEGER NOT NULL,
    actor        TEXT    NOT NULL,
    reason       TEXT    NOT NULL DEFAULT '',
    at           INTEGER NOT NULL
);
CREATE INDEX stage_history_task ON stage_history (task_id, id);

CREATE TABLE jobs (
    id          INTEGER PRIMARY KEY,
    task_id     INTEGER NOT NULL REFERENCES tasks (id),
    stage       TEXT    NOT NULL,
    role        TEXT    NOT NULL,
    status      TEXT    NOT NULL CHECK (status IN ('queued','running','done','failed','cancelled')),
    attempt     INTEGER NOT NULL DEFAULT 1,
    boot_id     TEXT,
    error       TEXT,
    created_at  INTEGER NOT NULL,
    started_at  INTEGER,
    finished_at INTEGER,
    updated_at  INTEGER NOT NULL
);
-- Idempotent enqueue: one active job per task and stage.
CREATE UNIQUE INDEX jobs_one_active ON jobs (task_id, stage) WHERE status IN ('queued','running');
CREATE INDEX jobs_status ON jobs (status);

CREATE TABLE agent_runs (
    id                    INTEGER PRIMARY KEY,
    job_id                INTEGER NOT NULL REFERENCES jobs (id),
    task_id               INTEGER NOT NULL REFERENCES tasks (id),
    role                  TEXT    NOT NULL,
    stage                 TEXT    NOT NULL,
    attempt               INTEGER NOT NULL DEFAULT 1,
    pid                   INTEGER,
    model                 TEXT,
    effort                TEXT,
    command               TEXT,
    log_path              TEXT,
    started_at            INTEGER NOT NULL,
    exit_code             INTEGER,
    finished_at           INTEGER,
    input_tokens          INTEGER NOT NULL DEFAULT 0,
    output_tokens         INTEGER NOT NULL DEFAULT 0,
    cache_read_tokens     INTEGER NOT NULL DEFAULT 0,
    cache_creation_tokens INTEGER NOT NULL DEFAULT 0,
    cost_usd              REAL    NOT NULL DEFAULT 0
);
CREATE INDEX agent_runs_task ON agent_runs (task_id);
CREATE INDEX agent_runs_job ON agent_runs (job_id);

-- F-10: at most one owner of a task's side-effectful region.
CREATE TABLE transition_lease (
    task_id          INTEGER PRIMARY KEY REFERENCES tasks (id),
    owner_pid        INTEGER NOT NULL,
    owner_start_time INTEGER NOT NULL,
    owner_boot_id    TEXT    NOT NULL,
    holder           TEXT    NOT NULL,
    actor            TEXT    NOT NULL,
    transition       TEXT    NOT NULL,
    acquired_at      INTEGER NOT NULL
);

-- B-1: the effect journal. One row per (transition key, effect kind).
CREATE TABLE effects (
    id             INTEGER PRIMARY KEY,
    task_id        INTEGER NOT NULL REFERENCES tasks (id),
    transition_key TEXT    NOT NULL,
    from_stage     TEXT    NOT NULL,
    to_stage       TEXT    NOT NULL,
    stage_version  INTEGER NOT NULL,
    kind           TEXT    NOT NULL,
    state          TEXT    NOT NULL CHECK (state IN ('planned','done','failed')),
    holder         TEXT,
    result         TEXT,
    error          TEXT,
    attempts       INTEGER NOT NULL DEFAULT 1,
    planned_at     INTEGER NOT NULL,
    done_at        INTEGER,
    UNIQUE (transition_key, kind)
);
CREATE INDEX effects_task_version ON effects (task_id, stage_version);
CREATE INDEX effects_open ON effects (state) WHERE state = 'planned';

-- B-6: every accepted webhook, raw, for dedup and replay.
CREATE TABLE webhook_deliveries (
    id           INTEGER PRIMARY KEY,
    source       TEXT    NOT NULL CHECK (source IN ('plane','gitea')),
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
CREATE UNIQUE INDEX webhook_deliveries_content ON webhook_deliveries (source, content_key)
    WHERE content_key IS NOT NULL;
