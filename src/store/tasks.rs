//! Queries on tasks and their labels.

use std::{collections::HashSet, time::Duration};

use sqlx::{AnyConnection, Connection, Row, any::AnyRow, pool::PoolConnection};

use super::{Backend, Error, OutboxEntry, Store, placeholders, placeholders_from};
use crate::{
    domain::{Caller, IdempotencyKey, InvalidInput, Labels, TaskId, TaskKind},
    json,
    pb::v1::{Progress, Task, TaskError, TaskState},
};

/// A task to insert, already validated.
#[derive(Debug, Clone)]
pub struct NewTask {
    pub id: TaskId,
    pub kind: TaskKind,
    pub caller: Caller,
    pub idempotency_key: Option<IdempotencyKey>,
    /// The input as JSON text.
    pub input: String,
    pub labels: Labels,
    pub max_attempts: u32,
    pub timeout: Option<Duration>,
    pub created_at_us: i64,
}

/// What [`Store::insert_task`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inserted {
    /// The task and its outbox row are committed.
    New,
    /// The caller's idempotency key already names this task; nothing was written.
    Duplicate(TaskId),
}

/// A task row as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskRecord {
    pub id: TaskId,
    pub kind: String,
    pub state: TaskState,
    pub input: String,
    pub labels: String,
    pub max_attempts: u32,
    pub timeout_ms: Option<i64>,
    pub attempt: u32,
    pub progress_fraction: f64,
    pub progress_message: String,
    pub output: Option<String>,
    pub error: Option<TaskError>,
    pub created_at_us: i64,
    pub started_at_us: Option<i64>,
    pub finished_at_us: Option<i64>,
    pub updated_at_us: i64,
    pub last_seq: u64,
}

/// The columns [`TaskRecord::from_row`] reads; a macro so queries stay `&'static str`.
macro_rules! task_columns {
    () => {
        "id, kind, state, input, labels, max_attempts, timeout_ms, attempt, \
         progress_fraction, progress_message, output, error_code, error_message, \
         error_retryable, created_at_us, started_at_us, finished_at_us, updated_at_us, last_seq"
    };
}

impl TaskRecord {
    fn from_row(row: &AnyRow) -> Result<Self, Error> {
        let corrupt = |what: &str| Error::Corrupt(what.to_string());
        let id: String = row.try_get("id")?;
        let state: i64 = row.try_get("state")?;
        let error_code: Option<String> = row.try_get("error_code")?;
        let error = match error_code {
            Some(code) => Some(TaskError {
                code,
                message: row
                    .try_get::<Option<String>, _>("error_message")?
                    .unwrap_or_default(),
                retryable: row
                    .try_get::<Option<i64>, _>("error_retryable")?
                    .unwrap_or(0)
                    != 0,
            }),
            None => None,
        };
        Ok(Self {
            id: TaskId::parse(&id).map_err(|_| corrupt("task id"))?,
            kind: row.try_get("kind")?,
            state: i32::try_from(state)
                .ok()
                .and_then(|s| TaskState::try_from(s).ok())
                .ok_or_else(|| corrupt("task state"))?,
            input: row.try_get("input")?,
            labels: row.try_get("labels")?,
            max_attempts: row.try_get::<i64, _>("max_attempts")? as u32,
            timeout_ms: row.try_get("timeout_ms")?,
            attempt: row.try_get::<i64, _>("attempt")? as u32,
            progress_fraction: row.try_get("progress_fraction")?,
            progress_message: row.try_get("progress_message")?,
            output: row.try_get("output")?,
            error,
            created_at_us: row.try_get("created_at_us")?,
            started_at_us: row.try_get("started_at_us")?,
            finished_at_us: row.try_get("finished_at_us")?,
            updated_at_us: row.try_get("updated_at_us")?,
            last_seq: row.try_get::<i64, _>("last_seq")? as u64,
        })
    }

    /// The record as the public contract shows it.
    pub fn to_proto(&self) -> Task {
        let labels = serde_json::from_str(&self.labels).unwrap_or_default();
        Task {
            id: self.id.to_string(),
            kind: self.kind.clone(),
            state: self.state as i32,
            progress: Some(Progress {
                fraction: self.progress_fraction,
                message: self.progress_message.clone(),
            }),
            input: Some(json::text_to_value(&self.input)),
            output: self.output.as_deref().map(json::text_to_value),
            error: self.error.clone(),
            attempt: self.attempt,
            max_attempts: self.max_attempts,
            labels,
            created_at: Some(json::micros_to_timestamp(self.created_at_us)),
            started_at: self.started_at_us.map(json::micros_to_timestamp),
            finished_at: self.finished_at_us.map(json::micros_to_timestamp),
            updated_at: Some(json::micros_to_timestamp(self.updated_at_us)),
            last_seq: self.last_seq,
        }
    }
}

