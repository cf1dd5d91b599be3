//! The watch service's settings: flags and `TASKWIRE_*` variables.

use std::net::SocketAddr;

use clap::Parser;
use taskwire::config::{ConfigError, DatabaseArgs, NatsArgs, ServeArgs, StreamArgs};

/// taskwire watch: streams task progress (taskwire.v1.WatchService) over gRPC and
/// grpc-web.
#[derive(Debug, Clone, Parser)]
#[command(name = "taskwire-watch", version)]
pub struct Config {
    /// Address to serve gRPC and grpc-web on.
    #[arg(long, env = "TASKWIRE_WATCH_LISTEN", default_value = "127.0.0.1:50052")]
    pub listen: SocketAddr,

    /// Where to serve /metrics, /livez, /readyz and gRPC health (plain HTTP), or
    /// `off`. Loopback unless told otherwise.
    #[arg(long, env = "TASKWIRE_ADMIN_LISTEN", default_value = "127.0.0.1:9502")]
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

    /// Most WatchTask and WatchTasks streams one tenant may have open on this
    /// replica (0: no limit); past it, RESOURCE_EXHAUSTED with a retry hint.
    #[arg(long, env = "TASKWIRE_TENANT_MAX_STREAMS", default_value_t = 50_000)]
    pub tenant_max_streams: usize,

    /// Most WatchTasks streams (every task's events) one API key may have open on this
    /// replica (0: no limit). Without authentication all callers share one key.
    #[arg(long, env = "TASKWIRE_MAX_WATCH_ALL_PER_KEY", default_value_t = 16)]
    pub max_watch_all_per_key: usize,
}

impl Config {
    /// Checks the relations between settings that clap cannot express (none yet: each
    /// flag is checked as it is parsed).
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.serve.check_exposure(self.listen)
    }
}
