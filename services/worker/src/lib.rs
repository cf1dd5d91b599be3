//! The taskwire worker: the runtime that runs tasks, and the Rust worker SDK.
//!
//! A user registers handlers by task kind in a [`Registry`] and calls [`run`]; each
//! handler gets a [`TaskContext`] to read its input and attempt, report progress, write
//! log lines and notice cancellation and its deadline. The `taskwire-worker` binary
//! runs the built-in demo kinds ([`kinds::builtin`]).
//!
//! ```no_run
//! use taskwire_worker::{Config, Registry, TaskContext};
//! use clap::Parser;
//!
//! # async fn example() -> Result<(), taskwire_worker::Error> {
//! let mut kinds = Registry::new();
//! kinds.register("greet", |ctx: TaskContext| async move {
//!     ctx.progress(0.5, "thinking").await?;
//!     Ok(serde_json::json!({ "hello": ctx.input()["name"] }))
//! });
//! let shutdown = taskwire::shutdown::on_signal();
//! taskwire_worker::run(Config::parse(), kinds, shutdown).await
//! # }
//! ```
//!
//! # Layout
//! - [`sdk`]: `Registry`, `TaskContext`, `TaskFailure`: the handler author's API.
//! - [`config`]: flags and `TASKWIRE_*` variables.
//! - `runtime`: the [`Worker`]: consumers, slots, the drain on shutdown.
//! - `pull`: pulling one kind's tasks as slots allow.
//! - `attempt`: one delivery: claim, run, and the outcome (retries, dead letters).
//! - `events`: one attempt's appends to its task's history.
//! - `running`: the attempts running here: cancel signals, and "who runs this task?".
//! - [`kinds`]: the built-in demo kinds.
#![forbid(unsafe_code)]

mod attempt;
pub mod config;
mod events;
pub mod kinds;
mod pull;
mod running;
mod runtime;
pub mod sdk;

pub use config::Config;
pub use runtime::{Worker, run};
pub use sdk::{ChildResult, ChildSpec, HandlerResult, Registry, Stopped, TaskContext, TaskFailure};
pub use taskwire::pb::v1::{CancelPolicy, ChildFailurePolicy};
pub use taskwire::service::Error;
