//! Writing tasks: a batch of submits with their labels and outbox rows, atomically,
//! deduplicated by the caller's idempotency key.

use std::{collections::HashSet, time::Duration};

use sqlx::{AnyConnection, Connection, pool::PoolConnection};

use super::{Backend, Error, OutboxEntry, Store, placeholders, placeholders_from};
use crate::{
    auth::Tenant,
    domain::{Caller, IdempotencyKey, Labels, TaskId, TaskKind},
    pb::{internal::v1::TaskMessage, v1::TaskState},
};

/// A task to insert, already validated.
#[derive(Debug, Clone)]
pub struct NewTask {
    /// The task's id, chosen by the api.
    pub id: TaskId,
    /// What to run.
    pub kind: TaskKind,
    /// Who submitted it: idempotency keys are unique per caller (with authentication,
    /// the caller is the tenant).
    pub caller: Caller,
    /// The tenant it belongs to (`Tenant::none()` without authentication).
    pub tenant: Tenant,
    /// The caller's idempotency key, if any.
    pub idempotency_key: Option<IdempotencyKey>,
    /// The input as JSON text.
    pub input: String,
    /// Labels to filter by.
    pub labels: Labels,
    /// Attempts before it fails; resolved, never 0.
    pub max_attempts: u32,
    /// Per-attempt timeout, if the submit set one.
    pub timeout: Option<Duration>,
    /// When it was submitted.
    pub created_at_us: i64,
    /// When it is due, if it was submitted with a delay or run_at ahead: it is stored
    /// SCHEDULED, and its outbox row's lease runs until then.
    pub run_at_us: Option<i64>,
    /// The task whose child it is, if any.
    pub parent_id: Option<TaskId>,
    /// For a child: what its failure does to the parent (`ChildFailurePolicy`).
    pub child_failure: i32,
    /// What cancelling it does to its children (`CancelPolicy`).
    pub cancel_policy: i32,
}

impl NewTask {
    /// The message that enqueues the task's first run (RetryTask publishes later
    /// ones), carrying the submit's trace context.
    pub fn message(&self, traceparent: Option<String>) -> TaskMessage {
        TaskMessage {
            task_id: self.id.to_string(),
            kind: self.kind.to_string(),
            input: Some(crate::json::text_to_value(&self.input)),
            max_attempts: self.max_attempts,
            timeout: self.timeout.map(|d| prost_types::Duration {
                seconds: d.as_secs() as i64,
                nanos: d.subsec_nanos() as i32,
            }),
            labels: self.labels.clone().into_map().into_iter().collect(),
            created_at: Some(crate::json::micros_to_timestamp(self.created_at_us)),
            traceparent: traceparent.unwrap_or_default(),
            run_at: self.run_at_us.map(crate::json::micros_to_timestamp),
            run: 0,
            parent_id: self.parent_id.map(|p| p.to_string()).unwrap_or_default(),
            fan_in: None,
            child_failure: self.child_failure,
            cancel_policy: self.cancel_policy,
        }
    }
}

/// What [`Store::insert_task`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inserted {
    /// The task and its outbox row are committed.
    New,
    /// The caller's idempotency key already names this task; nothing was written.
    Duplicate(TaskId),
}

impl Store {
    /// Inserts a task, its labels and its outbox row in one transaction; or, when the
    /// caller's idempotency key is taken, writes nothing and names the existing task.
    pub async fn insert_task(
        &self,
        task: &NewTask,
        outbox: &OutboxEntry,
    ) -> Result<Inserted, Error> {
        let mut out = self.insert_tasks(&[(task.clone(), outbox.clone())]).await?;
        Ok(out.pop().expect("one result per task"))
    }

    /// Inserts many tasks with their labels and outbox rows, answering for each whether
    /// it is new or which task already holds its idempotency key. Concurrent submits
    /// share the writes (the api's group commit, through a [`Writer`]). The unique
    /// (caller, idempotency_key) constraint decides, so concurrent repeats, also within
    /// one batch, yield one task. A task, its labels and its outbox row are written
    /// atomically.
    pub async fn insert_tasks(
        &self,
        tasks: &[(NewTask, OutboxEntry)],
    ) -> Result<Vec<Inserted>, Error> {
        self.writer().insert_tasks(tasks).await
    }

