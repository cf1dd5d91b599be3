//! A real nats-server per test.

use std::{
    net::SocketAddr,
    process::{Child, Command, Stdio},
    time::Duration,
};

use async_nats::jetstream;
use taskwire::nats;

use crate::{PATIENCE, free_port, venv_bin};

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
