//! Reading tasks: the record of one, and pages of many (keyset pagination).

use sqlx::{Row, any::AnyRow};

use super::{Error, Store};
use crate::{
    auth::Tenant,
    domain::{InvalidInput, Labels, TaskId, TaskKind},
    json,
    pb::v1::{Progress, Task, TaskError, TaskState},
};

/// A task row as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskRecord {
    /// The task's id.
    pub id: TaskId,
    /// Its kind.
    pub kind: String,
    /// Its state, as of its last applied event.
    pub state: TaskState,
    /// Its input, as JSON text.
    pub input: String,
    /// Its labels, as a JSON object.
    pub labels: String,
    /// Attempts before it fails.
    pub max_attempts: u32,
    /// Per-attempt timeout, if set.
    pub timeout_ms: Option<i64>,
    /// The current (or last) attempt's number; 0 before the first.
    pub attempt: u32,
    /// Progress, 0..=1.
    pub progress_fraction: f64,
    /// Progress message.
    pub progress_message: String,
    /// Output, as JSON text, once it succeeded.
    pub output: Option<String>,
    /// The last attempt's error, or the task's.
    pub error: Option<TaskError>,
    /// When it was submitted (microseconds since the epoch).
    pub created_at_us: i64,
    /// When it first ran.
    pub started_at_us: Option<i64>,
    /// When it ended.
    pub finished_at_us: Option<i64>,
    /// When its record last changed.
    pub updated_at_us: i64,
    /// The seq of the newest event applied.
    pub last_seq: u64,
    /// The tenant it belongs to.
    pub tenant: Tenant,
    /// When a delayed task is due (`None`: enqueued at once).
    pub run_at_us: Option<i64>,
    /// The run it is in (1, or N after N-1 retries).
    pub run: u32,
    /// The seq of the event that started that run (0 for the first).
    pub run_seq: u64,
    /// The task whose child it is.
    pub parent_id: Option<TaskId>,
    /// For a child: what its failure does to the parent (`ChildFailurePolicy`).
    pub child_failure: i32,
    /// What cancelling it does to its children (`CancelPolicy`).
    pub cancel_policy: i32,
    /// Whether it has (had) children.
    pub has_children: bool,
    /// The seq of the WAITING event whose children were created (0: none).
    pub spawned_seq: u64,
    /// The seq of the WAITING event whose fan-in (or failure) was sent (0: none).
    pub fan_in_seq: u64,
    /// Its own progress when its step ended and its children started.
    pub spawn_progress: f64,
    /// Its children, counted, when it has some and the read asked
    /// ([`Store::trees`]).
    pub tree: Option<super::Tree>,
}

/// The columns [`TaskRecord::from_row`] reads; a macro so queries stay `&'static str`.
macro_rules! task_columns {
    () => {
        "id, kind, state, input, labels, max_attempts, timeout_ms, attempt, \
         progress_fraction, progress_message, output, error_code, error_message, \
         error_retryable, created_at_us, started_at_us, finished_at_us, updated_at_us, last_seq, \
         tenant, run_at_us, run, run_seq, parent_id, child_failure, cancel_policy, \
         has_children, spawned_seq, fan_in_seq, spawn_progress"
    };
}

