//! `taskwire dev`: the whole system in one process on the embedded default. It starts
//! a nats-server of its own (store in the data dir), opens a SQLite file there, and
//! serves the api and watch services (native gRPC and grpc-web, CORS open) on one
//! address and the web dashboard on another, with the worker (demo kinds) and the
//! recorder running beside them. Restarted on the same data dir it keeps its tasks and
//! finishes the running ones.
//!
//! Stopping follows the shutdown protocol: the first Ctrl-C (or SIGTERM) stops taking
//! calls, lets running tasks finish within the worker's grace period and hands the
//! rest back, and only then stops NATS; the whole drain is bounded by [`DRAIN_LIMIT`].
//! A second Ctrl-C stops at once (the interrupted tasks are redelivered after the next
//! start's ack_wait).

mod dashboard;
mod nats_server;

use std::{
    net::SocketAddr,
    path::PathBuf,
    time::{Duration, Instant},
};

use clap::{Args, Parser};
use taskwire::{
    admin::Admin,
    pb::v1::{task_service_server::TaskServiceServer, watch_service_server::WatchServiceServer},
    serve::{self, BindError, Cors},
};
use tokio_util::sync::CancellationToken;
use tonic::service::Routes;

use nats_server::NatsServer;

/// `taskwire dev`'s flags.
#[derive(Debug, Args)]
pub struct DevArgs {
    /// Where to serve gRPC and grpc-web.
    #[arg(long, env = "TASKWIRE_DEV_LISTEN", default_value = "127.0.0.1:50051")]
    listen: SocketAddr,
    /// Where the SQLite file and the NATS store live.
    #[arg(long, env = "TASKWIRE_DATA_DIR", default_value = ".taskwire")]
    data_dir: PathBuf,
    /// The nats-server binary (2.10 or newer); default: .venv/bin/nats-server if
    /// present (scripts/setup installs it), else nats-server on PATH.
    #[arg(long, env = "TASKWIRE_NATS_SERVER")]
    nats_server: Option<PathBuf>,
    /// Serve the dashboard from this directory instead of the copy built into the
    /// binary (for working on clients/web: `node build.mjs` then reload).
    #[arg(long, env = "TASKWIRE_WEB_DIR")]
    web_dir: Option<PathBuf>,
    /// Where to serve the dashboard (plain HTTP; it calls the gRPC address over
    /// grpc-web, learning it from /config.js).
    #[arg(long, env = "TASKWIRE_WEB_LISTEN", default_value = "127.0.0.1:50080")]
    web_listen: SocketAddr,
    /// Where to serve /metrics, /livez, /readyz and gRPC health for the whole system
    /// (plain HTTP), or `off`.
    #[arg(
        long,
        env = "TASKWIRE_DEV_ADMIN_LISTEN",
        default_value = "127.0.0.1:50090"
    )]
    admin_listen: taskwire::admin::Listen,
    /// Serve --listen or --web-listen off loopback although dev has no
    /// authentication or TLS (anyone who reaches it can read and run tasks).
    #[arg(long, env = "TASKWIRE_INSECURE")]
    insecure: bool,
    #[command(flatten)]
    log: taskwire::telemetry::LogArgs,
}

/// How long a running task may take to finish after Ctrl-C before it is handed back.
const GRACE: &str = "3s";
/// The longest a drain may take before dev stops NATS and exits anyway.
pub const DRAIN_LIMIT: Duration = Duration::from_secs(10);
/// How soon a task whose process was killed is redelivered after a restart.
const ACK_WAIT: &str = "5s";