    /// A [`Writer`] on this store.
    pub fn writer(&self) -> Writer {
        Writer {
            store: self.clone(),
            conn: None,
        }
    }

    #[tracing::instrument(skip_all, fields(tasks = tasks.len()), err)]
    pub(super) async fn insert_tasks_on(
        &self,
        conn: &mut AnyConnection,
        tasks: &[(NewTask, OutboxEntry)],
    ) -> Result<Vec<Inserted>, Error> {
        if tasks.is_empty() {
            return Ok(Vec::new());
        }
        // Rows in (caller, key) order: concurrent batches then take the unique index's
        // locks in one order and cannot deadlock each other.
        let mut sorted: Vec<&(NewTask, OutboxEntry)> = tasks.iter().collect();
        sorted.sort_by(|(a, _), (b, _)| {
            (
                a.caller.as_str(),
                a.idempotency_key.as_ref().map(|k| k.as_str()),
            )
                .cmp(&(
                    b.caller.as_str(),
                    b.idempotency_key.as_ref().map(|k| k.as_str()),
                ))
        });
        let inserted = match self.backend {
            Backend::Postgres => {
                let mut ids = HashSet::new();
                for chunk in sorted.chunks(PG_INSERT_CHUNK) {
                    ids.extend(insert_pg(&mut *conn, chunk).await?);
                }
                ids
            }
            Backend::Sqlite => insert_sqlite(&mut *conn, &sorted).await?,
        };
        // The rest lost to an existing key: name the task that holds it.
        let mut out = Vec::with_capacity(tasks.len());
        for (t, _) in tasks {
            if inserted.contains(&t.id.to_string()) {
                out.push(Inserted::New);
                continue;
            }
            let id: String = sqlx::query_scalar(
                "SELECT id FROM tasks WHERE caller = $1 AND idempotency_key = $2",
            )
            .bind(t.caller.as_str().to_string())
            .bind(t.idempotency_key.as_ref().map(|k| k.as_str().to_string()))
            .fetch_one(&mut *conn)
            .await?;
            out.push(Inserted::Duplicate(
                TaskId::parse(&id).map_err(|_| Error::Corrupt("task id".into()))?,
            ));
        }
        Ok(out)
    }
}

/// One long-lived writer of tasks (the api's inserter) on a pooled connection it keeps
/// while batches keep coming: each batch size is a different statement, prepared once
/// per connection, and a writer taking any connection from the pool prepared them over
/// and over (most of a batch's time under load, docs/benchmarks.md). Every call runs
/// under the store's deadline.
#[derive(Debug)]
pub struct Writer {
    store: Store,
    conn: Option<PoolConnection<sqlx::Any>>,
}

impl Writer {
    /// See [`Store::insert_tasks`].
    pub async fn insert_tasks(
        &mut self,
        tasks: &[(NewTask, OutboxEntry)],
    ) -> Result<Vec<Inserted>, Error> {
        let store = self.store.clone();
        let result = store
            .deadline(async {
                let conn = match &mut self.conn {
                    Some(c) => c,
                    None => self.conn.insert(store.pool.acquire().await?),
                };
                store.insert_tasks_on(conn, tasks).await
            })
            .await;
        if result.is_err() {
            // The connection may be broken (or mid-statement after a deadline): the
            // next batch takes a fresh one.
            self.release();
        }
        result
    }

    /// Gives the connection back to the pool (a writer with nothing to do must not
    /// hold one: closing the pool waits for every connection).
    pub fn release(&mut self) {
        self.conn = None;
    }
}

/// Values a task row binds in [`insert_tasks_sql`]: 13, and 3 more for a batch with a
/// child in it ([`Columns::WithGraph`]).
const TASK_VALUES: usize = 13;
const GRAPH_VALUES: usize = 3;

