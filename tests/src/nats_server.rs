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
    /// Appended to [`NATS_CONF`].
    extra_conf: String,
    /// Set in the server's environment.
    env: Vec<(String, String)>,
}

impl NatsServer {
    pub fn start() -> Self {
        Self::start_with("", Vec::new())
    }

    /// With `extra_conf` appended to its config and `env` in its environment (e.g. an
    /// `authorization` block and the passwords it names); it logs to
    /// [`NatsServer::log`].
    pub fn start_with(extra_conf: &str, env: Vec<(String, String)>) -> Self {
        let store_dir = tempfile::tempdir().expect("temp dir");
        let port = free_port();
        let mut s = Self {
            child: None,
            port,
            store_dir,
            extra_conf: extra_conf.to_string(),
            env,
        };
        s.spawn();
        s
    }

    /// What the server logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.store_dir.path().join("nats.log")).unwrap_or_default()
    }

    fn spawn(&mut self) {
        let conf = self.store_dir.path().join("nats.conf");
        std::fs::write(&conf, format!("{NATS_CONF}\n{}", self.extra_conf))
            .expect("write nats.conf");
        let child = Command::new(venv_bin("nats-server"))
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .arg("-l")
            .arg(self.store_dir.path().join("nats.log"))
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

    /// A client of this server.
    pub async fn client(&self) -> async_nats::Client {
        nats::connect(&self.url(), "test", Duration::from_secs(5))
            .await
            .expect("connect to test nats-server")
    }

    /// A JetStream context on this server.
    pub async fn jetstream(&self) -> jetstream::Context {
        nats::jetstream(self.client().await, Duration::from_secs(5))
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A NATS cluster of real nats-servers on loopback (each with its own client and route
/// ports, server name and store), for tests of R3 streams and node loss.
#[derive(Debug)]
pub struct NatsCluster {
    nodes: Vec<ClusterNode>,
}

#[derive(Debug)]
struct ClusterNode {
    name: String,
    port: u16,
    conf: std::path::PathBuf,
    child: Option<Child>,
    _dir: tempfile::TempDir,
}

impl ClusterNode {
    fn spawn(&mut self) {
        let child = Command::new(venv_bin("nats-server"))
            .arg("-c")
            .arg(&self.conf)
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
                "{} did not listen on {addr}",
                self.name
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl NatsCluster {
    /// Starts `n` routed nodes (JetStream on each) and waits until the cluster has a
    /// JetStream leader (streams can be created).
    pub async fn start(n: usize) -> Self {
        let ports: Vec<(u16, u16)> = (0..n).map(|_| (free_port(), free_port())).collect();
        let mut nodes = Vec::new();
        for (i, (port, cport)) in ports.iter().enumerate() {
            let dir = tempfile::tempdir().expect("temp dir");
            let routes: Vec<String> = ports
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .map(|(_, (_, c))| format!("nats-route://127.0.0.1:{c}"))
                .collect();
            let name = format!("n{i}");
            let conf = dir.path().join("nats.conf");
            std::fs::write(
                &conf,
                format!(
                    "{NATS_CONF}\nserver_name: {name}\nlisten: 127.0.0.1:{port}\n\
                     jetstream {{ store_dir: \"{}\" }}\n\
                     cluster {{ name: taskwire-test, listen: 127.0.0.1:{cport}, routes: [{}] }}\n",
                    dir.path().join("js").display(),
                    routes.join(", ")
                ),
            )
            .expect("write nats.conf");
            let mut node = ClusterNode {
                name,
                port: *port,
                conf,
                child: None,
                _dir: dir,
            };
            node.spawn();
            nodes.push(node);
        }
        let cluster = Self { nodes };
        cluster.wait_for_jetstream().await;
        cluster
    }

    /// Every node's client URL, comma-separated (the form `--nats-url` takes).
    pub fn urls(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("nats://127.0.0.1:{}", n.port))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The node named `name` (`n0`, `n1`, ...), by index.
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.name == name)
    }

    /// Kills node `i` (SIGKILL); its store stays for [`NatsCluster::restart`].
    pub fn kill(&mut self, i: usize) {
        self.nodes[i].kill();
    }

    /// Starts node `i` again with its store.
    pub fn restart(&mut self, i: usize) {
        self.nodes[i].kill();
        self.nodes[i].spawn();
    }

    /// The pid of every running node.
    pub fn pids(&self) -> Vec<u32> {
        self.nodes
            .iter()
            .filter_map(|n| n.child.as_ref().map(Child::id))
            .collect()
    }

    /// How many nodes run.
    pub fn running(&self) -> usize {
        self.nodes.iter().filter(|n| n.child.is_some()).count()
    }

    /// A JetStream context on the cluster (any node).
    pub async fn jetstream(&self) -> jetstream::Context {
        let client = nats::connect(&self.urls(), "test", Duration::from_secs(5))
            .await
            .expect("connect to the test cluster");
        nats::jetstream(client, Duration::from_secs(5))
    }

    /// The index of the node leading `stream`'s Raft group (waits for one).
    pub async fn leader_of(&self, stream: &str) -> usize {
        let js = self.jetstream().await;
        crate::eventually(&format!("{stream} has a leader"), || async {
            let mut s = js.get_stream(stream).await.ok()?;
            let info = s.info().await.ok()?;
            let leader = info.cluster.as_ref()?.leader.clone()?;
            self.index_of(&leader)
        })
        .await
    }

    async fn wait_for_jetstream(&self) {
        crate::eventually("the cluster elects a JetStream leader", || async {
            let js = self.jetstream().await;
            js.query_account().await.ok().map(|_| ())
        })
        .await;
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            n.kill();
        }
    }
}
