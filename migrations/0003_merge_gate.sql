-- F-18: the stage version at which the task's merge gate passed. The
-- deploy-staging exit gate requires it at the current version, so no actor
-- can move a task to deploy around the merge gate.
ALTER TABLE tasks ADD COLUMN merge_gate_version INTEGER;
-- The branch head that testing/staging (or a green merge-gate re-test)
-- validated: the merge gate may skip its re-test only for this exact SHA.
ALTER TABLE tasks ADD COLUMN validated_sha TEXT;
