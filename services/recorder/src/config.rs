//! The recorder's settings: flags and `TASKWIRE_*` variables.

use clap::Parser;
use taskwire::config::{ConfigError, DatabaseArgs, NatsArgs, StreamArgs};

/// taskwire recorder: projects task events from NATS into the database.
#[derive(Debug, Clone, Parser)]
#[command(name = "taskwire-recorder", version)]
pub struct Config {
    #[command(flatten)]
    pub log: taskwire::telemetry::LogArgs,

    #[command(flatten)]
    pub nats: NatsArgs,

    /// Where to serve /metrics, /livez, /readyz and gRPC health (plain HTTP), or
    /// `off`. Loopback unless told otherwise.
    #[arg(long, env = "TASKWIRE_ADMIN_LISTEN", default_value = "127.0.0.1:9503")]
    pub admin_listen: taskwire::admin::Listen,

    #[command(flatten)]
    pub streams: StreamArgs,

    #[command(flatten)]
    pub database: DatabaseArgs,

    /// Most events applied in one transaction.
    #[arg(long, env = "TASKWIRE_RECORDER_BATCH", default_value_t = 512, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub batch: u32,
}

impl Config {
    /// Checks the relations between settings that clap cannot express (none yet: each
    /// flag's range is checked as it is parsed).
    pub fn validate(&self) -> Result<(), ConfigError> {
        Ok(())
    }
}
