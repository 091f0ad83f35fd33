-- Exactly once across graceful stops, timeouts and reclaims (B-13, F-10,
-- F-15, F-23; issue 10). Times are unix milliseconds.

-- Fencing: bumped by every lease acquire, force-release and reclaim. Every
-- write a lease holder makes after planning (an effect's result, its done
-- row, the stage CAS, the hold) is conditioned on the generation it
-- acquired, so a holder whose lease was taken away changes nothing.
ALTER TABLE tasks ADD COLUMN lease_generation INTEGER NOT NULL DEFAULT 0;
-- A person's go-ahead to re-run an effect whose outcome is unknown (a
-- Confirm Deploy, an operator's retry): a counter, bumped once per decision.
-- An `unknown` effect row records the count it saw; only a later decision
-- (a higher count) lets the journal apply it again.
ALTER TABLE tasks ADD COLUMN retry_grants INTEGER NOT NULL DEFAULT 0;

-- Process groups are ours before we signal them: the leader's start time
-- (field 22 of /proc/<pid>/stat) and a token in its environment.
ALTER TABLE jobs ADD COLUMN pgid_start_time INTEGER;
ALTER TABLE jobs ADD COLUMN pgid_token TEXT;

-- The journal gains `unknown`: the effect may have reached the outside and
-- did not provably succeed (a deploy that timed out, was killed or vanished).
-- It holds the task; the daemon never applies it again on its own. SQLite
-- cannot change a CHECK constraint in place: the table is rebuilt.
CREATE TABLE effects_v7 (
    id             INTEGER PRIMARY KEY,
    task_id        INTEGER NOT NULL REFERENCES tasks (id),
    transition_key TEXT    NOT NULL,
    from_stage     TEXT    NOT NULL,
    to_stage       TEXT    NOT NULL,
    stage_version  INTEGER NOT NULL,
    kind           TEXT    NOT NULL,
    state          TEXT    NOT NULL CHECK (state IN ('planned','done','failed','unknown')),
    holder         TEXT,
    result         TEXT,
    error          TEXT,
    attempts       INTEGER NOT NULL DEFAULT 1,
    planned_at     INTEGER NOT NULL,
    done_at        INTEGER,
    -- `unknown` rows: when, and the task's retry_grants at that moment.
    unknown_at     INTEGER,
    unknown_grant  INTEGER,
    UNIQUE (transition_key, kind)
);
INSERT INTO effects_v7 (id, task_id, transition_key, from_stage, to_stage, stage_version, kind,
                        state, holder, result, error, attempts, planned_at, done_at)
    SELECT id, task_id, transition_key, from_stage, to_stage, stage_version, kind,
           state, holder, result, error, attempts, planned_at, done_at FROM effects;
DROP TABLE effects;
ALTER TABLE effects_v7 RENAME TO effects;
CREATE INDEX effects_task_version ON effects (task_id, stage_version);
CREATE INDEX effects_open ON effects (state) WHERE state IN ('planned','unknown');

-- The stage write and its history row in ONE statement (ADR 0008): the CAS
-- (`stage_engine::cas`, the only writer of tasks.stage) names its actor and
-- reason in these two columns; this trigger turns them into the
-- stage_history row inside the same statement and clears them. An update
-- that does not name an actor (test set-up) writes no history.
ALTER TABLE tasks ADD COLUMN stage_actor TEXT;
ALTER TABLE tasks ADD COLUMN stage_reason TEXT;
CREATE TRIGGER tasks_stage_history AFTER UPDATE OF stage_version ON tasks
WHEN NEW.stage_actor IS NOT NULL
BEGIN
    INSERT INTO stage_history (task_id, from_stage, to_stage, from_version, to_version, actor, reason, at)
    VALUES (NEW.id, OLD.stage, NEW.stage, OLD.stage_version, NEW.stage_version,
            NEW.stage_actor, COALESCE(NEW.stage_reason, ''), NEW.updated_at);
    UPDATE tasks SET stage_actor = NULL, stage_reason = NULL WHERE id = NEW.id;
END;