/// Which columns a batch's INSERT names. Most batches have no child: they leave the
/// graph columns to their defaults and bind a fifth fewer values (a batch's statement
/// is prepared once per connection for each size and kind).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Columns {
    Plain,
    WithGraph,
}

impl Columns {
    fn of(rows: &[&(NewTask, OutboxEntry)]) -> Self {
        if rows
            .iter()
            .any(|(t, _)| t.parent_id.is_some() || t.child_failure != 0 || t.cancel_policy != 0)
        {
            Self::WithGraph
        } else {
            Self::Plain
        }
    }

    /// Values each task row binds.
    fn values(self) -> usize {
        match self {
            Self::Plain => TASK_VALUES,
            Self::WithGraph => TASK_VALUES + GRAPH_VALUES,
        }
    }
}

/// The `INSERT INTO tasks` of a batch; `$1..` are its rows' [`Columns::values`] each.
fn insert_tasks_sql(rows: usize, columns: Columns) -> String {
    let graph = match columns {
        Columns::Plain => "",
        Columns::WithGraph => ", parent_id, child_failure, cancel_policy",
    };
    format!(
        "INSERT INTO tasks (id, kind, state, caller, idempotency_key, input, labels, \
         max_attempts, timeout_ms, created_at_us, updated_at_us, tenant, run_at_us{graph}) \
         VALUES {} ON CONFLICT (caller, idempotency_key) DO NOTHING RETURNING id",
        placeholders(rows, columns.values())
    )
}

/// Binds the values [`insert_tasks_sql`] expects.
fn bind_tasks<'q, O>(
    mut q: sqlx::query::QueryScalar<'q, sqlx::Any, O, sqlx::any::AnyArguments>,
    rows: &[&(NewTask, OutboxEntry)],
    columns: Columns,
) -> Result<sqlx::query::QueryScalar<'q, sqlx::Any, O, sqlx::any::AnyArguments>, Error> {
    for &(t, _) in rows {
        let labels = serde_json::to_string(&t.labels.clone().into_map())
            .map_err(|e| Error::Corrupt(e.to_string()))?;
        q = q
            .bind(t.id.to_string())
            .bind(t.kind.as_str().to_string())
            .bind(if t.run_at_us.is_some() {
                TaskState::Scheduled as i64
            } else {
                TaskState::Queued as i64
            })
            .bind(t.caller.as_str().to_string())
            .bind(t.idempotency_key.as_ref().map(|k| k.as_str().to_string()))
            .bind(t.input.clone())
            .bind(labels)
            .bind(i64::from(t.max_attempts))
            .bind(t.timeout.map(|d| d.as_millis() as i64))
            .bind(t.created_at_us)
            .bind(t.created_at_us)
            .bind(t.tenant.as_str().to_string())
            .bind(t.run_at_us);
        if columns == Columns::WithGraph {
            q = q
                .bind(t.parent_id.map(|p| p.to_string()))
                .bind(i64::from(t.child_failure))
                .bind(i64::from(t.cancel_policy));
        }
    }
    Ok(q)
}

/// The `task_labels` rows (task id, key, value) of `tasks`.
fn label_rows<'a>(
    tasks: impl Iterator<Item = &'a NewTask>,
) -> Vec<(String, &'a String, &'a String)> {
    tasks
        .flat_map(|t| t.labels.iter().map(|(k, v)| (t.id.to_string(), k, v)))
        .collect()
}

