//! The watch service's errors and their one mapping to gRPC status codes. The match is
//! exhaustive with no `_` arm; the same store or NATS error means the same code here
//! as in the api. A status that ends a stream early says where to resume.

use taskwire::{
    domain::{InvalidInput, TaskId},
    nats, store,
    telemetry::chain,
};
use tonic::Status;

/// Why a WatchService call failed or a stream ended early.
#[derive(Debug, thiserror::Error)]
pub(crate) enum WatchError {
    /// The request is malformed.
    #[error(transparent)]
    Invalid(#[from] InvalidInput),
    /// No task has this id.
    #[error("task {0} not found")]
    NotFound(TaskId),
    /// The database failed.
    #[error(transparent)]
    Store(#[from] store::Error),
    /// Reading the event stream failed mid-stream.
    #[error("reading the event stream failed")]
    Events {
        /// Why.
        #[source]
        source: nats::Error,
        /// The last seq the client received.
        resume_after: u64,
    },
    /// The server is stopping; the stream ends so the drain does not wait for clients.
    #[error("the server is shutting down")]
    ShuttingDown {
        /// The last seq a WatchTask client received (WatchTasks has none).
        resume_after: Option<u64>,
    },
    /// A WatchTasks client read slower than the live feed and was dropped.
    #[error("the client fell too far behind the live feed")]
    FellBehind,
}

impl From<WatchError> for Status {
    fn from(e: WatchError) -> Self {
        let resume = |after: Option<u64>| match after {
            Some(seq) => format!("resume with after_seq = {seq}"),
            None => "list again and reconnect".to_string(),
        };
        match &e {
            WatchError::Invalid(_) => Status::invalid_argument(e.to_string()),
            WatchError::NotFound(_) => Status::not_found(e.to_string()),
            WatchError::Store(s) if s.is_retryable() => {
                tracing::warn!(error = %chain(&e), "database unavailable");
                Status::unavailable("the database is unavailable; retry")
            }
            WatchError::Store(_) => {
                tracing::error!(error = %chain(&e), "internal error");
                Status::internal("internal error; it has been logged")
            }
            WatchError::Events {
                source,
                resume_after,
            } => match source {
                nats::Error::Unavailable { .. }
                | nats::Error::Refused { .. }
                | nats::Error::Conflict => {
                    tracing::warn!(error = %chain(&e), "event stream unavailable");
                    Status::unavailable(format!(
                        "the event stream is unavailable; {}",
                        resume(Some(*resume_after))
                    ))
                }
                nats::Error::BadMessage { .. } => {
                    tracing::error!(error = %chain(&e), "internal error");
                    Status::internal("internal error; it has been logged")
                }
            },
            WatchError::ShuttingDown { resume_after } => Status::unavailable(format!(
                "the server is shutting down; {}",
                resume(*resume_after)
            )),
            WatchError::FellBehind => Status::unavailable(format!(
                "fell too far behind the live feed; {}",
                resume(None)
            )),
        }
    }
}