/// Why `taskwire dev` could not start or did not stop cleanly.
#[derive(Debug, thiserror::Error)]
pub enum DevError {
    /// A file or directory of the data dir.
    #[error("{what}")]
    Io {
        /// What was being done.
        what: String,
        /// Why it failed.
        #[source]
        source: std::io::Error,
    },
    /// A listener could not be bound.
    #[error(transparent)]
    Bind(#[from] BindError),
    /// A listener would be exposed without authentication.
    #[error(transparent)]
    Exposed(#[from] taskwire::config::ConfigError),
    /// The nats-server could not be found or started.
    #[error("{0}")]
    Nats(String),
    /// A service's configuration was refused.
    #[error("{name} configuration")]
    Config {
        /// The service.
        name: &'static str,
        /// Why.
        #[source]
        source: clap::Error,
    },
    /// The api could not start.
    #[error("the api")]
    Api(#[source] taskwire_api::Error),
    /// The watch service could not start.
    #[error("the watch service")]
    Watch(#[source] taskwire_watch::Error),
    /// The recorder could not start.
    #[error("the recorder")]
    Recorder(#[source] taskwire_recorder::Error),
    /// The worker could not start.
    #[error("the worker")]
    Worker(#[source] taskwire_worker::Error),
    /// The gRPC server failed.
    #[error("the gRPC server")]
    Serve(#[source] tonic::transport::Error),
    /// A second signal: stopped without draining.
    #[error("stopped at once by a second signal; running tasks resume after the next start")]
    Interrupted,
    /// The drain outlasted [`DRAIN_LIMIT`].
    #[error("the drain took longer than {DRAIN_LIMIT:?}; stopped anyway")]
    DrainTimedOut,
}

impl DevError {
    fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            what: what.into(),
            source,
        }
    }
}

/// Runs `taskwire dev` until Ctrl-C.
pub async fn run(a: DevArgs) -> Result<(), DevError> {
    let _telemetry = taskwire::telemetry::init("taskwire-dev", a.log.log_format);
    let started = Instant::now();
    std::fs::create_dir_all(&a.data_dir).map_err(|e| DevError::io("creating the data dir", e))?;
    let data_dir = a
        .data_dir
        .canonicalize()
        .map_err(|e| DevError::io("finding the data dir", e))?;
    // dev serves without authentication or TLS: loopback only, unless told.
    serve::check_exposure("--listen", a.listen, false, false, a.insecure)?;
    serve::check_exposure("--web-listen", a.web_listen, false, false, a.insecure)?;
    // Bind first: a busy address fails before anything is started.
    let listener = serve::bind(a.listen).await?;
    let addr = listener
        .local_addr()
        .map_err(|e| DevError::io("reading the listener's address", e))?;
    let web = match dashboard::Source::pick(a.web_dir) {
        Some(source) => Some((source, serve::bind(a.web_listen).await?)),
        None => None,
    };
    let admin = Admin::bind(a.admin_listen).await?;
    let signals = taskwire::shutdown::signals();
    let mut nats = NatsServer::start(a.nats_server.as_deref(), &data_dir).await?;

    let system = System {
        nats_url: nats.url.clone(),
        data_dir,
        addr,
        started,
    };
    let drain = signals.drain.clone();
    let result = tokio::select! {
        r = system.run(listener, web, admin, drain.clone()) => r,
        _ = async { drain.cancelled().await; tokio::time::sleep(DRAIN_LIMIT).await } => {
            Err(DevError::DrainTimedOut)
        }
        _ = signals.now.cancelled() => Err(DevError::Interrupted),
    };
    // Last, once the worker has handed its tasks back through it.
    let patience = if signals.now.is_cancelled() {
        Duration::from_millis(500)
    } else {
        Duration::from_secs(5)
    };
    nats.stop(patience).await;
    result
}

/// Everything but NATS, in this process.
struct System {
    nats_url: String,
    data_dir: PathBuf,
    addr: SocketAddr,
    started: Instant,
}

impl System {
    async fn run(
        self,
        listener: tokio::net::TcpListener,
        web: Option<(dashboard::Source, tokio::net::TcpListener)>,
        admin: Admin,
        shutdown: CancellationToken,
    ) -> Result<(), DevError> {
        let db = format!("sqlite://{}", self.data_dir.join("taskwire.db").display());
        let nats = ["--nats-url", self.nats_url.as_str()];
        let with_db = ["--nats-url", self.nats_url.as_str(), "--database-url", &db];
        let worker_args = [
            &nats[..],
            &["--ack-wait", ACK_WAIT, "--shutdown-grace", GRACE],
        ]
        .concat();

        let api = taskwire_api::Api::build(&parse("taskwire-api", &with_db)?)
            .await
            .map_err(DevError::Api)?;
        let watch = taskwire_watch::Watch::build(&parse("taskwire-watch", &with_db)?)
            .await
            .map_err(DevError::Watch)?;
        let recorder = taskwire_recorder::Recorder::build(&parse("taskwire-recorder", &with_db)?)
            .await
            .map_err(DevError::Recorder)?;
        let worker = taskwire_worker::Worker::build(
            parse("taskwire-worker", &worker_args)?,
            taskwire_worker::kinds::builtin(),
        )
        .await
        .map_err(DevError::Worker)?;

        // Every part is ready: only now does health say SERVING (the admin's readiness
        // checks report it from here on, for both services).
        let (health, health_service) = tonic_health::server::health_reporter();
        health
            .set_serving::<TaskServiceServer<taskwire_api::TaskApi>>()
            .await;
        health
            .set_serving::<WatchServiceServer<taskwire_watch::WatchApi>>()
            .await;
        let services = [
            <TaskServiceServer<taskwire_api::TaskApi> as tonic::server::NamedService>::NAME,
            <WatchServiceServer<taskwire_watch::WatchApi> as tonic::server::NamedService>::NAME,
        ];
        let checks = api.checks(vec![(health, services.to_vec())]);
        let admin_url = admin.local_addr().map(|a| format!("http://{a}/metrics"));
        let routes = Routes::new(api.service.clone()).add_service(watch.service.clone());
        let routes = serve::with_introspection(routes, health_service);

        let background = tokio_util::task::TaskTracker::new();
        background.spawn(admin.run(checks, shutdown.clone()));
        background.spawn(api.run(shutdown.clone()));
        background.spawn(watch.run(shutdown.clone()));
        background.spawn(recorder.run(shutdown.clone()));
        background.spawn(worker.run(shutdown.clone()));
        let dashboard = match web {
            Some((source, web_listener)) => {
                let url = web_listener
                    .local_addr()
                    .map(|a| format!("http://{a}/"))
                    .map_err(|e| DevError::io("reading the dashboard's address", e))?;
                background.spawn(dashboard::spawn(
                    source,
                    web_listener,
                    self.addr,
                    shutdown.clone(),
                ));
                Some(url)
            }
            None => None,
        };
        background.close();
        self.banner(dashboard.as_deref(), admin_url.as_deref());

        let serving = serve::Serving::open(Cors::Any);
        let served = serve::serve(routes, &services, listener, &serving, shutdown.clone()).await;
        shutdown.cancel();
        background.wait().await;
        served.map_err(DevError::Serve)
    }

    fn banner(&self, dashboard: Option<&str>, metrics: Option<&str>) {
        let addr = self.addr;
        println!(
            "taskwire dev: serving gRPC, grpc-web and REST on {addr} (ready in {:?})",
            self.started.elapsed()
        );
        match dashboard {
            Some(url) => println!("  dashboard: {url}"),
            None => println!(
                "  dashboard: not built into this binary (build it with scripts/setup, which \
                 needs node, then cargo build)"
            ),
        }
        if let Some(url) = metrics {
            println!("  metrics:   {url} (and /livez, /readyz)");
        }
        println!(
            "  nats:      {} (also in {})",
            self.nats_url,
            self.data_dir.join("nats-url").display()
        );
        println!("  data:      {}", self.data_dir.display());
        println!(
            "  try:       taskwire --addr http://{addr} submit demo.agent --input '{{\"prompt\":\"hi\",\"tokens\":40}}' --watch"
        );
        println!(
            "  or:        grpcurl -plaintext -d '{{\"kind\":\"demo.agent\",\"input\":{{\"prompt\":\"hi\",\"tokens\":40}}}}' {addr} taskwire.v1.TaskService/SubmitTask"
        );
        println!(
            "  or:        curl -N -d '{{\"kind\":\"demo.agent\",\"input\":{{\"tokens\":40}}}}' http://{addr}/v1/tasks, then curl -N http://{addr}/v1/tasks/<task_id>/events"
        );
        println!("  REST API:  http://{addr}/openapi.json");
        println!(
            "  Ctrl-C stops: running tasks get {GRACE} to finish, the rest resume at the next start; \
             a second Ctrl-C stops at once."
        );
    }
}

fn parse<C: Parser>(name: &'static str, args: &[&str]) -> Result<C, DevError> {
    C::try_parse_from(std::iter::once(name).chain(args.iter().copied()))
        .map_err(|source| DevError::Config { name, source })
}
