-- The deploy path (F-19, F-23, F-24). Times are unix milliseconds.

-- F-24: the post-deploy window of a done task. The deploy finalizer arms it
-- right after deploy -> done and BEFORE the terminal tracker sync, so the
-- deploy status guard (F-05) already sees the window open when the first
-- "Monitoring after Deploy" is set. The post-deploy monitor clears it when
-- the window closes and records when: a closed window is never re-armed.
ALTER TABLE tasks ADD COLUMN post_deploy_until INTEGER;
ALTER TABLE tasks ADD COLUMN post_deploy_closed_at INTEGER;
CREATE INDEX tasks_post_deploy ON tasks (post_deploy_until) WHERE post_deploy_until IS NOT NULL;

-- F-19: the coverage ratchet's baseline per project. It moves only on a
-- pass, as the journaled coverage_ratchet effect; `transition_key` names the
-- transition whose pass wrote it last, which is how that effect's reconcile
-- tells that it already happened.
CREATE TABLE coverage_baseline (
    project        TEXT    PRIMARY KEY,
    percent        REAL    NOT NULL,
    transition_key TEXT    NOT NULL,
    updated_at     INTEGER NOT NULL
);
