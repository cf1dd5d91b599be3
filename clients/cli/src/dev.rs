//! `taskwire dev`: the whole system in one process on the embedded default. It starts
//! a nats-server of its own (store in the data dir), opens a SQLite file there, and
//! serves the api and watch services (native gRPC and grpc-web, CORS open) on one
//! address, with the worker (demo kinds) and the recorder running beside them.
//! Restarted on the same data dir it keeps its tasks and finishes the running ones.
//! Ctrl-C stops everything it started, nats-server included.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Stdio,
    time::{Duration, Instant},
};

use clap::{Args, Parser};
use taskwire::{
    pb::v1::{task_service_server::TaskServiceServer, watch_service_server::WatchServiceServer},
    serve::{self, Cors},
};
use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;
use tonic::service::Routes;

use crate::CliError;

#[derive(Debug, Args)]
pub struct DevArgs {
    /// Where to serve gRPC and grpc-web.
    #[arg(long, default_value = "127.0.0.1:50051")]
    listen: SocketAddr,
    /// Where the SQLite file and the NATS store live.
    #[arg(long, default_value = ".taskwire")]
    data_dir: PathBuf,
    /// The nats-server binary (2.10 or newer); default: .venv/bin/nats-server if
    /// present (scripts/setup installs it), else nats-server on PATH.
    #[arg(long, env = "TASKWIRE_NATS_SERVER")]
    nats_server: Option<PathBuf>,
    /// Static files to serve on --web-listen (the dashboard); default:
    /// clients/web/dist if it exists.
    #[arg(long)]
    web_dir: Option<PathBuf>,
    /// Where to serve the dashboard (plain HTTP; it calls the gRPC address over
    /// grpc-web, learning it from /config.js).
    #[arg(long, default_value = "127.0.0.1:50080")]
    web_listen: SocketAddr,
}

/// How long a redelivery waits in dev mode: a task whose process was killed resumes
/// this soon after a restart.
const DEV_ACK_WAIT: &str = "5s";

fn err(what: &str) -> impl Fn(String) -> CliError + '_ {
    move |e| CliError::Dev(format!("{what}: {e}"))
}

pub async fn run(a: DevArgs) -> Result<(), CliError> {
    taskwire::telemetry::init();
    let started = Instant::now();
    std::fs::create_dir_all(&a.data_dir).map_err(|e| err("data dir")(e.to_string()))?;
    let data_dir = a
        .data_dir
        .canonicalize()
        .map_err(|e| err("data dir")(e.to_string()))?;
    // Bind first: a busy address fails before anything is started.
    let listener = tokio::net::TcpListener::bind(a.listen)
        .await
        .map_err(|e| err(&format!("cannot listen on {}", a.listen))(e.to_string()))?;
    let addr = listener
        .local_addr()
        .map_err(|e| err("listener")(e.to_string()))?;

    let mut nats = NatsChild::start(a.nats_server.as_deref(), &data_dir).await?;
    let shutdown = taskwire::shutdown::on_signal();
    let web_dir = a.web_dir.or_else(|| {
        Some(PathBuf::from("clients/web/dist")).filter(|d| d.join("index.html").exists())
    });
    let web = match web_dir {
        Some(dir) => Some(serve_web(dir, a.web_listen, addr, shutdown.clone()).await?),
        None => None,
    };
    let result = serve_all(&nats.url, &data_dir, listener, addr, started, shutdown).await;
    if let Some(web) = web {
        let _ = web.await;
    }
    nats.stop().await;
    result
}

/// Serves the dashboard's static files, and `/config.js` telling the page where the
/// gRPC services are. A separate listener: tonic-web answers plain HTTP/1.1 GETs on the
/// gRPC port with 400.
async fn serve_web(
    dir: PathBuf,
    listen: SocketAddr,
    grpc: SocketAddr,
    shutdown: CancellationToken,
) -> Result<tokio::task::JoinHandle<()>, CliError> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| err(&format!("cannot listen on {listen} for the dashboard"))(e.to_string()))?;
    let config = format!("window.TASKWIRE_GRPC_URL = \"http://{grpc}\";\n");
    let router = axum::Router::new()
        .route(
            "/config.js",
            axum::routing::get(move || {
                let config = config.clone();
                async move { ([("content-type", "text/javascript")], config) }
            }),
        )
        .fallback_service(tower_http::services::ServeDir::new(&dir));
    let listen = listener.local_addr().unwrap_or(listen);
    println!("  dashboard: http://{listen}/ (from {})", dir.display());
    Ok(tokio::spawn(async move {
        let served = tonic::transport::Server::builder()
            .accept_http1(true)
            .add_routes(Routes::from(router))
            .serve_with_incoming_shutdown(serve::incoming(listener), shutdown.cancelled_owned())
            .await;
        if let Err(e) = served {
            tracing::warn!(error = %e, "dashboard server stopped");
        }
    }))
}

