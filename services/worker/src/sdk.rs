//! The worker SDK: what a handler author sees. Register an async function per task
//! kind; it gets a [`TaskContext`] and returns the task's output or a [`TaskFailure`].
//!
//! ```no_run
//! use taskwire_worker::{Registry, TaskContext, TaskFailure};
//!
//! let mut kinds = Registry::new();
//! kinds.register("report.build", |ctx: TaskContext| async move {
//!     let pages = ctx.input()["pages"].as_u64().ok_or_else(|| TaskFailure::fatal("pages?"))?;
//!     for page in 1..=pages {
//!         ctx.progress(page as f64 / pages as f64, format!("page {page}")).await?;
//!     }
//!     Ok(serde_json::json!({ "pages": pages }))
//! });
//! ```

use std::{
    collections::{BTreeMap, HashMap},
    fmt,
    future::Future,
    pin::Pin,
    sync::Arc,
};

use taskwire::{
    domain::{Labels, TaskId, TaskKind},
    json,
    pb::{
        internal::v1::TaskMessage,
        v1::{CancelPolicy, ChildFailurePolicy, Progress, TaskError, TaskState},
    },
};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::events::{EventWriter, Update};

/// What a handler returns: the task's output (any JSON) or why the attempt failed.
pub type HandlerResult = Result<serde_json::Value, TaskFailure>;

pub(crate) type BoxedHandler =
    Arc<dyn Fn(TaskContext) -> Pin<Box<dyn Future<Output = HandlerResult> + Send>> + Send + Sync>;

/// Handlers by task kind.
#[derive(Clone, Default)]
pub struct Registry {
    handlers: HashMap<String, BoxedHandler>,
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registry")
            .field("kinds", &self.kinds())
            .finish()
    }
}

impl Registry {
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers the handler of `kind`, replacing any earlier one.
    ///
    /// # Panics
    /// If `kind` is not a valid kind (`[a-z0-9][a-z0-9._-]{0,127}`): a programming
    /// error, caught the first time the worker starts.
    pub fn register<F, Fut>(&mut self, kind: &str, handler: F) -> &mut Self
    where
        F: Fn(TaskContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = HandlerResult> + Send + 'static,
    {
        let kind = TaskKind::parse(kind).unwrap_or_else(|e| panic!("invalid task kind: {e}"));
        self.handlers.insert(
            kind.to_string(),
            Arc::new(move |ctx| Box::pin(handler(ctx))),
        );
        self
    }

    /// The kinds with a handler, sorted.
    pub fn kinds(&self) -> Vec<String> {
        let mut k: Vec<String> = self.handlers.keys().cloned().collect();
        k.sort();
        k
    }

    pub(crate) fn get(&self, kind: &str) -> Option<BoxedHandler> {
        self.handlers.get(kind).cloned()
    }
}

/// Why an attempt failed. Retryable failures are tried again after a backoff while
/// attempts remain; fatal ones end the task FAILED at once.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct TaskFailure {
    pub code: String,
    pub message: String,
    pub retryable: bool,
}

impl TaskFailure {
    /// A failure another attempt may not have (code `HANDLER_ERROR`).
    pub fn retryable(message: impl Into<String>) -> Self {
        Self {
            code: "HANDLER_ERROR".into(),
            message: message.into(),
            retryable: true,
        }
    }

    /// A failure no retry can fix, e.g. bad input (code `HANDLER_ERROR`).
    pub fn fatal(message: impl Into<String>) -> Self {
        Self {
            retryable: false,
            ..Self::retryable(message)
        }
    }

    /// Sets a machine-readable code, e.g. `BAD_INPUT`.
    pub fn with_code(mut self, code: impl Into<String>) -> Self {
        self.code = code.into();
        self
    }
}

/// The attempt was stopped: the task was cancelled, or it now belongs to another
/// worker. A handler should return; `?` turns this into a failure the runtime ignores.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the attempt was stopped (cancelled or taken over)")]
pub struct Stopped;

impl From<Stopped> for TaskFailure {
    fn from(_: Stopped) -> Self {
        TaskFailure::retryable("stopped").with_code("STOPPED")
    }
}

/// What a handler knows about its task and attempt, and how it reports back.
#[derive(Debug, Clone)]
pub struct TaskContext {
    pub(crate) inner: Arc<Attempt>,
}

/// A child task to start from a handler ([`TaskContext::spawn`]).
#[derive(Debug, Clone)]
pub struct ChildSpec {
    kind: String,
    input: serde_json::Value,
    labels: BTreeMap<String, String>,
    max_attempts: u32,
    timeout: Option<std::time::Duration>,
    on_failure: ChildFailurePolicy,
    cancel_policy: CancelPolicy,
}