impl TaskRecord {
    fn from_row(row: &AnyRow) -> Result<Self, Error> {
        let corrupt = |what: &str| Error::Corrupt(what.to_string());
        let id: String = row.try_get("id")?;
        Ok(Self {
            id: TaskId::parse(&id).map_err(|_| corrupt("task id"))?,
            kind: row.try_get("kind")?,
            state: stored_state(row)?,
            input: row.try_get("input")?,
            labels: row.try_get("labels")?,
            max_attempts: row.try_get::<i64, _>("max_attempts")? as u32,
            timeout_ms: row.try_get("timeout_ms")?,
            attempt: row.try_get::<i64, _>("attempt")? as u32,
            progress_fraction: row.try_get("progress_fraction")?,
            progress_message: row.try_get("progress_message")?,
            output: row.try_get("output")?,
            error: stored_error(row)?,
            created_at_us: row.try_get("created_at_us")?,
            started_at_us: row.try_get("started_at_us")?,
            finished_at_us: row.try_get("finished_at_us")?,
            updated_at_us: row.try_get("updated_at_us")?,
            last_seq: row.try_get::<i64, _>("last_seq")? as u64,
            tenant: Tenant::from_stored(row.try_get("tenant")?),
            run_at_us: row.try_get("run_at_us")?,
            run: row.try_get::<i64, _>("run")? as u32,
            run_seq: row.try_get::<i64, _>("run_seq")? as u64,
            parent_id: row
                .try_get::<Option<String>, _>("parent_id")?
                .map(|p| TaskId::parse(&p).map_err(|_| corrupt("parent id")))
                .transpose()?,
            child_failure: row.try_get::<i64, _>("child_failure")? as i32,
            cancel_policy: row.try_get::<i64, _>("cancel_policy")? as i32,
            has_children: row.try_get::<i64, _>("has_children")? != 0,
            spawned_seq: row.try_get::<i64, _>("spawned_seq")? as u64,
            fan_in_seq: row.try_get::<i64, _>("fan_in_seq")? as u64,
            spawn_progress: row.try_get("spawn_progress")?,
            tree: None,
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
                fraction: self.tree_progress(),
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
            run_at: self.run_at_us.map(json::micros_to_timestamp),
            run: self.run,
            parent_id: self.parent_id.map(|p| p.to_string()).unwrap_or_default(),
            children: self.tree.as_ref().map(|t| t.counts),
            child_failure: self.child_failure,
            cancel_policy: self.cancel_policy,
        }
    }

    /// The message that starts run `run` of this task as submitted (RetryTask; the
    /// graph loop's fan-in adds what it needs). Its queue wait counts from `now_us`.
    pub fn message(
        &self,
        run: u32,
        now_us: i64,
        traceparent: Option<String>,
    ) -> crate::pb::internal::v1::TaskMessage {
        crate::pb::internal::v1::TaskMessage {
            task_id: self.id.to_string(),
            kind: self.kind.clone(),
            input: Some(json::text_to_value(&self.input)),
            max_attempts: self.max_attempts,
            timeout: self.timeout_ms.map(|ms| prost_types::Duration {
                seconds: ms / 1000,
                nanos: ((ms % 1000) * 1_000_000) as i32,
            }),
            labels: serde_json::from_str(&self.labels).unwrap_or_default(),
            created_at: Some(json::micros_to_timestamp(now_us)),
            traceparent: traceparent.unwrap_or_default(),
            run_at: None,
            run,
            parent_id: self.parent_id.map(|p| p.to_string()).unwrap_or_default(),
            fan_in: None,
            child_failure: self.child_failure,
            cancel_policy: self.cancel_policy,
        }
    }

    /// The task's progress; for a parent whose step started children, its tree's:
    /// its own step up to where it ended (`p0`), then its children's share
    /// (90 % of the rest, each child weighing the same, a terminal one
    /// counting fully), then its fan-in's. Each phase starts where the one before could
    /// end, so it never goes backwards while each child's own progress does not.
    pub fn tree_progress(&self) -> f64 {
        let Some(tree) = self.tree.as_ref().filter(|t| t.counts.total > 0) else {
            return self.progress_fraction;
        };
        if self.spawned_seq == 0 {
            // Children a client added to a task whose own step has not ended.
            return self.progress_fraction;
        }
        if self.state == TaskState::Succeeded {
            return 1.0;
        }
        let p0 = self.spawn_progress.clamp(0.0, 1.0);
        let rest = 1.0 - p0;
        let children = (tree.done / f64::from(tree.counts.total)).clamp(0.0, 1.0);
        if self.fan_in_seq == 0 || self.state == TaskState::Waiting {
            p0 + rest * CHILDREN_SHARE * children
        } else {
            let own = self.progress_fraction.clamp(0.0, 1.0);
            p0 + rest * (CHILDREN_SHARE + (1.0 - CHILDREN_SHARE) * own)
        }
    }
}

/// The share of a parent's progress after its own step that its children make up;
/// the fan-in step makes up the rest.
const CHILDREN_SHARE: f64 = 0.9;

/// A row's `state` column.
pub(super) fn stored_state(row: &AnyRow) -> Result<TaskState, Error> {
    state_of(row.try_get("state")?).ok_or_else(|| Error::Corrupt("task state".into()))
}

/// A stored state number as a state, if it is one.
pub(super) fn state_of(raw: i64) -> Option<TaskState> {
    i32::try_from(raw)
        .ok()
        .and_then(|s| TaskState::try_from(s).ok())
}

/// A row's error columns (`error_code`, `error_message`, `error_retryable`).
pub(super) fn stored_error(row: &AnyRow) -> Result<Option<TaskError>, Error> {
    let Some(code) = row.try_get::<Option<String>, _>("error_code")? else {
        return Ok(None);
    };
    Ok(Some(TaskError {
        code,
        message: row
            .try_get::<Option<String>, _>("error_message")?
            .unwrap_or_default(),
        retryable: row
            .try_get::<Option<i64>, _>("error_retryable")?
            .unwrap_or(0)
            != 0,
    }))
}

/// How many tasks of a kind finished one way in one minute.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FinishedCount {
    /// The tasks' kind.
    pub kind: String,
    /// SUCCEEDED (true) or FAILED (false).
    pub succeeded: bool,
    /// Minutes since the epoch.
    pub minute: i64,
    /// How many.
    pub count: u64,
}

