-- What the usage parser read from a run's output (F-14, B-5): the format it
-- recognised (claude-json, claude-stream-json, codex-exec-json; NULL when
-- nothing was read) and, when the agent reported an error, its subtype.
-- The usage comment is written from the run row later (at finish), so
-- without these it could not tell "read, zero" from "not read".
ALTER TABLE agent_runs ADD COLUMN usage_format TEXT;
ALTER TABLE agent_runs ADD COLUMN usage_error TEXT;
