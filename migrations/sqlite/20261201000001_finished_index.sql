-- Tasks that finished, by when: GetQueueStats counts each kind's recent successes and
-- failures per minute. Partial: running tasks are not in it, so the recorder's updates
-- of progress do not touch it.
CREATE INDEX tasks_by_finished ON tasks (finished_at_us, kind, state) WHERE finished_at_us IS NOT NULL;
