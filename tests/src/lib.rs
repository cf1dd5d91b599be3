//! The test harness: real things, started per test (shared by the end-to-end tests
//! in `e2e/` and the benchmark tool).
//!
//! # Layout
//! - [`NatsServer`] (`nats_server`): a real nats-server (the pinned one that
//!   `scripts/setup` installs into `.venv`) on a free loopback port with a temp store,
//!   killed on drop, with `stop`/`restart` for outage tests.
//! - `streams`: reading what is in taskwire's streams (task messages, a task's
//!   history, dead letters), by sequence, without consumers.
//! - [`TestDb`], [`Db`], [`both_databases!`] (`db`): a fresh SQLite file, or a fresh
//!   PostgreSQL database on the server at `$DATABASE_URL`, dropped afterwards.
//! - `in_process`: the services in this process on 127.0.0.1:0 ([`Api`],
//!   [`WatchServer`], [`Running`] worker and recorder, the whole [`Stack`]) and
//!   clients of them.
//! - `processes`: the built binaries as child processes, for tests that kill them
//!   ([`Proc`], [`ApiProcess`], [`WorkerProcess`], [`DevProcess`], [`cli`]).
//! - [`OtlpReceiver`] (`otlp`): an OTLP trace receiver (gRPC and HTTP) that keeps what
//!   the processes export.
//! - [`TestCa`] (`ca`): a certificate authority made per test, for TLS and mTLS.
//! - [`eventually`]: polls a condition under a deadline instead of sleeping.
#![forbid(unsafe_code)]

mod ca;
mod db;
mod in_process;
mod nats_server;
mod otlp;
mod processes;
mod streams;

use std::{
    future::Future,
    path::{Path, PathBuf},
    time::Duration,
};

pub use ca::TestCa;
pub use db::{Db, TestDb};
pub use in_process::*;
pub use nats_server::{NATS_CONF, NatsCluster, NatsServer};
pub use otlp::{OtlpReceiver, Received};
pub use processes::{
    ApiProcess, DevProcess, Proc, ServiceProcess, WorkerProcess, alive, cli, nats_pid,
};
pub use streams::{dlq_messages, task_events, tasks_in_stream, wait_progress};

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

/// A built binary of this workspace: beside the running binary (a bench tool in
/// `target/<profile>/`) or one directory up (a test binary in `target/<profile>/deps/`).
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

/// A free loopback port (bound and released: free a moment later, in practice).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}
