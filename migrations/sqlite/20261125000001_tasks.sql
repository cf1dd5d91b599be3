-- Tasks, their labels and the transactional outbox. The same timestamp names the
-- same step in migrations/sqlite and migrations/postgres; the two differ only in
-- type names. Integers are BIGINT everywhere and times are microseconds since the
-- Unix epoch, so one set of queries serves both databases.

CREATE TABLE tasks (
    id                TEXT PRIMARY KEY,
    kind              TEXT NOT NULL,
    state             BIGINT NOT NULL,          -- taskwire.v1.TaskState
    -- Idempotency: a key is unique per caller for good (guarantee 3). NULL = no key,
    -- and NULLs never collide.
    caller            TEXT NOT NULL,
    idempotency_key   TEXT,
    input             TEXT NOT NULL,            -- JSON
    labels            TEXT NOT NULL,            -- JSON object; task_labels indexes it
    max_attempts      BIGINT NOT NULL,
    timeout_ms        BIGINT,
    attempt           BIGINT NOT NULL DEFAULT 0,
    progress_fraction REAL NOT NULL DEFAULT 0,
    progress_message  TEXT NOT NULL DEFAULT '',
    output            TEXT,                     -- JSON
    error_code        TEXT,
    error_message     TEXT,
    error_retryable   BIGINT,                   -- 0 or 1
    created_at_us     BIGINT NOT NULL,
    started_at_us     BIGINT,
    finished_at_us    BIGINT,
    updated_at_us     BIGINT NOT NULL,
    -- Seq of the newest event applied: events with seq <= last_seq change nothing.
    last_seq          BIGINT NOT NULL DEFAULT 0,
    UNIQUE (caller, idempotency_key)
);

-- ListTasks pages newest first by (created_at_us, id), optionally by state or kind.
CREATE INDEX tasks_by_created ON tasks (created_at_us, id);
CREATE INDEX tasks_by_state ON tasks (state, created_at_us, id);
CREATE INDEX tasks_by_kind ON tasks (kind, created_at_us, id);

CREATE TABLE task_labels (
    task_id TEXT NOT NULL REFERENCES tasks (id) ON DELETE CASCADE,
    key     TEXT NOT NULL,
    value   TEXT NOT NULL,
    PRIMARY KEY (task_id, key)
);
CREATE INDEX task_labels_by_pair ON task_labels (key, value, task_id);

-- The transactional outbox: written in the same transaction as the task, deleted once
-- JetStream acknowledged the message. A row whose lease ran out belongs to the relay,
-- which publishes it again (JetStream drops the duplicate by Nats-Msg-Id).
CREATE TABLE outbox (
    task_id        TEXT PRIMARY KEY REFERENCES tasks (id) ON DELETE CASCADE,
    subject        TEXT NOT NULL,
    payload        BLOB NOT NULL,
    lease_until_us BIGINT NOT NULL
);
CREATE INDEX outbox_by_lease ON outbox (lease_until_us);
