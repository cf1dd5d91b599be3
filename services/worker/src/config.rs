//! The worker's settings: flags and `TASKWIRE_*` variables.

use std::time::Duration;

use clap::Parser;
use taskwire::{
    backoff::Backoff,
    config::{ConfigError, NatsArgs, StreamArgs, parse_duration},
};

/// taskwire worker: runs tasks of the kinds it has handlers for, reporting progress
/// through NATS. Ships the built-in demo kinds.
#[derive(Debug, Clone, Parser)]
#[command(name = "taskwire-worker", version)]
pub struct Config {
    #[command(flatten)]
    pub log: taskwire::telemetry::LogArgs,

    #[command(flatten)]
    pub nats: NatsArgs,

    /// Where to serve /metrics, /livez, /readyz and gRPC health (plain HTTP), or
    /// `off`. Loopback unless told otherwise. Several workers on one machine each need their own (or
    /// 127.0.0.1:0 for any free port).
    #[arg(long, env = "TASKWIRE_ADMIN_LISTEN", default_value = "127.0.0.1:9504")]
    pub admin_listen: taskwire::admin::Listen,

    #[command(flatten)]
    pub streams: StreamArgs,

    /// Tasks this process runs at once.
    #[arg(long, env = "TASKWIRE_WORKER_CONCURRENCY", default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub concurrency: u32,

    /// JetStream redelivers a task whose worker has not acknowledged or sent a
    /// heartbeat for this long: how soon a dead worker's task moves on.
    #[arg(long, env = "TASKWIRE_ACK_WAIT", default_value = "30s", value_parser = parse_duration)]
    pub ack_wait: Duration,

    /// First retry delay; it doubles per attempt (with jitter) up to --backoff-max.
    #[arg(long, env = "TASKWIRE_BACKOFF_BASE", default_value = "1s", value_parser = parse_duration)]
    pub backoff_base: Duration,

    /// Longest retry delay.
    #[arg(long, env = "TASKWIRE_BACKOFF_MAX", default_value = "5m", value_parser = parse_duration)]
    pub backoff_max: Duration,

    /// Per-attempt timeout of tasks submitted without one.
    #[arg(long, env = "TASKWIRE_DEFAULT_TIMEOUT", default_value = "1h", value_parser = parse_duration)]
    pub default_timeout: Duration,

    /// Deliveries JetStream makes of one task before it gives up (the consumer's
    /// max_deliver; above any task's max_attempts). Past it the recorder fails the task
    /// from the MAX_DELIVERIES advisory. Lowered only by tests.
    #[arg(long, env = "TASKWIRE_MAX_DELIVER", default_value_t = 101, hide = true, value_parser = clap::value_parser!(i64).range(2..=10_000))]
    pub max_deliver: i64,

    /// At most N tasks of KIND run at once across all workers (`KIND=N`, repeatable or
    /// comma-separated; N = 0 lifts a limit). A kind not named keeps the limit it has,
    /// so set it on one worker, or the same on all.
    #[arg(long = "max-running", env = "TASKWIRE_MAX_RUNNING", value_delimiter = ',', value_parser = parse_kind_limit)]
    pub max_running: Vec<KindLimit>,

    /// At most N tasks of KIND started per second by this worker (`KIND=N`, repeatable
    /// or comma-separated), in bursts of up to N. Per worker process: with R replicas
    /// the kind starts up to R x N per second (--max-running bounds a kind across all
    /// workers).
    #[arg(long = "max-rate", env = "TASKWIRE_MAX_RATE", value_delimiter = ',', value_parser = parse_kind_limit)]
    pub max_rate: Vec<KindLimit>,

    /// On SIGTERM, how long running handlers may take to finish before they are
    /// stopped and their tasks handed back for another worker.
    #[arg(long, env = "TASKWIRE_SHUTDOWN_GRACE", default_value = "20s", value_parser = parse_duration)]
    pub shutdown_grace: Duration,
}

/// One `--max-running KIND=N`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KindLimit {
    pub kind: String,
    pub max: u32,
}

fn parse_kind_limit(s: &str) -> Result<KindLimit, String> {
    let (kind, max) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?} must be KIND=N, e.g. demo.sleep=2"))?;
    let kind = taskwire::domain::TaskKind::parse(kind.trim()).map_err(|e| e.to_string())?;
    let max = max
        .trim()
        .parse()
        .map_err(|_| format!("{s:?}: N must be a whole number (0 lifts the limit)"))?;
    Ok(KindLimit {
        kind: kind.to_string(),
        max,
    })
}

impl Config {
    /// The `--max-rate` given for `kind`, if any and above 0 (the last one wins).
    pub fn max_rate_of(&self, kind: &str) -> Option<u32> {
        self.max_rate
            .iter()
            .rev()
            .find(|l| l.kind == kind)
            .map(|l| l.max)
            .filter(|&n| n > 0)
    }

    /// The `--max-running` given for `kind`, if any (the last one wins).
    pub fn max_running_of(&self, kind: &str) -> Option<u32> {
        self.max_running
            .iter()
            .rev()
            .find(|l| l.kind == kind)
            .map(|l| l.max)
    }

    /// How often a running task's message gets an in-progress ack: a third of
    /// ack_wait, so two can be lost before JetStream would redeliver.
    pub fn heartbeat(&self) -> Duration {
        self.ack_wait / 3
    }

    /// The delays between a failing task's attempts.
    pub fn backoff(&self) -> Backoff {
        Backoff::new(self.backoff_base, self.backoff_max)
    }

    /// Checks the relations between settings that clap cannot express.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.ack_wait < Duration::from_millis(300) {
            return Err(ConfigError::new("--ack-wait", "must be at least 300ms"));
        }
        if self.backoff_max < self.backoff_base {
            return Err(ConfigError::new(
                "--backoff-max",
                "must be at least --backoff-base",
            ));
        }
        Ok(())
    }
}