/// A ListTasks query, validated.
#[derive(Debug, Clone, Default)]
pub struct ListQuery {
    /// Most tasks on the page.
    pub page_size: u32,
    /// Where the page starts (after this task); `None`: the newest.
    pub after: Option<PageToken>,
    /// Only tasks in this state.
    pub state: Option<TaskState>,
    /// Only tasks of this kind.
    pub kind: Option<TaskKind>,
    /// Only tasks carrying every one of these labels.
    pub labels: Labels,
    /// Only this tenant's tasks (`None`: every tenant's).
    pub tenant: Option<Tenant>,
    /// Only the children of this task.
    pub parent: Option<TaskId>,
}

/// Where the next page starts: the (created_at_us, id) of the last task returned.
/// Keyset pagination: pages never overlap or skip, even while tasks are inserted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageToken {
    /// The last task's submit time.
    pub created_at_us: i64,
    /// The last task's id.
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

    /// Reads a token [`PageToken::encode`] made; anything else is INVALID_ARGUMENT.
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
    /// A task's record, or `None` if there is no such task.
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
            if let Some(tenant) = &q.tenant {
                let p = param(&mut args, Arg::Text(tenant.as_str().to_string()));
                sql += &format!(" AND tenant = {p}");
            }
            if let Some(state) = q.state {
                let p = param(&mut args, Arg::Int(state as i64));
                sql += &format!(" AND state = {p}");
            }
            if let Some(kind) = &q.kind {
                let p = param(&mut args, Arg::Text(kind.as_str().to_string()));
                sql += &format!(" AND kind = {p}");
            }
            if let Some(parent) = &q.parent {
                let p = param(&mut args, Arg::Text(parent.to_string()));
                sql += &format!(" AND parent_id = {p}");
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

    /// Tasks that finished SUCCEEDED or FAILED since `since_us`, counted by kind, state
    /// and minute (`finished_at_us / 60 s`), from the `tasks_by_finished` index.
    pub async fn finished_by_minute(&self, since_us: i64) -> Result<Vec<FinishedCount>, Error> {
        self.deadline(async {
            let rows = sqlx::query(
                "SELECT kind, state, finished_at_us / 60000000 AS minute, COUNT(*) AS n \
                 FROM tasks WHERE finished_at_us >= $1 AND state IN ($2, $3) \
                 GROUP BY kind, state, finished_at_us / 60000000",
            )
            .bind(since_us)
            .bind(TaskState::Succeeded as i64)
            .bind(TaskState::Failed as i64)
            .fetch_all(&self.pool)
            .await?;
            rows.iter()
                .map(|r| {
                    let state: i64 = r.try_get("state")?;
                    Ok(FinishedCount {
                        kind: r.try_get("kind")?,
                        succeeded: state == TaskState::Succeeded as i64,
                        minute: r.try_get("minute")?,
                        count: r.try_get::<i64, _>("n")? as u64,
                    })
                })
                .collect()
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
    use crate::pb::v1::ChildCounts;

    /// A parent record at the given phase: its own progress, its children's (each
    /// child's fraction; terminal ones count 1), and whether its fan-in was sent.
    fn parent(
        state: TaskState,
        own: f64,
        children: &[(TaskState, f64)],
        fan_in: bool,
    ) -> TaskRecord {
        let mut counts = ChildCounts::default();
        let mut done = 0.0;
        for (s, f) in children {
            counts.total += 1;
            match s {
                TaskState::Succeeded => counts.succeeded += 1,
                TaskState::Failed => counts.failed += 1,
                TaskState::Cancelled => counts.cancelled += 1,
                _ => counts.active += 1,
            }
            done += if s.is_terminal() { 1.0 } else { *f };
        }
        TaskRecord {
            id: TaskId::new(),
            kind: "k".into(),
            state,
            input: "null".into(),
            labels: "{}".into(),
            max_attempts: 3,
            timeout_ms: None,
            attempt: 1,
            progress_fraction: own,
            progress_message: String::new(),
            output: None,
            error: None,
            created_at_us: 0,
            started_at_us: None,
            finished_at_us: None,
            updated_at_us: 0,
            last_seq: 10,
            tenant: Tenant::none(),
            run_at_us: None,
            run: 1,
            run_seq: 0,
            parent_id: None,
            child_failure: 0,
            cancel_policy: 0,
            has_children: true,
            spawned_seq: 10,
            fan_in_seq: if fan_in { 10 } else { 0 },
            spawn_progress: 0.2,
            tree: Some(super::super::Tree { counts, done }),
        }
    }

    #[test]
    fn a_trees_progress_moves_through_its_phases_and_never_back() {
        use TaskState::*;
        let steps = [
            // Waiting: the step's 0.2, then the children's 90 % of the rest.
            parent(Waiting, 0.2, &[(Queued, 0.0), (Queued, 0.0)], false),
            parent(Waiting, 0.2, &[(Running, 0.5), (Queued, 0.0)], false),
            parent(Waiting, 0.2, &[(Succeeded, 1.0), (Running, 0.5)], false),
            parent(Waiting, 0.2, &[(Succeeded, 1.0), (Failed, 0.3)], false),
            // The fan-in sent but not yet running: still the children's end.
            parent(Waiting, 0.2, &[(Succeeded, 1.0), (Failed, 0.3)], true),
            // The fan-in runs from 0 (its claim resets the own progress) to its end.
            parent(Running, 0.0, &[(Succeeded, 1.0), (Failed, 0.3)], true),
            parent(Running, 0.5, &[(Succeeded, 1.0), (Failed, 0.3)], true),
            parent(Succeeded, 1.0, &[(Succeeded, 1.0), (Failed, 0.3)], true),
        ];
        let seen: Vec<f64> = steps.iter().map(TaskRecord::tree_progress).collect();
        assert!(seen.windows(2).all(|w| w[1] >= w[0]), "{seen:?}");
        assert!((seen[0] - 0.2).abs() < 1e-9, "{seen:?}");
        assert!(
            (seen[1] - (0.2 + 0.8 * 0.9 * 0.25)).abs() < 1e-9,
            "{seen:?}"
        );
        assert!((seen[3] - (0.2 + 0.8 * 0.9)).abs() < 1e-9, "{seen:?}");
        assert!((seen[6] - (0.2 + 0.8 * 0.95)).abs() < 1e-9, "{seen:?}");
        assert_eq!(seen[7], 1.0);
        // A task without children shows its own progress.
        let mut plain = parent(Running, 0.4, &[], false);
        plain.tree = None;
        assert_eq!(plain.tree_progress(), 0.4);
    }

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