impl ChildSpec {
    /// A child of `kind` with `input`; it fails its parent if it fails, has the
    /// parent's max_attempts, and the worker's default timeout.
    pub fn new(kind: &str, input: serde_json::Value) -> Self {
        Self {
            kind: kind.to_string(),
            input,
            labels: BTreeMap::new(),
            max_attempts: 0,
            timeout: None,
            on_failure: ChildFailurePolicy::FailParent,
            cancel_policy: CancelPolicy::Cascade,
        }
    }

    /// What its failure does to the parent.
    pub fn on_failure(mut self, policy: ChildFailurePolicy) -> Self {
        self.on_failure = policy;
        self
    }

    /// What cancelling it does to its own children.
    pub fn cancel_policy(mut self, policy: CancelPolicy) -> Self {
        self.cancel_policy = policy;
        self
    }

    /// Adds a label (rules as SubmitTask's).
    pub fn label(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.labels.insert(key.into(), value.into());
        self
    }

    /// Its attempts (1 to 100; 0: the parent's).
    pub fn max_attempts(mut self, n: u32) -> Self {
        self.max_attempts = n;
        self
    }

    /// Its per-attempt timeout.
    pub fn timeout(mut self, timeout: std::time::Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }
}

/// How a child ended, as its parent's fan-in step sees it ([`TaskContext::children`]).
#[derive(Debug, Clone, PartialEq)]
pub struct ChildResult {
    pub task_id: TaskId,
    pub kind: String,
    /// SUCCEEDED, FAILED or CANCELLED.
    pub state: TaskState,
    /// Its output, if it succeeded.
    pub output: Option<serde_json::Value>,
    /// Why it failed, if it did.
    pub error: Option<TaskError>,
}

/// Most children one step may start: their messages travel in one event.
pub const MAX_CHILDREN: usize = 1000;

/// What a fan-in step receives.
#[derive(Debug, Clone, Default)]
pub(crate) struct FanInput {
    pub children: Vec<ChildResult>,
    pub step_output: Option<serde_json::Value>,
}

impl FanInput {
    pub(crate) fn of(m: &taskwire::pb::internal::v1::FanIn) -> Self {
        Self {
            children: m
                .children
                .iter()
                .filter_map(|c| {
                    Some(ChildResult {
                        task_id: TaskId::parse(&c.task_id).ok()?,
                        kind: c.kind.clone(),
                        state: TaskState::try_from(c.state).unwrap_or_default(),
                        output: c
                            .output
                            .as_ref()
                            .and_then(|v| json::value_to_json(Some(v)).ok()),
                        error: c.error.clone(),
                    })
                })
                .collect(),
            step_output: m
                .step_output
                .as_ref()
                .and_then(|v| json::value_to_json(Some(v)).ok()),
        }
    }
}

/// What a step started: its children and the kind of its fan-in.
#[derive(Debug, Default)]
pub(crate) struct Spawned {
    pub children: Vec<TaskMessage>,
    pub fan_in_kind: String,
    /// The step's own progress as last reported (where its tree's share starts).
    pub progress: f64,
}

#[derive(Debug)]
pub(crate) struct Attempt {
    pub task_id: TaskId,
    pub kind: String,
    pub input: serde_json::Value,
    pub labels: BTreeMap<String, String>,
    pub attempt: u32,
    pub max_attempts: u32,
    pub deadline: Instant,
    /// Fires on cancel, on losing the task, on the attempt's deadline, and when a
    /// shutdown's grace period ends.
    pub stop: CancellationToken,
    pub events: Arc<EventWriter>,
    /// Set in a parent's fan-in step.
    pub fan_in: Option<FanInput>,
    /// What the step started.
    pub spawned: std::sync::Mutex<Spawned>,
    /// The parent's trace context, handed to its children.
    pub traceparent: String,
}

impl TaskContext {
    pub fn task_id(&self) -> TaskId {
        self.inner.task_id
    }

    pub fn kind(&self) -> &str {
        &self.inner.kind
    }

    /// The task's input, as submitted.
    pub fn input(&self) -> &serde_json::Value {
        &self.inner.input
    }

    pub fn labels(&self) -> &BTreeMap<String, String> {
        &self.inner.labels
    }

    /// This attempt's number, from 1.
    pub fn attempt(&self) -> u32 {
        self.inner.attempt
    }

    pub fn max_attempts(&self) -> u32 {
        self.inner.max_attempts
    }

    /// When this attempt times out; the runtime stops the handler then.
    pub fn deadline(&self) -> Instant {
        self.inner.deadline
    }

    /// Whether the attempt should stop (cancelled, taken over, timed out, shutting down).
    pub fn is_cancelled(&self) -> bool {
        self.inner.stop.is_cancelled()
    }

