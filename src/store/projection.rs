//! The projection of task events (TASKWIRE_EVENTS) onto task rows.
//!
//! An event applies to its task's row only if it is newer than the last one applied
//! (`seq > last_seq`), so a replay or a redelivery changes nothing. The recorder
//! applies events in batches; a batch is written with one UPDATE per 500 tasks, not one
//! per event, because a statement per event made the recorder a chain of database round
//! trips (docs/benchmarks.md). Two steps make that exact:
//! - A task's events in one batch are folded, in seq order, into one [`Change`] that
//!   sets the row as applying them one by one would.
//! - The folded change is guarded by the batch's *oldest* seq for the task. If the row
//!   has already seen any of them (a replay, or an old redelivery next to newer events),
//!   the fold does not apply and the events are applied one by one, each with its own
//!   guard.
//!
//! Several recorders may apply one task's events out of order (each takes what the
//! shared consumer hands it). Every column but one is the newest event's, so skipping
//! an older event is right; the start time is the *first* RUNNING's, so an older
//! RUNNING still lowers it (within the row's run).
//!
//! A retried task (RetryTask) starts a new run with a QUEUED event carrying `run`: the
//! row's output, error, progress, start and end are reset by it, as if new.

use std::collections::{BTreeMap, HashSet};

use super::{Error, Store, placeholders};
use crate::{
    domain::TaskId,
    json,
    pb::v1::{Progress, TaskError, TaskState},
};

/// The change one event makes to a task's record (the projection of an event).
#[derive(Debug, Clone, PartialEq)]
pub struct EventUpdate {
    /// The event's seq: applied only if above the record's last_seq.
    pub seq: u64,
    /// When the event happened.
    pub time_us: i64,
    /// The task's state after it.
    pub state: TaskState,
    /// The attempt it belongs to.
    pub attempt: u32,
    /// New progress, if it reports some.
    pub progress: Option<Progress>,
    /// JSON text.
    pub output: Option<String>,
    /// The error, if the attempt or the task failed.
    pub error: Option<TaskError>,
    /// Set (2, 3, ...) on the event that starts a new run (RetryTask); 0 otherwise.
    pub run: u32,
}

impl EventUpdate {
    /// The projection of an event stored at `seq` in TASKWIRE_EVENTS.
    pub fn from_event(
        seq: u64,
        ev: &crate::pb::internal::v1::Event,
    ) -> Result<Self, json::NotJson> {
        let output = match &ev.output {
            Some(v) => Some(json::value_to_json(Some(v))?.to_string()),
            None => None,
        };
        Ok(Self {
            seq,
            time_us: ev
                .time
                .as_ref()
                .map_or_else(json::now_micros, json::timestamp_to_micros),
            state: TaskState::try_from(ev.state).unwrap_or(TaskState::Unspecified),
            attempt: ev.attempt,
            progress: ev.progress.clone(),
            output,
            error: ev.error.clone(),
            run: ev.run,
        })
    }
}

/// What one or more consecutive events of a task do to its row, as one UPDATE.
#[derive(Debug, Clone, PartialEq)]
struct Change {
    /// Applies only if the row's last_seq is below this (the oldest folded seq).
    guard_seq: u64,
    /// The newest folded seq: the row's last_seq afterwards.
    seq: u64,
    /// How many events this change stands for.
    events: usize,
    time_us: i64,
    state: TaskState,
    attempt: u32,
    progress: Option<Progress>,
    output: Option<String>,
    /// Clear the error columns before setting `error` (a success clears an earlier
    /// attempt's error: `error` describes the last attempt or the task's failure).
    clear_error: bool,
    error: Option<TaskError>,
    started_at_us: Option<i64>,
    finished_at_us: Option<i64>,
    /// The newest run started by a folded event (0: none), and that event's seq. A
    /// new run resets the row's output, error, progress, start and end first.
    run: u32,
    run_seq: u64,
}

impl Change {
    fn of(ev: &EventUpdate) -> Self {
        let mut c = Self {
            guard_seq: ev.seq,
            seq: ev.seq,
            events: 0,
            time_us: ev.time_us,
            state: ev.state,
            attempt: ev.attempt,
            progress: None,
            output: None,
            clear_error: false,
            error: None,
            started_at_us: None,
            finished_at_us: None,
            run: 0,
            run_seq: 0,
        };
        c.then(ev);
        c
    }

