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
    domain::{TaskId, TaskKind},
    pb::v1::Progress,
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
        self.send(Update {
            progress: Some(Progress {
                fraction,
                message: message.into(),
            }),
            ..Update::running()
        })
        .await
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
