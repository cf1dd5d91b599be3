//! The recorder's settings: flags and `TASKWIRE_*` variables.

use std::time::Duration;

use clap::Parser;
use taskwire::config::{
    ConfigError, DatabaseArgs, KeepFor, NatsArgs, StreamArgs, parse_duration, parse_retention,
};

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

    /// How long SUCCEEDED tasks are kept after they finish (`off`: for good). The
    /// default matches the event stream's --events-max-age, which keeps their history.
    #[arg(long, env = "TASKWIRE_RETAIN_SUCCEEDED", default_value = "7d", value_parser = parse_retention)]
    pub retain_succeeded: KeepFor,

    /// How long FAILED tasks (the dead letters) are kept after they finish (`off`: for
    /// good). The default matches TASKWIRE_DLQ's 30 days.
    #[arg(long, env = "TASKWIRE_RETAIN_FAILED", default_value = "30d", value_parser = parse_retention)]
    pub retain_failed: KeepFor,

    /// How long CANCELLED tasks are kept after they finish (`off`: for good).
    #[arg(long, env = "TASKWIRE_RETAIN_CANCELLED", default_value = "7d", value_parser = parse_retention)]
    pub retain_cancelled: KeepFor,

    /// How often expired tasks are looked for.
    #[arg(long, env = "TASKWIRE_RETENTION_INTERVAL", default_value = "1m", value_parser = parse_duration)]
    pub retention_interval: Duration,

    /// Most tasks deleted by one statement; batches follow each other with a pause, so
    /// a large backlog of expired tasks never holds the tasks table for long.
    #[arg(long, env = "TASKWIRE_RETENTION_BATCH", default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub retention_batch: u32,

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

    /// The retention ages.
    pub fn retention(&self) -> taskwire::store::Retention {
        taskwire::store::Retention {
            succeeded: self.retain_succeeded.0,
            failed: self.retain_failed.0,
            cancelled: self.retain_cancelled.0,
        }
    }
}