    /// Resolves when the attempt should stop; `select!` on it around long waits.
    pub async fn cancelled(&self) {
        self.inner.stop.cancelled().await
    }

    /// Reports progress (fraction 0..=1, clamped) with a short message. Returns
    /// [`Stopped`] if the task was cancelled or taken over meanwhile.
    pub async fn progress(&self, fraction: f64, message: impl Into<String>) -> Result<(), Stopped> {
        let fraction = if fraction.is_finite() {
            fraction.clamp(0.0, 1.0)
        } else {
            0.0
        };
        self.inner.spawned.lock().expect("not poisoned").progress = fraction;
        self.send(Update {
            progress: Some(Progress {
                fraction,
                message: message.into(),
            }),
            ..Update::running()
        })
        .await
    }

    /// Starts a child task once this step ends well: the children a step spawns are
    /// created (all of them, atomically) when its handler returns `Ok`; the task then
    /// WAITS for them, and runs its fan-in step (this kind, or the one named with
    /// [`TaskContext::fan_in_as`]) with their results once they are all terminal. A
    /// step that fails starts none. Returns the child's id. The tree's progress goes
    /// on from this step's last reported progress: a step that starts children should
    /// report only its own share of the whole (planning as 0.1, say), not 1.
    pub fn spawn(&self, child: ChildSpec) -> Result<TaskId, TaskFailure> {
        let bad = |why: String| TaskFailure::fatal(why).with_code("BAD_CHILD");
        let kind = TaskKind::parse(&child.kind).map_err(|e| bad(e.to_string()))?;
        let labels = Labels::parse(&child.labels).map_err(|e| bad(e.to_string()))?;
        if child.max_attempts > 100 {
            return Err(bad("a child's max_attempts is at most 100".into()));
        }
        if child
            .timeout
            .is_some_and(|t| t.is_zero() || t > taskwire::domain::MAX_TIMEOUT)
        {
            return Err(bad("a child's timeout is positive and at most 24h".into()));
        }
        let mut spawned = self.inner.spawned.lock().expect("not poisoned");
        if spawned.children.len() >= MAX_CHILDREN {
            return Err(bad(format!(
                "a step starts at most {MAX_CHILDREN} children"
            )));
        }
        let id = TaskId::new();
        spawned.children.push(TaskMessage {
            task_id: id.to_string(),
            kind: kind.to_string(),
            input: Some(json::json_to_value(&child.input)),
            max_attempts: match child.max_attempts {
                0 => self.inner.max_attempts,
                n => n,
            },
            timeout: child.timeout.map(|d| prost_types::Duration {
                seconds: d.as_secs() as i64,
                nanos: d.subsec_nanos() as i32,
            }),
            labels: labels.into_map().into_iter().collect(),
            created_at: Some(json::micros_to_timestamp(json::now_micros())),
            traceparent: self.inner.traceparent.clone(),
            run_at: None,
            run: 0,
            parent_id: self.inner.task_id.to_string(),
            fan_in: None,
            child_failure: child.on_failure as i32,
            cancel_policy: child.cancel_policy as i32,
        });
        Ok(id)
    }

    /// Names the kind whose handler runs this task's fan-in step (default: its own).
    pub fn fan_in_as(&self, kind: &str) -> Result<(), TaskFailure> {
        let kind = TaskKind::parse(kind)
            .map_err(|e| TaskFailure::fatal(e.to_string()).with_code("BAD_CHILD"))?;
        self.inner.spawned.lock().expect("not poisoned").fan_in_kind = kind.to_string();
        Ok(())
    }

    /// In a fan-in step: how each child ended, in the order they were started (but
    /// those with the IGNORE policy that did not succeed). `None` in a first step.
    pub fn children(&self) -> Option<&[ChildResult]> {
        self.inner.fan_in.as_ref().map(|f| f.children.as_slice())
    }

    /// In a fan-in step: what the task's first step returned.
    pub fn step_output(&self) -> Option<&serde_json::Value> {
        self.inner.fan_in.as_ref()?.step_output.as_ref()
    }

    /// Writes a log line to the task's event history.
    pub async fn log(&self, line: impl Into<String>) -> Result<(), Stopped> {
        self.send(Update {
            message: line.into(),
            ..Update::running()
        })
        .await
    }

    async fn send(&self, update: Update) -> Result<(), Stopped> {
        if self.is_cancelled() {
            return Err(Stopped);
        }
        self.inner.events.write(update).await.map(|_| ()).map_err(|e| {
            // A rejected or undeliverable event: this attempt can no longer report, so
            // it stops; the task is cancelled, taken over, or redelivered later.
            tracing::warn!(task_id = %self.inner.task_id, error = %taskwire::telemetry::chain(&e), "event not stored; stopping attempt");
            self.inner.stop.cancel();
            Stopped
        })
    }
}