/// PostgreSQL: a chunk's tasks, outbox rows and labels in one statement, its
/// data-modifying CTEs writing outbox rows and labels only for the tasks inserted.
/// One statement is atomic without a transaction: one round trip instead of five
/// (BEGIN, three INSERTs, COMMIT), which made up most of a submit's time in the api.
/// Returns the ids inserted.
async fn insert_pg(
    conn: &mut AnyConnection,
    rows: &[&(NewTask, OutboxEntry)],
) -> Result<HashSet<String>, Error> {
    let labels = label_rows(rows.iter().map(|(t, _)| t));
    let n = rows.len();
    let columns = Columns::of(rows);
    let values = columns.values();
    let mut sql = format!(
        "WITH t AS ({}), \
         o AS (INSERT INTO outbox (task_id, subject, payload, lease_until_us) \
           SELECT v.column1, v.column2, v.column3, v.column4 FROM (VALUES {}) AS v \
           JOIN t ON t.id = v.column1)",
        insert_tasks_sql(n, columns),
        placeholders_from(n * values, n, 4)
    );
    if !labels.is_empty() {
        sql += &format!(
            ", l AS (INSERT INTO task_labels (task_id, key, value) \
               SELECT v.column1, v.column2, v.column3 FROM (VALUES {}) AS v \
               JOIN t ON t.id = v.column1)",
            placeholders_from(n * (values + 4), labels.len(), 3)
        );
    }
    sql.push_str(" SELECT id FROM t");
    // Safe: only fixed SQL and `$n` placeholders.
    let mut q = bind_tasks(
        sqlx::query_scalar::<_, String>(sqlx::AssertSqlSafe(sql)),
        rows,
        columns,
    )?;
    for (t, o) in rows {
        q = q
            .bind(t.id.to_string())
            .bind(o.subject.clone())
            .bind(o.payload.clone())
            .bind(o.lease_until_us);
    }
    for (id, k, v) in labels {
        q = q.bind(id).bind(k.clone()).bind(v.clone());
    }
    Ok(q.fetch_all(conn).await?.into_iter().collect())
}

/// SQLite (whose CTEs cannot write): one transaction of multi-row INSERTs. Returns the
/// ids inserted.
async fn insert_sqlite(
    conn: &mut AnyConnection,
    rows: &[&(NewTask, OutboxEntry)],
) -> Result<HashSet<String>, Error> {
    let mut tx = conn.begin().await?;
    let mut inserted = HashSet::new();
    for chunk in rows.chunks(INSERT_CHUNK) {
        let columns = Columns::of(chunk);
        let sql = insert_tasks_sql(chunk.len(), columns);
        // Safe: only fixed SQL and `$n` placeholders.
        let q = bind_tasks(
            sqlx::query_scalar::<_, String>(sqlx::AssertSqlSafe(sql)),
            chunk,
            columns,
        )?;
        inserted.extend(q.fetch_all(&mut *tx).await?);
    }
    let new: Vec<&&(NewTask, OutboxEntry)> = rows
        .iter()
        .filter(|(t, _)| inserted.contains(&t.id.to_string()))
        .collect();
    for chunk in new.chunks(INSERT_CHUNK) {
        let sql = format!(
            "INSERT INTO outbox (task_id, subject, payload, lease_until_us) VALUES {}",
            placeholders(chunk.len(), 4)
        );
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        for (t, o) in chunk.iter().map(|r| **r) {
            q = q
                .bind(t.id.to_string())
                .bind(o.subject.clone())
                .bind(o.payload.clone())
                .bind(o.lease_until_us);
        }
        q.execute(&mut *tx).await?;
    }
    let labels = label_rows(new.iter().map(|(t, _)| t));
    for chunk in labels.chunks(INSERT_CHUNK) {
        let sql = format!(
            "INSERT INTO task_labels (task_id, key, value) VALUES {}",
            placeholders(chunk.len(), 3)
        );
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        for (id, k, v) in chunk {
            q = q.bind(id.clone()).bind((*k).clone()).bind((*v).clone());
        }
        q.execute(&mut *tx).await?;
    }
    tx.commit().await?;
    Ok(inserted)
}

/// Rows per multi-row INSERT: 16 parameters a row stays far below SQLite's limit.
const INSERT_CHUNK: usize = 500;
/// Tasks per PostgreSQL statement: with 20 values a task and up to 32 labels of 3, a
/// chunk stays under the protocol's 65,535 parameters.
const PG_INSERT_CHUNK: usize = 250;