async fn serve_all(
    nats_url: &str,
    data_dir: &Path,
    listener: tokio::net::TcpListener,
    addr: SocketAddr,
    started: Instant,
    shutdown: CancellationToken,
) -> Result<(), CliError> {
    let db = format!("sqlite://{}", data_dir.join("taskwire.db").display());
    let common = ["--nats-url", nats_url];
    let with_db = ["--nats-url", nats_url, "--database-url", &db];
    let api_config = parse::<taskwire_api::Config>("taskwire-api", &with_db)?;
    let watch_config = parse::<taskwire_watch::Config>("taskwire-watch", &with_db)?;
    let recorder_config = parse::<taskwire_recorder::Config>("taskwire-recorder", &with_db)?;
    let mut worker_args = common.to_vec();
    worker_args.extend(["--ack-wait", DEV_ACK_WAIT, "--shutdown-grace", "3s"]);
    let worker_config = parse::<taskwire_worker::Config>("taskwire-worker", &worker_args)?;

    let api = taskwire_api::Api::build(&api_config)
        .await
        .map_err(|e| err("api")(e.to_string()))?;
    let watch = taskwire_watch::Watch::build(&watch_config, shutdown.clone())
        .await
        .map_err(|e| err("watch")(e.to_string()))?;
    let recorder = taskwire_recorder::Recorder::start(&recorder_config)
        .await
        .map_err(|e| err("recorder")(e.to_string()))?;
    let worker = taskwire_worker::Worker::start(worker_config, taskwire_worker::kinds::builtin())
        .await
        .map_err(|e| err("worker")(e.to_string()))?;

    // Every part is ready: only now does health say SERVING.
    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<TaskServiceServer<taskwire_api::TaskApi>>()
        .await;
    health
        .set_serving::<WatchServiceServer<taskwire_watch::WatchApi>>()
        .await;
    let routes = Routes::new(api.service.clone()).add_service(watch.service.clone());
    let routes = serve::with_introspection(routes, health_service);

    let background = tokio_util::task::TaskTracker::new();
    background.spawn(api.run_relay(shutdown.clone()));
    background.spawn(recorder.run(shutdown.clone()));
    background.spawn(worker.run(shutdown.clone()));
    background.close();

    println!(
        "taskwire dev: serving gRPC and grpc-web on {addr} (ready in {:?})",
        started.elapsed()
    );
    println!("  data: {}", data_dir.display());
    println!(
        "  nats: {nats_url} (also in {})",
        data_dir.join("nats-url").display()
    );
    println!(
        "  try:  grpcurl -plaintext -d '{{\"kind\":\"demo.agent\",\"input\":{{\"prompt\":\"hi\",\"tokens\":40}}}}' {addr} taskwire.v1.TaskService/SubmitTask"
    );
    println!(
        "  or:   taskwire --addr http://{addr} submit demo.agent --input '{{\"prompt\":\"hi\",\"tokens\":40}}' --watch"
    );
    let served = serve::serve(routes, listener, &Cors::Any, shutdown.clone()).await;
    shutdown.cancel();
    background.wait().await;
    served.map_err(|e| err("server")(e.to_string()))
}

fn parse<C: Parser>(name: &str, args: &[&str]) -> Result<C, CliError> {
    C::try_parse_from(std::iter::once(name).chain(args.iter().copied()))
        .map_err(|e| CliError::Dev(format!("{name} config: {e}")))
}

/// The nats-server this process started.
struct NatsChild {
    child: Child,
    url: String,
    pid_file: PathBuf,
}