    /// Folds in the next event (a higher seq), as applying it after this would.
    fn then(&mut self, ev: &EventUpdate) {
        if ev.run > self.run {
            // A new run: what the earlier events of this fold set is the old run's.
            self.run = ev.run;
            self.run_seq = ev.seq;
            self.progress = Some(Progress::default());
            self.output = None;
            self.clear_error = true;
            self.error = None;
            self.started_at_us = None;
            self.finished_at_us = None;
        }
        self.seq = ev.seq;
        self.events += 1;
        self.time_us = ev.time_us;
        self.state = ev.state;
        self.attempt = ev.attempt;
        if ev.progress.is_some() {
            self.progress = ev.progress.clone();
        }
        if ev.output.is_some() {
            self.output = ev.output.clone();
        }
        if ev.state == TaskState::Succeeded {
            self.clear_error = true;
            self.error = None;
        } else if ev.error.is_some() {
            self.error = ev.error.clone();
        }
        if ev.state == TaskState::Running {
            self.started_at_us.get_or_insert(ev.time_us);
        }
        if ev.state.is_terminal() {
            self.finished_at_us.get_or_insert(ev.time_us);
        }
    }
}

impl super::TaskRecord {
    /// Applies one event to this record in memory exactly as [`Store::apply_event`]
    /// does to the row (nothing if `ev.seq <= last_seq`); returns whether it applied.
    /// Reads use it to show a record as of its task's newest event when the row trails
    /// the event stream.
    pub fn fold(&mut self, ev: &EventUpdate) -> bool {
        if ev.seq <= self.last_seq {
            return false;
        }
        let c = Change::of(ev);
        if c.run > self.run {
            self.run = c.run;
            self.run_seq = c.run_seq;
            self.output = None;
            self.started_at_us = None;
            self.finished_at_us = None;
        }
        self.state = c.state;
        self.attempt = c.attempt;
        if let Some(p) = c.progress {
            self.progress_fraction = p.fraction;
            self.progress_message = p.message;
        }
        if c.output.is_some() {
            self.output = c.output;
        }
        // A success clears an earlier attempt's error (`c.error` is then None).
        if c.clear_error || c.error.is_some() {
            self.error = c.error;
        }
        self.started_at_us = self.started_at_us.or(c.started_at_us);
        self.finished_at_us = self.finished_at_us.or(c.finished_at_us);
        self.updated_at_us = c.time_us;
        self.last_seq = c.seq;
        true
    }
}

/// Tasks per UPDATE: 18 parameters a row stays far below SQLite's limit.
const CHUNK: usize = 500;

impl Store {
    /// Applies one event to a task's record, if it is newer than the last applied
    /// (seq > last_seq): replaying an event changes nothing. Returns whether it applied.
    pub async fn apply_event(&self, id: TaskId, ev: &EventUpdate) -> Result<bool, Error> {
        Ok(self.apply_events(&[(id, ev.clone())]).await? == 1)
    }

    /// Applies a batch of events in one transaction (one commit for many events: the
    /// recorder's group commit), as applying them one by one in seq order would.
    /// Returns how many applied.
    #[tracing::instrument(skip_all, fields(events = events.len()), err)]
    pub async fn apply_events(&self, events: &[(TaskId, EventUpdate)]) -> Result<usize, Error> {
        // Each task's events in seq order; a seq seen twice in one batch is one event.
        let mut by_task: BTreeMap<TaskId, BTreeMap<u64, &EventUpdate>> = BTreeMap::new();
        for (id, ev) in events {
            by_task.entry(*id).or_default().insert(ev.seq, ev);
        }
        let folded: Vec<(TaskId, Change)> = by_task
            .iter()
            .map(|(id, evs)| {
                let mut evs = evs.values();
                let mut c = Change::of(evs.next().expect("a task has events"));
                evs.for_each(|ev| c.then(ev));
                (*id, c)
            })
            .collect();
        self.deadline(async {
            let mut tx = self.pool.begin().await?;
            let mut applied = 0;
            let mut done = HashSet::new();
            for chunk in folded.chunks(CHUNK) {
                let ids = update(&mut tx, chunk).await?;
                for (id, c) in chunk {
                    if ids.contains(id) {
                        applied += c.events;
                        done.insert(*id);
                    }
                }
            }
            // The row had seen some of the task's events already: one by one.
            for (id, evs) in &by_task {
                if evs.len() > 1 && !done.contains(id) {
                    for ev in evs.values() {
                        applied += update(&mut tx, &[(*id, Change::of(ev))]).await?.len();
                    }
                }
            }
            // A RUNNING event older than the row can still be news: with several
            // recorders a task's events may be applied out of order, and the start
            // time is the first RUNNING's, whichever arrives last; but only within
            // the row's run (an event after the event that started it).
            for (id, evs) in &by_task {
                let first_run = evs
                    .values()
                    .filter(|ev| ev.state == TaskState::Running)
                    .min_by_key(|ev| ev.time_us);
                if let Some(ev) = first_run
                    && !done.contains(id)
                {
                    sqlx::query(
                        "UPDATE tasks SET started_at_us = $1 WHERE id = $2 \
                         AND (started_at_us IS NULL OR started_at_us > $1) AND run_seq < $3",
                    )
                    .bind(ev.time_us)
                    .bind(id.to_string())
                    .bind(ev.seq as i64)
                    .execute(&mut *tx)
                    .await?;
                }
            }
            tx.commit().await?;
            Ok(applied)
        })
        .await
    }
}

