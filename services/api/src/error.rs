//! The api's errors and their one mapping to gRPC status codes (docs/architecture.md,
//! "Error codes"). The match is exhaustive with no `_` arm, so a new error variant
//! cannot reach a client without someone choosing its code. Messages never carry
//! internals; those are logged with their causes.

use taskwire::{
    domain::{InvalidInput, TaskId},
    nats, store,
    telemetry::chain,
};
use tonic::Status;

/// Why a TaskService call failed.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The request is malformed or too large.
    #[error(transparent)]
    Invalid(#[from] InvalidInput),
    /// No task has this id.
    #[error("task {0} not found")]
    NotFound(TaskId),
    /// Cancelling a task that already SUCCEEDED or FAILED.
    #[error("task {id} already {state}; only queued or running tasks can be cancelled")]
    AlreadyFinished {
        /// The task.
        id: TaskId,
        /// How it ended.
        state: &'static str,
    },
    /// Retrying a task that is not FAILED.
    #[error("task {id} is {state}; only failed tasks can be retried")]
    NotRetryable {
        /// The task.
        id: TaskId,
        /// Where it is.
        state: &'static str,
    },
    /// Submitting a child of a task that can no longer take one.
    #[error(
        "task {parent} is {why}; a child can only be added to a task whose own step has not ended"
    )]
    ParentClosed {
        /// The parent.
        parent: TaskId,
        /// Where it is.
        why: &'static str,
    },
    /// The database failed.
    #[error(transparent)]
    Store(#[from] store::Error),
    /// NATS failed.
    #[error(transparent)]
    Nats(#[from] nats::Error),
    /// The api is stopping: its inserter no longer takes submits.
    #[error("the api is shutting down")]
    ShuttingDown,
}

impl From<ApiError> for Status {
    fn from(e: ApiError) -> Self {
        let unavailable = |what: &str| {
            tracing::warn!(error = %chain(&e), "{what} unavailable");
            Status::unavailable(format!(
                "{what} is unavailable; retry (with the same idempotency key for SubmitTask)"
            ))
        };
        let internal = || {
            tracing::error!(error = %chain(&e), "internal error");
            Status::internal("internal error; it has been logged")
        };
        match &e {
            ApiError::Invalid(i) => match i {
                InvalidInput::Malformed { .. } => Status::invalid_argument(e.to_string()),
                InvalidInput::TooLarge { .. } => Status::resource_exhausted(e.to_string()),
            },
            ApiError::NotFound(_) => Status::not_found(e.to_string()),
            ApiError::AlreadyFinished { .. }
            | ApiError::NotRetryable { .. }
            | ApiError::ParentClosed { .. } => Status::failed_precondition(e.to_string()),
            ApiError::Store(s) if s.is_retryable() => unavailable("the database"),
            ApiError::Store(_) => internal(),
            ApiError::Nats(n) => match n {
                nats::Error::Unavailable { .. } | nats::Error::Refused { .. } => {
                    unavailable("NATS")
                }
                // A cancel kept losing the race against a busy task's events.
                nats::Error::Conflict => unavailable("the task (busy)"),
                nats::Error::BadMessage { .. } => internal(),
            },
            ApiError::ShuttingDown => unavailable("this api replica (shutting down)"),
        }
    }
}
