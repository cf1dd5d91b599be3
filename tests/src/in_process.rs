//! The services in this process, on free loopback ports, and clients of them.

use std::{future::Future, net::SocketAddr, time::Duration};

use taskwire::pb::v1::task_service_client::TaskServiceClient;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

use crate::{Db, NatsServer, PATIENCE, TestDb, eventually};

/// The api's config for a test: the given NATS and database, short outbox timings.
pub fn api_config(nats_url: &str, db_url: &str) -> taskwire_api::Config {
    use clap::Parser;
    taskwire_api::Config::try_parse_from([
        "taskwire-api",
        "--listen",
        "127.0.0.1:0",
        "--admin-listen",
        "off",
        "--nats-url",
        nats_url,
        "--database-url",
        db_url,
        "--nats-timeout",
        "2s",
        "--database-timeout",
        "3s",
        "--outbox-lease",
        "3s",
        "--outbox-poll",
        "100ms",
    ])
    .expect("test config parses")
}

/// The api, in-process on a free loopback port.
#[derive(Debug)]
pub struct Api {
    pub addr: SocketAddr,
    shutdown: CancellationToken,
    task: Option<tokio::task::JoinHandle<Result<(), taskwire_api::Error>>>,
}

impl Api {
    pub async fn start(config: taskwire_api::Config) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(taskwire_api::run(config, listener, shutdown.clone()));
        let api = Self {
            addr,
            shutdown,
            task: Some(task),
        };
        api.wait_ready().await;
        api
    }

    async fn wait_ready(&self) {
        let addr = self.addr;
        eventually("the api answers", || async move {
            let mut c = connect(addr).await.ok()?;
            let answer = c
                .list_tasks(taskwire::pb::v1::ListTasksRequest {
                    page_size: 1,
                    ..Default::default()
                })
                .await;
            match answer {
                Ok(_) => Some(()),
                // Serving, with authentication on.
                Err(s) if s.code() == tonic::Code::Unauthenticated => Some(()),
                Err(_) => None,
            }
        })
        .await;
    }

    pub async fn client(&self) -> TaskServiceClient<Channel> {
        connect(self.addr).await.expect("connect to api")
    }

    /// Stops it gracefully and returns what `run` returned.
    pub async fn stop(mut self) -> Result<(), taskwire_api::Error> {
        self.shutdown.cancel();
        self.task.take().expect("running").await.expect("api task")
    }
}

impl Drop for Api {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// A gRPC client of the api at `addr`, every call under a deadline.
pub async fn connect(
    addr: SocketAddr,
) -> Result<TaskServiceClient<Channel>, tonic::transport::Error> {
    let channel = Channel::from_shared(format!("http://{addr}"))
        .expect("valid uri")
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(10))
        .connect()
        .await?;
    Ok(TaskServiceClient::new(channel))
}

/// The worker's config for a test: short ack_wait, backoff and grace.
pub fn worker_config(nats_url: &str) -> taskwire_worker::Config {
    use clap::Parser;
    taskwire_worker::Config::try_parse_from([
        "taskwire-worker",
        "--admin-listen",
        "off",
        "--nats-url",
        nats_url,
        "--nats-timeout",
        "2s",
        "--ack-wait",
        "2s",
        "--backoff-base",
        "200ms",
        "--backoff-max",
        "2s",
        "--shutdown-grace",
        "2s",
    ])
    .expect("test worker config parses")
}

/// The recorder's config for a test.
pub fn recorder_config(nats_url: &str, db_url: &str) -> taskwire_recorder::Config {
    use clap::Parser;
    taskwire_recorder::Config::try_parse_from([
        "taskwire-recorder",
        "--admin-listen",
        "off",
        "--nats-url",
        nats_url,
        "--database-url",
        db_url,
    ])
    .expect("test recorder config parses")
}

/// A service running in-process; stopped (gracefully) by [`Running::stop`] or on drop.
#[derive(Debug)]
pub struct Running {
    shutdown: CancellationToken,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Running {
    pub fn spawn<F>(make: impl FnOnce(CancellationToken) -> F) -> Self
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(make(shutdown.clone()));
        Self {
            shutdown,
            task: Some(task),
        }
    }

    /// The built-in worker, in-process.
    pub fn worker(config: taskwire_worker::Config) -> Self {
        Self::spawn(|s| async move {
            taskwire_worker::run(config, taskwire_worker::kinds::builtin(), s)
                .await
                .expect("worker runs");
        })
    }

