//! `taskwire`: the command line. A generated-client user like any other, plus `dev`,
//! the whole system in one process.
//!
//! Exit codes, for scripts: 0 the command worked (for `watch` and `submit --watch`:
//! the task SUCCEEDED); 1 the task FAILED; 2 bad usage; 3 the task was CANCELLED;
//! 4 the server refused the request (bad argument, unknown task, finished task);
//! 5 taskwire could not be reached.

mod client;
mod dead_letters;
mod dev;
mod keys;
mod nats_permissions;
mod output;
mod tree;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// taskwire: long-running tasks with live progress.
#[derive(Debug, Parser)]
#[command(name = "taskwire", version)]
struct Cli {
    /// The api's address.
    #[arg(
        long,
        global = true,
        env = "TASKWIRE_ADDR",
        default_value = "http://127.0.0.1:50051"
    )]
    addr: String,

    /// The watch service's address (default: the api's, as in `taskwire dev`).
    #[arg(long, global = true, env = "TASKWIRE_WATCH_ADDR")]
    watch_addr: Option<String>,

    /// API key to call with (a server run with --auth keys needs one).
    #[arg(long, global = true, env = "TASKWIRE_TOKEN", hide_env_values = true)]
    token: Option<String>,

    /// PEM CA certificate that signed an https:// server's certificate (default: the
    /// system's roots).
    #[arg(long, global = true, env = "TASKWIRE_CA")]
    ca: Option<std::path::PathBuf>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Runs the whole system in one process: a nats-server it starts, a SQLite file,
    /// and the api, worker (demo kinds), recorder and watch services on one address.
    Dev(dev::DevArgs),
    /// Submits a task and prints its id (or, with --watch, follows it to the end).
    Submit(client::SubmitArgs),
    /// Prints a task's current record.
    Status(client::IdArgs),
    /// Follows a task's progress until it finishes; resumes by itself if the
    /// connection drops.
    Watch(client::WatchArgs),
    /// Cancels a task.
    Cancel(client::IdArgs),
    /// Lists tasks, newest first.
    Ls(client::LsArgs),
    /// Retries a FAILED task (a new run under the same id), or with --all every FAILED
    /// task matching the filters, after a dry run and a confirmation.
    Retry(dead_letters::RetryArgs),
    /// Deletes every FAILED task matching the filters (--all), after a dry run and a
    /// confirmation.
    Discard(dead_letters::DiscardArgs),
    /// Prints a task's attempts, in every run: start, duration, outcome, error, worker.
    Attempts(dead_letters::AttemptsArgs),
    /// Shows each kind's queue: waiting, running, the oldest wait, recent outcomes.
    Kinds(client::KindsArgs),
    /// Creates, lists and revokes API keys, in the database.
    #[command(subcommand)]
    Keys(keys::KeysCommand),
    /// Prints the nats-server users that confine each service to its NATS subjects.
    NatsPermissions(nats_permissions::NatsPermissionsArgs),
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let api = client::Target {
        addr: cli.addr.clone(),
        token: cli.token.clone(),
        ca: cli.ca.clone(),
    };
    let watch = client::Target {
        addr: cli.watch_addr.clone().unwrap_or_else(|| cli.addr.clone()),
        ..api.clone()
    };
    let result = match cli.command {
        Command::Dev(args) => dev::run(args).await.map_err(CliError::from),
        Command::Submit(args) => client::submit(&api, &watch, args).await,
        Command::Status(args) => client::status(&api, args).await,
        Command::Watch(args) => client::watch(&watch, args).await,
        Command::Cancel(args) => client::cancel(&api, args).await,
        Command::Ls(args) => client::ls(&api, args).await,
        Command::Retry(args) => dead_letters::retry(&api, args).await,
        Command::Discard(args) => dead_letters::discard(&api, args).await,
        Command::Attempts(args) => dead_letters::attempts(&api, args).await,
        Command::Kinds(args) => client::kinds(&api, args).await,
        Command::Keys(cmd) => keys::run(cmd).await,
        Command::NatsPermissions(args) => {
            nats_permissions::run(args);
            Ok(())
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => taskwire::telemetry::exit_with("taskwire", &e, e.exit_code()),
    }
}

/// Why a command did not succeed; each kind has its exit code.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("{0}")]
    Usage(String),
    #[error("{}: {}", .0.code(), .0.message())]
    Rejected(tonic::Status),
    #[error("cannot reach taskwire: {0}")]
    Unreachable(String),
    #[error("task {0} failed: {1}")]
    TaskFailed(String, String),
    #[error("task {0} was cancelled")]
    TaskCancelled(String),
    #[error("taskwire dev")]
    Dev(#[from] dev::DevError),
    #[error("the database")]
    Store(#[from] taskwire::store::Error),
}

impl CliError {
    fn exit_code(&self) -> u8 {
        match self {
            CliError::TaskFailed(..) => 1,
            CliError::Usage(_) => 2,
            CliError::TaskCancelled(_) => 3,
            CliError::Rejected(_) => 4,
            CliError::Unreachable(_) => 5,
            CliError::Dev(dev::DevError::Interrupted) => 130,
            CliError::Dev(_) | CliError::Store(_) => 1,
        }
    }
}

impl From<tonic::Status> for CliError {
    fn from(s: tonic::Status) -> Self {
        match s.code() {
            tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Unknown => {
                CliError::Unreachable(s.message().to_string())
            }
            _ => CliError::Rejected(s),
        }
    }
}
