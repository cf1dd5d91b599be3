//! The api's errors and their one mapping to gRPC status codes (ARCHITECTURE.md,
//! "Error codes"). The match is exhaustive with no `_` arm, so a new error variant
//! cannot reach a client without someone choosing its code. Messages never carry
//! internals; those are logged.

use taskwire::{
    domain::{InvalidInput, TaskId},
    nats, store,
};
use tonic::Status;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error(transparent)]
    Invalid(#[from] InvalidInput),
    #[error("task {0} not found")]
    NotFound(TaskId),
    /// Cancelling a task that already SUCCEEDED or FAILED.
    #[error("task {id} already {state}; only queued or running tasks can be cancelled")]
    AlreadyFinished { id: TaskId, state: &'static str },
    #[error(transparent)]
    Store(#[from] store::Error),
    #[error(transparent)]
    Nats(#[from] nats::Error),
}

impl From<ApiError> for Status {
    fn from(e: ApiError) -> Self {
        let unavailable = |detail: &dyn std::fmt::Display, what: &str| {
            tracing::warn!(error = %detail, "{what} unavailable");
            Status::unavailable(format!(
                "{what} is unavailable; retry (with the same idempotency key for SubmitTask)"
            ))
        };
        let internal = |detail: &dyn std::fmt::Display| {
            tracing::error!(error = %detail, "internal error");
            Status::internal("internal error; it has been logged")
        };
        match e {
            ApiError::Invalid(ref i) => match i {
                InvalidInput::Malformed { .. } => Status::invalid_argument(e.to_string()),
                InvalidInput::TooLarge { .. } => Status::resource_exhausted(e.to_string()),
            },
            ApiError::NotFound(_) => Status::not_found(e.to_string()),
            ApiError::AlreadyFinished { .. } => Status::failed_precondition(e.to_string()),
            ApiError::Store(ref s) => match s {
                store::Error::Unavailable(_) => unavailable(&e, "the database"),
                store::Error::Query(_)
                | store::Error::Batch(_)
                | store::Error::Corrupt(_)
                | store::Error::Migrate(_)
                | store::Error::Config(_) => internal(&e),
            },
            ApiError::Nats(ref n) => match n {
                nats::Error::Unavailable(_) | nats::Error::Other(_) => unavailable(&e, "NATS"),
                // A cancel kept losing the race against a busy task's events.
                nats::Error::Conflict => unavailable(&e, "the task (busy)"),
                nats::Error::BadMessage(_) => internal(&e),
            },
        }
    }
}
