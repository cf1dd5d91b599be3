-- Delayed tasks (SubmitTaskRequest.delay, run_at): when a task is due. Such a task is
-- stored SCHEDULED with its outbox row leased until then, so the outbox relay enqueues
-- it when it is due, from any api replica, after any restart.
ALTER TABLE tasks ADD COLUMN run_at_us BIGINT;
