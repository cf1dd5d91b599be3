//! The api's settings: flags and `TASKWIRE_*` variables, validated before binding.

use std::{net::SocketAddr, time::Duration};

use clap::{Parser, ValueEnum};
use taskwire::{
    config::{ConfigError, DatabaseArgs, NatsArgs, ServeArgs, StreamArgs, parse_duration},
    domain::MAX_ATTEMPTS_LIMIT,
};

/// taskwire api: the front door (taskwire.v1.TaskService). Validates, stores and
/// enqueues tasks, answers status, lists and cancels them.
#[derive(Debug, Clone, Parser)]
#[command(name = "taskwire-api", version)]
pub struct Config {
    /// Address to serve gRPC on.
    #[arg(long, env = "TASKWIRE_API_LISTEN", default_value = "127.0.0.1:50051")]
    pub listen: SocketAddr,

    /// Where to serve /metrics, /livez, /readyz and gRPC health (plain HTTP), or
    /// `off`. Loopback unless told otherwise.
    #[arg(long, env = "TASKWIRE_ADMIN_LISTEN", default_value = "127.0.0.1:9501")]
    pub admin_listen: taskwire::admin::Listen,

    #[command(flatten)]
    pub log: taskwire::telemetry::LogArgs,

    #[command(flatten)]
    pub nats: NatsArgs,

    #[command(flatten)]
    pub database: DatabaseArgs,

    #[command(flatten)]
    pub streams: StreamArgs,

    #[command(flatten)]
    pub serve: ServeArgs,

    /// Largest task input accepted, in bytes of JSON; larger is RESOURCE_EXHAUSTED.
    #[arg(long, env = "TASKWIRE_MAX_INPUT_BYTES", default_value_t = 1 << 20, value_parser = clap::value_parser!(u32).range(1..=(64 << 20)))]
    pub max_input_bytes: u32,

    /// Attempts a task gets when its submit says 0.
    #[arg(long, env = "TASKWIRE_DEFAULT_MAX_ATTEMPTS", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_ATTEMPTS_LIMIT)))]
    pub default_max_attempts: u32,

    /// How long a submitting call owns its outbox row before the relay may publish it
    /// instead. Must exceed --nats-timeout.
    #[arg(long, env = "TASKWIRE_OUTBOX_LEASE", default_value = "30s", value_parser = parse_duration)]
    pub outbox_lease: Duration,

    /// How often the relay looks for outbox rows whose lease ran out.
    #[arg(long, env = "TASKWIRE_OUTBOX_POLL", default_value = "1s", value_parser = parse_duration)]
    pub outbox_poll: Duration,

    /// How often the graph loop looks for waiting parents whose children are to be
    /// created, or are all done (their fan-in is then enqueued).
    #[arg(long, env = "TASKWIRE_GRAPH_POLL", default_value = "100ms", value_parser = parse_duration)]
    pub graph_poll: Duration,

    /// Tasks one tenant may submit per second on this replica, in bursts of as many
    /// (0: no limit); past it, RESOURCE_EXHAUSTED with a retry hint. A SubmitTasks
    /// batch counts each of its tasks; one larger than the burst passes when the
    /// bucket is full and leaves it in debt.
    #[arg(long, env = "TASKWIRE_TENANT_SUBMIT_RATE", default_value_t = 0)]
    pub tenant_submit_rate: u32,

    /// Test-only fault injection: the process aborts at the named point of SubmitTask.
    #[arg(long, env = "TASKWIRE_FAULT", hide = true)]
    pub fault: Option<Fault>,
}

/// Points where the crash tests make the api die, to show the outbox covers them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Fault {
    /// After the task is committed, before it is published.
    AbortAfterCommit,
    /// After JetStream acknowledged the publish, before the outbox row is deleted.
    AbortAfterPublish,
    /// The publish is not sent and reported failed (NATS took nothing).
    FailPublish,
    /// The publish is sent, then reported failed (its ack was lost).
    LosePublishAck,
}

impl Config {
    /// Checks the relations between settings that clap cannot express.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.serve.check_exposure(self.listen)?;
        if self.outbox_lease <= self.nats.nats_timeout {
            return Err(ConfigError::new(
                "--outbox-lease",
                format!(
                    "{:?} must be longer than --nats-timeout ({:?}), or the relay could \
                     publish a task its submitter is still publishing",
                    self.outbox_lease, self.nats.nats_timeout
                ),
            ));
        }
        if self.streams.duplicate_window <= self.outbox_lease {
            return Err(ConfigError::new(
                "--duplicate-window",
                format!(
                    "{:?} must be longer than --outbox-lease ({:?})",
                    self.streams.duplicate_window, self.outbox_lease
                ),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Config, clap::Error> {
        Config::try_parse_from(std::iter::once("taskwire-api").chain(args.iter().copied()))
    }

    #[test]
    fn defaults_are_valid() {
        let c = parse(&[]).unwrap();
        assert_eq!(c.max_input_bytes, 1 << 20);
        c.validate().unwrap();
    }

    #[test]
    fn rejects_bad_values() {
        assert!(parse(&["--listen", "nowhere"]).is_err());
        assert!(parse(&["--database-url", "mysql://x"]).is_err());
        assert!(parse(&["--default-max-attempts", "0"]).is_err());
        assert!(parse(&["--nats-timeout", "5"]).is_err());
        let c = parse(&["--outbox-lease", "1s", "--nats-timeout", "2s"]).unwrap();
        assert!(c.validate().is_err());
        let c = parse(&["--outbox-lease", "20m"]).unwrap();
        assert!(c.validate().is_err());
    }

    #[test]
    fn off_loopback_needs_auth_and_tls_or_insecure() {
        let c = parse(&["--listen", "0.0.0.0:50051"]).unwrap();
        assert!(c.validate().is_err());
        let c = parse(&["--listen", "0.0.0.0:50051", "--auth", "keys"]).unwrap();
        assert!(c.validate().is_err());
        let c = parse(&["--listen", "0.0.0.0:50051", "--insecure"]).unwrap();
        c.validate().unwrap();
        let tls = ["--tls-cert", "c.pem", "--tls-key", "k.pem"];
        let c =
            parse(&[&["--listen", "0.0.0.0:50051", "--auth", "keys"][..], &tls].concat()).unwrap();
        c.validate().unwrap();
        assert!(
            parse(&["--tls-cert", "c.pem"]).is_err(),
            "a cert needs its key"
        );
    }
}
