//! The test harness: real things, started per test.
//!
//! - [`NatsServer`]: a real nats-server (the pinned one that `scripts/setup` installs
//!   into `.venv`) on a free loopback port with a temp store, killed on drop, with
//!   `stop`/`start` for outage tests.
//! - [`TestDb`]: a fresh SQLite file, or a fresh PostgreSQL database on the server at
//!   `$DATABASE_URL` (default: the local one), dropped afterwards.
//! - [`Api`]: the api service in-process on 127.0.0.1:0; [`ApiProcess`]: the
//!   `taskwire-api` binary as a child process, for tests that kill it.
//! - [`eventually`]: polls a condition under a deadline instead of sleeping.
#![forbid(unsafe_code)]

use std::{
    future::Future,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use async_nats::jetstream;
use taskwire::{
    nats,
    pb::{internal::v1::TaskMessage, v1::task_service_client::TaskServiceClient},
};
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

/// How long any single wait in a test may take before the test fails.
pub const PATIENCE: Duration = Duration::from_secs(20);

/// The workspace root (the parent of this crate).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// A binary of a tool that `scripts/setup` installed into the project's `.venv`.
pub fn venv_bin(name: &str) -> PathBuf {
    let path = workspace_root().join(".venv/bin").join(name);
    assert!(
        path.exists(),
        "{} is missing: run scripts/setup (it installs the pinned nats-server and grpcurl)",
        path.display()
    );
    path
}

/// Polls `check` until it returns `Some`, or panics after `PATIENCE`.
pub async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "gave up waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// taskwire's nats-server settings, the same file scripts/dev and compose.yaml use:
/// task inputs up to 1 MiB need a max_payload above NATS's 1 MiB default.
pub const NATS_CONF: &str = include_str!("../../deploy/nats.conf");

/// A real nats-server with JetStream on a free loopback port and a temp store.
#[derive(Debug)]
pub struct NatsServer {
    child: Option<Child>,
    port: u16,
    store_dir: tempfile::TempDir,
}

impl NatsServer {
    pub fn start() -> Self {
        let store_dir = tempfile::tempdir().expect("temp dir");
        let port = free_port();
        let mut s = Self {
            child: None,
            port,
            store_dir,
        };
        s.spawn();
        s
    }

    fn spawn(&mut self) {
        let conf = self.store_dir.path().join("nats.conf");
        std::fs::write(&conf, NATS_CONF).expect("write nats.conf");
        let child = Command::new(venv_bin("nats-server"))
            .args([
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-js",
                "-sd",
            ])
            .arg(self.store_dir.path())
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server starts");
        self.child = Some(child);
        let addr: SocketAddr = ([127, 0, 0, 1], self.port).into();
        let deadline = std::time::Instant::now() + PATIENCE;
        while std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "nats-server did not listen on {addr}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The server's process id (benchmarks read its CPU time).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Kills the server (SIGKILL); its store stays for [`NatsServer::restart`].
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port with the same store.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    /// A JetStream context on this server.
    pub async fn jetstream(&self) -> jetstream::Context {
        let client = nats::connect(&self.url(), "test", Duration::from_secs(5))
            .await
            .expect("connect to test nats-server");
        nats::jetstream(client, Duration::from_secs(5))
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// Every message in TASKWIRE_TASKS now, with its Nats-Msg-Id, oldest first. (A work
/// queue allows no second consumer over the same subjects, so this reads by sequence.)
pub async fn tasks_in_stream(js: &jetstream::Context) -> Vec<(String, TaskMessage)> {
    use prost::Message;
    let mut stream = js
        .get_stream(nats::TASKS_STREAM)
        .await
        .expect("tasks stream");
    let state = stream.info().await.expect("stream info").state.clone();
    let mut out = Vec::new();
    if state.messages == 0 {
        return out;
    }
    for seq in state.first_sequence..=state.last_sequence {
        if let Ok(m) = stream.get_raw_message(seq).await {
            let id = m
                .headers
                .get("Nats-Msg-Id")
                .map(|v| v.to_string())
                .unwrap_or_default();
            out.push((
                id,
                TaskMessage::decode(m.payload).expect("task message decodes"),
            ));
        }
    }
    out
}

/// A database for one test: a temp SQLite file or a fresh PostgreSQL database.
#[derive(Debug)]
pub struct TestDb {
    pub url: String,
    /// Keeps the SQLite file's directory alive.
    _dir: Option<tempfile::TempDir>,
    /// (server URL, database name) to drop a PostgreSQL database afterwards.
    pg: Option<(String, String)>,
}

impl TestDb {
    pub fn sqlite() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = format!("sqlite://{}", dir.path().join("taskwire.db").display());
        Self {
            url,
            _dir: Some(dir),
            pg: None,
        }
    }

    /// A fresh database on `$DATABASE_URL` (default postgres://postgres@127.0.0.1:5432/postgres).
    pub async fn postgres() -> Self {
        use sqlx::{Connection, Executor};
        let server = std::env::var("DATABASE_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_string());
        let name = format!("taskwire_test_{}", uuid::Uuid::new_v4().simple());
        let mut conn = sqlx::PgConnection::connect(&server)
            .await
            .unwrap_or_else(|e| panic!("PostgreSQL at {server} is required for these tests: {e}"));
        conn.execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .await
            .expect("create test database");
        let base = server.rsplit_once('/').map(|(b, _)| b).unwrap_or(&server);
        Self {
            url: format!("{base}/{name}"),
            _dir: None,
            pg: Some((server, name)),
        }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let Some((server, name)) = self.pg.take() else {
            return;
        };
        // Drop runs outside async; a small runtime on its own thread does the cleanup.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build();
            if let Ok(rt) = rt {
                rt.block_on(async {
                    use sqlx::{Connection, Executor};
                    if let Ok(mut c) = sqlx::PgConnection::connect(&server).await {
                        let _ = c
                            .execute(sqlx::AssertSqlSafe(format!(
                                "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                            )))
                            .await;
                    }
                });
            }
        })
        .join();
    }
}

/// Both databases, for tests that run against each.
#[derive(Debug, Clone, Copy)]
pub enum Db {
    Sqlite,
    Postgres,
}

impl Db {
    pub async fn create(self) -> TestDb {
        match self {
            Db::Sqlite => TestDb::sqlite(),
            Db::Postgres => TestDb::postgres().await,
        }
    }
}

/// Declares `mod NAME { sqlite, postgres }` tests that call `NAME(Db)`.
#[macro_export]
macro_rules! both_databases {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$name($crate::Db::Sqlite).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                super::$name($crate::Db::Postgres).await
            }
        }
    )*};
}

/// The api's config for a test: the given NATS and database, short outbox timings.
pub fn api_config(nats_url: &str, db_url: &str) -> taskwire_api::Config {
    use clap::Parser;
    taskwire_api::Config::try_parse_from([
        "taskwire-api",
        "--listen",
        "127.0.0.1:0",
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
            c.list_tasks(taskwire::pb::v1::ListTasksRequest {
                page_size: 1,
                ..Default::default()
            })
            .await
            .ok()
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

/// A built binary of this workspace: beside the running binary (a bench tool in
/// target/<profile>/) or one directory up (a test binary in target/<profile>/deps/).
/// scripts/test builds them first.
pub fn workspace_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("own binary path");
    let here = exe.parent().expect("a directory");
    let path = [here.join(name), here.parent().unwrap_or(here).join(name)]
        .into_iter()
        .find(|p| p.exists());
    path.unwrap_or_else(|| {
        panic!(
            "{name} is missing beside {}: build it first (cargo build --workspace --bins; scripts/test does)",
            here.display()
        )
    })
}

/// The `taskwire-api` binary as a child process, killed on drop.
#[derive(Debug)]
pub struct ApiProcess {
    pub addr: SocketAddr,
    proc: Proc,
}

impl ApiProcess {
    /// Starts it on a free port with extra environment, and waits until it answers.
    pub async fn spawn(nats_url: &str, db_url: &str, env: &[(&str, &str)]) -> Self {
        let port = free_port();
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let mut child = Command::new(workspace_bin("taskwire-api"));
        child
            .args([
                "--listen",
                &addr.to_string(),
                "--nats-url",
                nats_url,
                "--database-url",
                db_url,
            ])
            .args([
                "--nats-timeout",
                "2s",
                "--outbox-lease",
                "3s",
                "--outbox-poll",
                "100ms",
            ])
            .envs(env.iter().copied())
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null());
        let p = Self {
            addr,
            proc: Proc::spawn(&mut child, "taskwire-api"),
        };
        eventually("the api process answers", || async move {
            let mut c = connect(addr).await.ok()?;
            c.list_tasks(taskwire::pb::v1::ListTasksRequest::default())
                .await
                .ok()
        })
        .await;
        p
    }

    /// Waits for it to exit by itself (e.g. an injected abort) and returns its status.
    pub async fn wait_exit(&mut self) -> std::process::ExitStatus {
        self.proc.wait_exit().await
    }
}

/// A binary of this workspace running as a child process; killed on drop.
#[derive(Debug)]
pub struct Proc {
    child: Child,
    what: &'static str,
}

impl Proc {
    fn spawn(cmd: &mut Command, what: &'static str) -> Self {
        let child = cmd.spawn().unwrap_or_else(|e| panic!("{what} starts: {e}"));
        Self { child, what }
    }

    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL: the process dies at once, whatever it holds.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends a signal by name (`TERM`, `INT`).
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill -{name} {}", self.what);
    }

    /// Waits for it to exit by itself; returns its status.
    pub async fn wait_exit(&mut self) -> std::process::ExitStatus {
        let what = self.what;
        eventually(&format!("{what} exits"), || {
            let status = self.child.try_wait().expect("try_wait");
            async move { status }
        })
        .await
    }

    fn exited(&mut self) -> bool {
        !matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The worker's config for a test: short ack_wait, backoff and grace.
pub fn worker_config(nats_url: &str) -> taskwire_worker::Config {
    use clap::Parser;
    taskwire_worker::Config::try_parse_from([
        "taskwire-worker",
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

/// A task's whole history in TASKWIRE_EVENTS, as (seq, event), oldest first. Reads
/// by direct get (no consumer), so any number of calls is fine.
pub async fn task_events(
    js: &jetstream::Context,
    id: &str,
) -> Vec<(u64, taskwire::pb::internal::v1::Event)> {
    use prost::Message;
    let stream = js
        .get_stream(nats::EVENTS_STREAM)
        .await
        .expect("events stream");
    let subject = format!("taskwire.events.{id}");
    let mut out = Vec::new();
    let mut from = 1;
    loop {
        match stream
            .direct_get_next_for_subject(subject.as_str(), Some(from))
            .await
        {
            Ok(m) => {
                from = m.sequence + 1;
                out.push((
                    m.sequence,
                    taskwire::pb::internal::v1::Event::decode(m.payload).expect("event"),
                ));
            }
            Err(e) if e.kind() == jetstream::stream::DirectGetErrorKind::NotFound => return out,
            Err(e) => panic!("reading events of {id}: {e}"),
        }
    }
}

/// Waits until the task's stored history has a progress event at `fraction` or more
/// (0.0: any progress at all).
pub async fn wait_progress(js: &jetstream::Context, id: &str, fraction: f64) {
    eventually(
        &format!("task {id} reaches progress {fraction}"),
        || async move {
            task_events(js, id)
                .await
                .iter()
                .any(|(_, e)| e.progress.as_ref().is_some_and(|p| p.fraction >= fraction))
                .then_some(())
        },
    )
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

/// Every message in TASKWIRE_DLQ, as (Nats-Msg-Id, subject).
pub async fn dlq_messages(js: &jetstream::Context) -> Vec<(String, String)> {
    let mut stream = js.get_stream(nats::DLQ_STREAM).await.expect("dlq stream");
    let state = stream.info().await.expect("info").state.clone();
    let mut out = Vec::new();
    if state.messages == 0 {
        return out;
    }
    for seq in state.first_sequence..=state.last_sequence {
        if let Ok(m) = stream.get_raw_message(seq).await {
            let id = m
                .headers
                .get("Nats-Msg-Id")
                .map(|v| v.to_string())
                .unwrap_or_default();
            out.push((id, m.subject.to_string()));
        }
    }
    out
}

/// The `taskwire-worker` binary as a child process (built-in kinds), for tests that
/// kill it. Killed on drop.
#[derive(Debug)]
pub struct WorkerProcess {
    proc: Proc,
}

impl WorkerProcess {
    pub fn spawn(nats_url: &str, args: &[&str]) -> Self {
        let mut cmd = Command::new(workspace_bin("taskwire-worker"));
        cmd.args([
            "--nats-url",
            nats_url,
            "--ack-wait",
            "2s",
            "--backoff-base",
            "200ms",
        ])
        .args(args)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null());
        Self {
            proc: Proc::spawn(&mut cmd, "taskwire-worker"),
        }
    }

    /// SIGKILL: the process dies at once, whatever it holds.
    pub fn kill(&mut self) {
        self.proc.kill();
    }

    /// SIGTERM: a graceful shutdown.
    pub fn terminate(&self) {
        self.proc.signal("TERM");
    }

    /// Waits for it to exit by itself; returns its status.
    pub async fn wait_exit(&mut self) -> std::process::ExitStatus {
        self.proc.wait_exit().await
    }
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
        use clap::Parser;
        let config = taskwire_watch::Config::try_parse_from([
            "taskwire-watch",
            "--nats-url",
            nats_url,
            "--database-url",
            db_url,
            "--cors-origins",
            "http://app.example",
        ])
        .expect("watch config");
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

/// `taskwire dev` as a child process on a free port with the given data dir.
#[derive(Debug)]
pub struct DevProcess {
    pub addr: SocketAddr,
    proc: Proc,
    data_dir: PathBuf,
}

impl DevProcess {
    pub async fn spawn(data_dir: &Path) -> Self {
        let addr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let mut cmd = Command::new(workspace_bin("taskwire"));
        cmd.args([
            "dev",
            "--listen",
            &addr.to_string(),
            "--web-listen",
            "127.0.0.1:0",
        ])
        .arg("--data-dir")
        .arg(data_dir)
        .arg("--nats-server")
        .arg(venv_bin("nats-server"))
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null());
        let proc = Proc::spawn(&mut cmd, "taskwire dev");
        wait_serving(addr).await;
        Self {
            addr,
            proc,
            data_dir: data_dir.to_path_buf(),
        }
    }

    pub fn kill(&mut self) {
        self.proc.kill();
    }

    /// SIGINT, as Ctrl-C; waits for the exit.
    pub async fn interrupt(&mut self) -> std::process::ExitStatus {
        self.proc.signal("INT");
        self.proc.wait_exit().await
    }
}

impl Drop for DevProcess {
    /// Stops it as Ctrl-C would; if it is already dead (a test killed it), its
    /// orphaned nats-server is stopped through the pid file, so no test leaves one.
    fn drop(&mut self) {
        if !self.proc.exited() {
            self.proc.signal("INT");
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while !self.proc.exited() && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        self.proc.kill();
        if let Ok(pid) = std::fs::read_to_string(self.data_dir.join("nats-server.pid")) {
            let pid = pid.trim();
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            if String::from_utf8_lossy(&cmdline).contains("nats-server") {
                let _ = Command::new("kill").args(["-KILL", pid]).status();
            }
        }
    }
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

/// Runs the `taskwire` CLI with `args` (blocking; call from spawn_blocking).
pub fn cli(args: &[&str]) -> std::process::Output {
    Command::new(workspace_bin("taskwire"))
        .args(args)
        .env_remove("TASKWIRE_ADDR")
        .output()
        .expect("taskwire runs")
}
