-- Runs of a task (RetryTask): a FAILED task retried starts run 2, 3, ... Its record
-- shows the current run; run_seq is the seq of the event that started it, so an older
-- run's event applied late (several recorders) cannot touch the new run's start time.
ALTER TABLE tasks ADD COLUMN run BIGINT NOT NULL DEFAULT 1;
ALTER TABLE tasks ADD COLUMN run_seq BIGINT NOT NULL DEFAULT 0;
