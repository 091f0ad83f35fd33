-- /queue and the loops at scale (issue 16): job counts by status kept by triggers in the
-- transaction of every job write, so /queue and /metrics read five rows
-- instead of counting a million; and an index for the queue view's
-- recently finished tasks.
CREATE TABLE job_counts (
    status TEXT PRIMARY KEY CHECK (status IN ('queued','running','done','failed','cancelled')),
    n      INTEGER NOT NULL
);
INSERT INTO job_counts (status, n)
    SELECT s.status, (SELECT COUNT(*) FROM jobs j WHERE j.status = s.status)
    FROM (SELECT 'queued' AS status UNION ALL SELECT 'running' UNION ALL SELECT 'done'
          UNION ALL SELECT 'failed' UNION ALL SELECT 'cancelled') s;

CREATE TRIGGER jobs_count_insert AFTER INSERT ON jobs BEGIN
    UPDATE job_counts SET n = n + 1 WHERE status = NEW.status;
END;
CREATE TRIGGER jobs_count_update AFTER UPDATE OF status ON jobs
    WHEN OLD.status <> NEW.status BEGIN
    UPDATE job_counts SET n = n - 1 WHERE status = OLD.status;
    UPDATE job_counts SET n = n + 1 WHERE status = NEW.status;
END;
CREATE TRIGGER jobs_count_delete AFTER DELETE ON jobs BEGIN
    UPDATE job_counts SET n = n - 1 WHERE status = OLD.status;
END;

CREATE INDEX tasks_stage_updated ON tasks (stage, updated_at);

-- The reconciler asks, per live task, for the jobs of its stage in any
-- status ("a finished job whose stage did not advance"); without this only
-- the active ones were indexed, and a tick over 10,000 running jobs took
-- 1.9 s (benches/loops_scale.rs).
CREATE INDEX jobs_task_stage ON jobs (task_id, stage);