/// One UPDATE for many tasks' changes; returns the ids of the rows it changed.
async fn update(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    changes: &[(TaskId, Change)],
) -> Result<HashSet<TaskId>, Error> {
    // VALUES columns are named column1, column2, ... in both databases.
    let sql = format!(
        "UPDATE tasks SET state = v.column4, attempt = v.column5, \
         progress_fraction = CASE WHEN v.column6 = 1 THEN v.column7 ELSE progress_fraction END, \
         progress_message = CASE WHEN v.column6 = 1 THEN v.column8 ELSE progress_message END, \
         output = CASE WHEN v.column17 > run THEN v.column9 ELSE COALESCE(v.column9, output) END, \
         error_code = CASE WHEN v.column10 = 1 THEN v.column11 ELSE COALESCE(v.column11, error_code) END, \
         error_message = CASE WHEN v.column10 = 1 THEN v.column12 ELSE COALESCE(v.column12, error_message) END, \
         error_retryable = CASE WHEN v.column10 = 1 THEN v.column13 ELSE COALESCE(v.column13, error_retryable) END, \
         started_at_us = CASE WHEN v.column17 > run THEN v.column14 ELSE COALESCE(started_at_us, v.column14) END, \
         finished_at_us = CASE WHEN v.column17 > run THEN v.column15 ELSE COALESCE(finished_at_us, v.column15) END, \
         run_seq = CASE WHEN v.column17 > run THEN v.column18 ELSE run_seq END, \
         run = CASE WHEN v.column17 > run THEN v.column17 ELSE run END, \
         updated_at_us = v.column16, last_seq = v.column3 \
         FROM (VALUES {}) AS v \
         WHERE tasks.id = v.column1 AND tasks.last_seq < v.column2 RETURNING id",
        placeholders(changes.len(), 18)
    );
    // Safe: only fixed SQL and `$n` placeholders.
    let mut q = sqlx::query_scalar::<_, String>(sqlx::AssertSqlSafe(sql));
    for (id, c) in changes {
        // No Option<f64> bind: sqlx's Any driver declares a NULL double as float4 on
        // PostgreSQL, which poisons the cached statement. A flag picks instead.
        let (has_progress, fraction, message) = match &c.progress {
            Some(p) => (1_i64, p.fraction, p.message.clone()),
            None => (0, 0.0, String::new()),
        };
        let (code, emsg, retryable) = match &c.error {
            Some(e) => (
                Some(e.code.clone()),
                Some(e.message.clone()),
                Some(i64::from(e.retryable)),
            ),
            None => (None, None, None),
        };
        q = q
            .bind(id.to_string())
            .bind(c.guard_seq as i64)
            .bind(c.seq as i64)
            .bind(c.state as i64)
            .bind(i64::from(c.attempt))
            .bind(has_progress)
            .bind(fraction)
            .bind(message)
            .bind(c.output.clone())
            .bind(i64::from(c.clear_error))
            .bind(code)
            .bind(emsg)
            .bind(retryable)
            .bind(c.started_at_us)
            .bind(c.finished_at_us)
            .bind(c.time_us)
            .bind(i64::from(c.run))
            .bind(c.run_seq as i64);
    }
    q.fetch_all(&mut **tx)
        .await?
        .iter()
        .map(|s| super::stored_id(s))
        .collect()
}