impl NatsChild {
    async fn start(binary: Option<&Path>, data_dir: &Path) -> Result<Self, CliError> {
        let bin = find_nats_server(binary)?;
        let pid_file = data_dir.join("nats-server.pid");
        kill_stale(&pid_file);
        let store = data_dir.join("nats");
        let conf = data_dir.join("nats.conf");
        // Task inputs up to 1 MiB need more than NATS's default max_payload.
        std::fs::write(&conf, "max_payload: 8MB\n").map_err(|e| err("nats.conf")(e.to_string()))?;
        // The port of the previous run if it is free, so workers in other languages
        // that joined through `nats-url` find NATS again after a restart.
        let previous = std::fs::read_to_string(data_dir.join("nats-url"))
            .ok()
            .and_then(|u| u.trim().rsplit(':').next()?.parse::<u16>().ok());
        let port = previous
            .and_then(|p| std::net::TcpListener::bind(("127.0.0.1", p)).ok())
            .or_else(|| std::net::TcpListener::bind("127.0.0.1:0").ok())
            .and_then(|l| l.local_addr().ok())
            .map(|a| a.port())
            .ok_or_else(|| CliError::Dev("no free port for nats-server".into()))?;
        let child = Command::new(&bin)
            .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
            .arg(&store)
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| err(&format!("starting {}", bin.display()))(e.to_string()))?;
        if let Some(pid) = child.id() {
            let _ = std::fs::write(&pid_file, pid.to_string());
        }
        let url = format!("nats://127.0.0.1:{port}");
        // For workers in other languages that join this dev system.
        let _ = std::fs::write(data_dir.join("nats-url"), &url);
        let deadline = Instant::now() + Duration::from_secs(10);
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            if Instant::now() > deadline {
                return Err(CliError::Dev(format!(
                    "nats-server did not start on port {port}"
                )));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(Self {
            child,
            url,
            pid_file,
        })
    }

    async fn stop(&mut self) {
        if let Some(pid) = self.child.id() {
            // SIGTERM lets it flush its store; SIGKILL if it lingers.
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
            if tokio::time::timeout(Duration::from_secs(5), self.child.wait())
                .await
                .is_err()
            {
                let _ = self.child.kill().await;
            }
        }
        let _ = std::fs::remove_file(&self.pid_file);
    }
}

/// A nats-server left running by a `taskwire dev` that was killed (its children are
/// not killed with it) holds the store: stop it before starting ours.
fn kill_stale(pid_file: &Path) {
    let Ok(pid) = std::fs::read_to_string(pid_file) else {
        return;
    };
    let pid = pid.trim();
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    if String::from_utf8_lossy(&cmdline).contains("nats-server") {
        tracing::info!(pid, "stopping the nats-server of an earlier taskwire dev");
        let _ = std::process::Command::new("kill")
            .args(["-KILL", pid])
            .status();
        for _ in 0..100 {
            if !Path::new(&format!("/proc/{pid}")).exists() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let _ = std::fs::remove_file(pid_file);
}

/// The nats-server to run: the flag, else the project's .venv, else PATH; it must be
/// 2.10 or newer (JetStream features taskwire uses).
fn find_nats_server(explicit: Option<&Path>) -> Result<PathBuf, CliError> {
    let candidates: Vec<PathBuf> = match explicit {
        Some(p) => vec![p.to_path_buf()],
        None => vec![
            PathBuf::from(".venv/bin/nats-server"),
            PathBuf::from("nats-server"),
        ],
    };
    let mut seen = Vec::new();
    for c in candidates {
        let Ok(out) = std::process::Command::new(&c).arg("--version").output() else {
            continue;
        };
        let version = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if new_enough(&version) {
            return Ok(c);
        }
        seen.push(format!("{} ({version})", c.display()));
    }
    Err(CliError::Dev(format!(
        "no nats-server 2.10 or newer found{}; run scripts/setup (it installs one into .venv) \
         or pass --nats-server",
        if seen.is_empty() {
            String::new()
        } else {
            format!(" (found {})", seen.join(", "))
        }
    )))
}

/// "nats-server: v2.15.1" -> at least 2.10?
fn new_enough(version: &str) -> bool {
    let v = version.rsplit('v').next().unwrap_or("");
    let mut parts = v.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    (major, minor) >= (2, 10)
}

#[cfg(test)]
mod tests {
    #[test]
    fn nats_versions() {
        assert!(super::new_enough("nats-server: v2.15.1"));
        assert!(super::new_enough("nats-server: v2.10.0"));
        assert!(!super::new_enough("nats-server: v2.9.15"));
        assert!(!super::new_enough("garbage"));
    }
}
