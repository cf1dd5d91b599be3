-- Tenants and API keys (docs/security.md). Every task belongs to its submitter's
-- tenant; '' is the tenant of tasks submitted without authentication (a server run
-- with --auth off), which only such a server shows.
ALTER TABLE tasks ADD COLUMN tenant TEXT NOT NULL DEFAULT '';

-- ListTasks of one tenant pages by (created_at_us, id) within it.
CREATE INDEX tasks_by_tenant ON tasks (tenant, created_at_us, id);

-- API keys. A token is `twk_<id>_<secret>`: the id finds the row, and only the
-- secret's SHA-256 is stored, so the table alone cannot call the API. A revoked key
-- keeps its row (revoked_at_us set) so listing shows what was revoked, and when.
CREATE TABLE api_keys (
    id             TEXT PRIMARY KEY,
    name           TEXT NOT NULL,
    tenant         TEXT NOT NULL,
    role           TEXT NOT NULL,            -- reader, submitter or admin
    secret_sha256  TEXT NOT NULL,            -- hex
    created_at_us  BIGINT NOT NULL,
    revoked_at_us  BIGINT
);