/// A ListTasks query, validated.
#[derive(Debug, Clone, Default)]
pub struct ListQuery {
    pub page_size: u32,
    pub after: Option<PageToken>,
    pub state: Option<TaskState>,
    pub kind: Option<TaskKind>,
    pub labels: Labels,
}

/// Where the next page starts: the (created_at_us, id) of the last task returned.
/// Keyset pagination: pages never overlap or skip, even while tasks are inserted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageToken {
    pub created_at_us: i64,
    pub id: TaskId,
}

impl PageToken {
    /// Opaque to clients: hex of "created_at_us/id".
    pub fn encode(&self) -> String {
        format!("{}/{}", self.created_at_us, self.id)
            .bytes()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    pub fn decode(s: &str) -> Result<Self, InvalidInput> {
        let bad = || InvalidInput::Malformed {
            field: "page_token",
            reason: "is not a token this server issued".into(),
        };
        if !s.len().is_multiple_of(2) || s.len() > 256 {
            return Err(bad());
        }
        let bytes: Vec<u8> = (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(s.get(i..i + 2).ok_or_else(bad)?, 16).map_err(|_| bad()))
            .collect::<Result<_, _>>()?;
        let text = String::from_utf8(bytes).map_err(|_| bad())?;
        let (t, id) = text.split_once('/').ok_or_else(bad)?;
        Ok(Self {
            created_at_us: t.parse().map_err(|_| bad())?,
            id: TaskId::parse(id).map_err(|_| bad())?,
        })
    }
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
    async fn insert_tasks_on(
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

    #[tracing::instrument(skip_all, fields(task_id = %id), err)]
    pub async fn get_task(&self, id: TaskId) -> Result<Option<TaskRecord>, Error> {
        self.deadline(async {
            let row = sqlx::query(concat!(
                "SELECT ",
                task_columns!(),
                " FROM tasks WHERE id = $1"
            ))
            .bind(id.to_string())
            .fetch_optional(&self.pool)
            .await?;
            row.as_ref().map(TaskRecord::from_row).transpose()
        })
        .await
    }

    /// A page of tasks, newest first, and the token of the next page if there is one.
    #[tracing::instrument(skip_all, err)]
    pub async fn list_tasks(
        &self,
        q: &ListQuery,
    ) -> Result<(Vec<TaskRecord>, Option<PageToken>), Error> {
        self.deadline(async {
            let mut sql =
                concat!("SELECT ", task_columns!(), " FROM tasks WHERE 1 = 1").to_string();
            let mut args: Vec<Arg> = Vec::new();
            if let Some(state) = q.state {
                let p = param(&mut args, Arg::Int(state as i64));
                sql += &format!(" AND state = {p}");
            }
            if let Some(kind) = &q.kind {
                let p = param(&mut args, Arg::Text(kind.as_str().to_string()));
                sql += &format!(" AND kind = {p}");
            }
            for (k, v) in q.labels.iter() {
                let pk = param(&mut args, Arg::Text(k.clone()));
                let pv = param(&mut args, Arg::Text(v.clone()));
                sql += &format!(
                    " AND id IN (SELECT task_id FROM task_labels WHERE key = {pk} AND value = {pv})"
                );
            }
            if let Some(after) = &q.after {
                let pt = param(&mut args, Arg::Int(after.created_at_us));
                let pi = param(&mut args, Arg::Text(after.id.to_string()));
                sql +=
                    &format!(" AND (created_at_us < {pt} OR (created_at_us = {pt} AND id < {pi}))");
            }
            // One row more than asked tells whether there is a next page.
            let pl = param(&mut args, Arg::Int(i64::from(q.page_size) + 1));
            sql += &format!(" ORDER BY created_at_us DESC, id DESC LIMIT {pl}");

            // Safe: every value is a bind parameter; only fixed SQL and `$n` names
            // were appended to `sql`.
            let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
            for a in args {
                query = match a {
                    Arg::Int(i) => query.bind(i),
                    Arg::Text(s) => query.bind(s),
                };
            }
            let rows = query.fetch_all(&self.pool).await?;
            let mut tasks = rows
                .iter()
                .map(TaskRecord::from_row)
                .collect::<Result<Vec<_>, _>>()?;
            let next = if tasks.len() > q.page_size as usize {
                tasks.truncate(q.page_size as usize);
                tasks.last().map(|t| PageToken {
                    created_at_us: t.created_at_us,
                    id: t.id,
                })
            } else {
                None
            };
            Ok((tasks, next))
        })
        .await
    }

    /// How many tasks are in `state` (benchmarks and operators; a full count).
    pub async fn count_in_state(&self, state: TaskState) -> Result<u64, Error> {
        self.deadline(async {
            let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM tasks WHERE state = $1")
                .bind(state as i64)
                .fetch_one(&self.pool)
                .await?;
            Ok(n as u64)
        })
        .await
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

/// The `INSERT INTO tasks` of a batch; `$1..` are its rows' 11 values each.
fn insert_tasks_sql(rows: usize) -> String {
    format!(
        "INSERT INTO tasks (id, kind, state, caller, idempotency_key, input, labels, \
         max_attempts, timeout_ms, created_at_us, updated_at_us) VALUES {} \
         ON CONFLICT (caller, idempotency_key) DO NOTHING RETURNING id",
        placeholders(rows, 11)
    )
}

/// Binds the values [`insert_tasks_sql`] expects.
fn bind_tasks<'q, O>(
    mut q: sqlx::query::QueryScalar<'q, sqlx::Any, O, sqlx::any::AnyArguments>,
    rows: &[&(NewTask, OutboxEntry)],
) -> Result<sqlx::query::QueryScalar<'q, sqlx::Any, O, sqlx::any::AnyArguments>, Error> {
    for &(t, _) in rows {
        let labels = serde_json::to_string(&t.labels.clone().into_map())
            .map_err(|e| Error::Corrupt(e.to_string()))?;
        q = q
            .bind(t.id.to_string())
            .bind(t.kind.as_str().to_string())
            .bind(TaskState::Queued as i64)
            .bind(t.caller.as_str().to_string())
            .bind(t.idempotency_key.as_ref().map(|k| k.as_str().to_string()))
            .bind(t.input.clone())
            .bind(labels)
            .bind(i64::from(t.max_attempts))
            .bind(t.timeout.map(|d| d.as_millis() as i64))
            .bind(t.created_at_us)
            .bind(t.created_at_us);
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
    let mut sql = format!(
        "WITH t AS ({}), \
         o AS (INSERT INTO outbox (task_id, subject, payload, lease_until_us) \
           SELECT v.column1, v.column2, v.column3, v.column4 FROM (VALUES {}) AS v \
           JOIN t ON t.id = v.column1)",
        insert_tasks_sql(n),
        placeholders_from(n * 11, n, 4)
    );
    if !labels.is_empty() {
        sql += &format!(
            ", l AS (INSERT INTO task_labels (task_id, key, value) \
               SELECT v.column1, v.column2, v.column3 FROM (VALUES {}) AS v \
               JOIN t ON t.id = v.column1)",
            placeholders_from(n * 15, labels.len(), 3)
        );
    }
    sql.push_str(" SELECT id FROM t");
    // Safe: only fixed SQL and `$n` placeholders.
    let mut q = bind_tasks(
        sqlx::query_scalar::<_, String>(sqlx::AssertSqlSafe(sql)),
        rows,
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
        let sql = insert_tasks_sql(chunk.len());
        // Safe: only fixed SQL and `$n` placeholders.
        let q = bind_tasks(
            sqlx::query_scalar::<_, String>(sqlx::AssertSqlSafe(sql)),
            chunk,
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

/// Rows per multi-row INSERT: 11 parameters a row stays far below SQLite's limit.
const INSERT_CHUNK: usize = 500;
/// Tasks per PostgreSQL statement: with 15 values a task and up to 32 labels of 3, a
/// chunk stays under the protocol's 65,535 parameters.
const PG_INSERT_CHUNK: usize = 250;

/// A bind parameter of a query built at run time.
enum Arg {
    Int(i64),
    Text(String),
}

/// Adds a bind parameter and returns its placeholder (`$1`, `$2`, ...).
fn param(args: &mut Vec<Arg>, a: Arg) -> String {
    args.push(a);
    format!("${}", args.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_token_round_trips_and_rejects_garbage() {
        let t = PageToken {
            created_at_us: 1_732_500_000_000_000,
            id: TaskId::new(),
        };
        assert_eq!(PageToken::decode(&t.encode()), Ok(t));
        for bad in ["x", "zz", "616263", &"00".repeat(200)] {
            assert!(PageToken::decode(bad).is_err(), "{bad:?}");
        }
    }
}
