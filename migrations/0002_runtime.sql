-- Agent runtime (F-11, F-13, F-15, F-17): job context for prompts, the
-- per-project merge lease, task dependencies, reaper claims.

-- What the next agent of this job must know: a rejection reason, review
-- findings, a failed gate's reason (F-02, F-13, F-19).
ALTER TABLE jobs ADD COLUMN context TEXT NOT NULL DEFAULT '';
-- The reaper's atomic claim (F-15): set once, by the winner.
ALTER TABLE jobs ADD COLUMN claimed_by TEXT;
-- The process group of the running agent, for cancel and tier-3 kills.
ALTER TABLE jobs ADD COLUMN pgid INTEGER;

-- F-17: one task per project from the merge gate until deploy -> done.
CREATE TABLE merge_lease (
    project     TEXT    PRIMARY KEY,
    task_id     INTEGER NOT NULL REFERENCES tasks (id),
    acquired_at INTEGER NOT NULL
);

-- F-17: a task waits until every task it depends on is terminal.
CREATE TABLE task_deps (
    task_id    INTEGER NOT NULL REFERENCES tasks (id),
    depends_on INTEGER NOT NULL REFERENCES tasks (id),
    PRIMARY KEY (task_id, depends_on)
);

-- Per-stage cost budgets need the stage of each run summed (B-7).
CREATE INDEX agent_runs_task_stage ON agent_runs (task_id, stage);