    /// The recorder, in-process.
    pub fn recorder(config: taskwire_recorder::Config) -> Self {
        Self::spawn(|s| async move {
            taskwire_recorder::run(config, s)
                .await
                .expect("recorder runs");
        })
    }

    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(t) = self.task.take() {
            tokio::time::timeout(PATIENCE, t)
                .await
                .expect("service stops in time")
                .expect("service task");
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// The whole system for one test: NATS, a database, api, recorder and a worker.
#[derive(Debug)]
pub struct Stack {
    pub nats: NatsServer,
    pub db: TestDb,
    pub api: Api,
    pub recorder: Option<Running>,
    pub worker: Option<Running>,
}

impl Stack {
    pub async fn start(db: Db) -> Self {
        Self::start_with(db, worker_config).await
    }

    /// With the worker's config adjusted by `tweak`.
    pub async fn start_with(db: Db, worker: fn(&str) -> taskwire_worker::Config) -> Self {
        let nats = NatsServer::start();
        let db = db.create().await;
        let api = Api::start(api_config(&nats.url(), &db.url)).await;
        let recorder = Some(Running::recorder(recorder_config(&nats.url(), &db.url)));
        let worker = Some(Running::worker(worker(&nats.url())));
        Self {
            nats,
            db,
            api,
            recorder,
            worker,
        }
    }

    pub async fn client(&self) -> TaskServiceClient<Channel> {
        self.api.client().await
    }
}

/// Polls GetStatus until the task is in a terminal state; returns it.
pub async fn wait_terminal(
    client: &TaskServiceClient<Channel>,
    id: &str,
) -> taskwire::pb::v1::Task {
    use taskwire::pb::v1::{GetStatusRequest, TaskState};
    eventually(&format!("task {id} finishes"), || {
        let mut c = client.clone();
        let id = id.to_string();
        async move {
            let t = c
                .get_status(GetStatusRequest { task_id: id })
                .await
                .ok()?
                .into_inner();
            TaskState::try_from(t.state)
                .ok()?
                .is_terminal()
                .then_some(t)
        }
    })
    .await
}

/// Waits until the task's outbox row is gone (published and cleaned up).
pub async fn wait_outbox_cleared(store: &taskwire::store::Store, id: taskwire::domain::TaskId) {
    eventually(
        &format!("the outbox row of {id} is deleted"),
        || async move { (!store.in_outbox(id).await.expect("outbox query")).then_some(()) },
    )
    .await
}

/// A watch service replica, in-process on a free loopback port.
#[derive(Debug)]
pub struct WatchServer {
    pub addr: SocketAddr,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), taskwire_watch::Error>>,
}

impl WatchServer {
    pub async fn start(nats_url: &str, db_url: &str) -> Self {
        Self::start_with(nats_url, db_url, &[]).await
    }

    /// With `extra` flags (e.g. `--auth keys`).
    pub async fn start_with(nats_url: &str, db_url: &str, extra: &[&str]) -> Self {
        use clap::Parser;
        let args = [
            "taskwire-watch",
            "--admin-listen",
            "off",
            "--nats-url",
            nats_url,
            "--database-url",
            db_url,
            "--cors-origins",
            "http://app.example",
        ];
        let config =
            taskwire_watch::Config::try_parse_from(args.iter().chain(extra)).expect("watch config");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(taskwire_watch::run(config, listener, shutdown.clone()));
        wait_serving(addr).await;
        Self {
            addr,
            shutdown,
            task,
        }
    }

    /// Stops it gracefully and waits for it.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        let task = std::mem::replace(&mut self.task, tokio::spawn(async { Ok(()) }));
        task.await
            .expect("watch task")
            .expect("watch stops cleanly");
    }

    /// Kills it: its task is aborted, its streams break mid-way.
    pub fn kill(self) {
        self.task.abort();
        self.shutdown.cancel();
    }

    pub async fn client(
        &self,
    ) -> taskwire::pb::v1::watch_service_client::WatchServiceClient<Channel> {
        watch_client(self.addr).await
    }
}

impl Drop for WatchServer {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

pub async fn watch_client(
    addr: SocketAddr,
) -> taskwire::pb::v1::watch_service_client::WatchServiceClient<Channel> {
    let channel = Channel::from_shared(format!("http://{addr}"))
        .expect("uri")
        .connect_timeout(Duration::from_secs(2))
        .connect()
        .await
        .expect("connect to watch");
    taskwire::pb::v1::watch_service_client::WatchServiceClient::new(channel)
}

/// Reads a WatchTask stream to its end (or `PATIENCE`), returning its events.
pub async fn watch_all(
    client: &mut taskwire::pb::v1::watch_service_client::WatchServiceClient<Channel>,
    task_id: &str,
    after_seq: u64,
) -> Vec<taskwire::pb::v1::TaskEvent> {
    let mut stream = client
        .watch_task(taskwire::pb::v1::WatchTaskRequest {
            task_id: task_id.to_string(),
            after_seq,
            tree: false,
        })
        .await
        .expect("watch starts")
        .into_inner();
    let mut out = Vec::new();
    tokio::time::timeout(PATIENCE, async {
        while let Some(e) = stream.message().await.expect("stream ok") {
            out.push(e);
        }
    })
    .await
    .expect("the stream ends in time");
    out
}

/// Waits until the gRPC server at `addr` answers grpc.health.v1 with SERVING.
pub async fn wait_serving(addr: SocketAddr) {
    use tonic_health::pb::{
        HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
    };
    eventually(&format!("{addr} reports SERVING"), || async move {
        let channel = Channel::from_shared(format!("http://{addr}"))
            .ok()?
            .connect()
            .await
            .ok()?;
        let status = HealthClient::new(channel)
            .check(HealthCheckRequest::default())
            .await
            .ok()?
            .into_inner()
            .status;
        (status == ServingStatus::Serving as i32).then_some(())
    })
    .await;
}

/// A plain HTTP/1.0 GET (the admin listener's endpoints): (status, body).
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    try_http_get(addr, path)
        .await
        .unwrap_or_else(|e| panic!("GET {path} from {addr}: {e}"))
}

/// [`http_get`], or why it could not be done: for a process that may not listen yet.
pub async fn try_http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let timed_out = |_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no answer in time");
    let mut conn = tokio::time::timeout(PATIENCE, tokio::net::TcpStream::connect(addr))
        .await
        .map_err(timed_out)??;
    conn.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await?;
    let mut raw = Vec::new();
    tokio::time::timeout(PATIENCE, conn.read_to_end(&mut raw))
        .await
        .map_err(timed_out)??;
    let text = String::from_utf8_lossy(&raw).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    Ok((status, body.to_string()))
}
