-- Task graphs (docs/architecture.md, "Children and fan-in"). A child names its parent;
-- the parent's graph columns say how far the api has taken it:
-- - spawned_seq: the seq of the WAITING event whose children the api created (a
--   parent WAITING with last_seq above it has children still to create);
-- - fan_in_seq: the seq of the WAITING event whose fan-in (or failure) the api sent;
-- - spawn_progress: the parent's own progress when its step ended, the start of its
--   tree's share (so the tree's progress never goes backwards);
-- - cascade_pending: its children are being cancelled with it (below).
ALTER TABLE tasks ADD COLUMN parent_id TEXT;
ALTER TABLE tasks ADD COLUMN child_failure BIGINT NOT NULL DEFAULT 0;   -- taskwire.v1.ChildFailurePolicy
ALTER TABLE tasks ADD COLUMN cancel_policy BIGINT NOT NULL DEFAULT 0;   -- taskwire.v1.CancelPolicy
ALTER TABLE tasks ADD COLUMN has_children BIGINT NOT NULL DEFAULT 0;  -- 1 once it has a child: reads count them
ALTER TABLE tasks ADD COLUMN spawned_seq BIGINT NOT NULL DEFAULT 0;
ALTER TABLE tasks ADD COLUMN fan_in_seq BIGINT NOT NULL DEFAULT 0;
ALTER TABLE tasks ADD COLUMN spawn_progress DOUBLE PRECISION NOT NULL DEFAULT 0;
-- ListTasks by parent, the counts of a parent's children, and the fan-in check.
-- Partial: tasks without a parent (most) are not in it.
CREATE INDEX tasks_by_parent ON tasks (parent_id, created_at_us, id) WHERE parent_id IS NOT NULL;
-- A parent cancelled (or failed) whose children the api is still cancelling: set
-- before its terminal event is appended, cleared once its children are cancelled, so
-- the graph loop's sweep finishes what a crash cut short. Partial: almost always empty.
ALTER TABLE tasks ADD COLUMN cascade_pending BIGINT NOT NULL DEFAULT 0;
CREATE INDEX tasks_cascade_pending ON tasks (id) WHERE cascade_pending = 1;
