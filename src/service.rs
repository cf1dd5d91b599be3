//! What every service process shares: why it could not start or stopped, and its
//! `main` (logging, the configuration check, SIGINT/SIGTERM, the exit code), so each
//! binary's `main.rs` is only what is its own.

use std::{future::Future, process::ExitCode};

use tokio_util::sync::CancellationToken;

use crate::{config::ConfigError, nats, serve::BindError, store, telemetry};

/// Why a service could not start, or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A setting that cannot work.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Its listener could not be bound.
    #[error(transparent)]
    Bind(#[from] BindError),
    /// The database could not be opened or migrated.
    #[error(transparent)]
    Store(#[from] store::Error),
    /// NATS could not be reached or set up.
    #[error(transparent)]
    Nats(#[from] nats::Error),
    /// The gRPC server failed.
    #[error("gRPC server failed")]
    Serve(#[from] tonic::transport::Error),
}

/// A service binary's `main`: installs logging (and tracing, when the OTLP
/// environment asks); exits 2 if `checked` (its
/// configuration's validation) failed; else runs `run` with the token the first
/// SIGINT or SIGTERM cancels (a second one ends the process at once) and exits 0, or
/// 1 with the error and its causes on stderr.
pub async fn main<F>(
    name: &str,
    log: &telemetry::LogArgs,
    checked: Result<(), ConfigError>,
    run: impl FnOnce(CancellationToken) -> F,
) -> ExitCode
where
    F: Future<Output = Result<(), Error>>,
{
    // Kept to the end: dropping it flushes the spans not exported yet.
    let _telemetry = telemetry::init(name, log.log_format);
    if let Err(e) = checked {
        return telemetry::exit_with(name, &e, 2);
    }
    match run(crate::shutdown::on_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => telemetry::exit_with(name, &e, 1),
    }
}
