//! The deployment a run measures: its own nats-server (or 3-node cluster with R3
//! streams), a fresh database and each service binary as a separate process, on free
//! loopback ports; stopped on drop.

use std::{
    net::SocketAddr,
    process::Command,
    sync::Arc,
    time::{Duration, Instant},
};

use taskwire::pb::v1::{
    TaskEvent, WatchTaskRequest, task_service_client::TaskServiceClient,
    watch_service_client::WatchServiceClient,
};
use taskwire_tests::{
    Db, NatsCluster, NatsServer, Proc, TestDb, free_port, wait_serving, workspace_bin,
};
use tonic::{Streaming, transport::Channel};

use crate::submit_req;

/// The NATS a run uses: one server, or a cluster whose streams have three replicas.
pub enum Nats {
    Single(NatsServer),
    Cluster(NatsCluster),
}

impl Nats {
    /// One server for `nodes` = 1, else a cluster of `nodes`.
    pub async fn start(nodes: usize) -> Self {
        if nodes > 1 {
            Self::Cluster(NatsCluster::start(nodes).await)
        } else {
            Self::Single(NatsServer::start())
        }
    }

    /// The URL(s) `--nats-url` takes.
    pub fn url(&self) -> String {
        match self {
            Self::Single(n) => n.url(),
            Self::Cluster(c) => c.urls(),
        }
    }

    /// Stream replicas: 3 on a cluster.
    pub fn replicas(&self) -> usize {
        match self {
            Self::Single(_) => 1,
            Self::Cluster(_) => 3,
        }
    }

    pub fn pids(&self) -> Vec<u32> {
        match self {
            Self::Single(n) => n.pid().into_iter().collect(),
            Self::Cluster(c) => c.pids(),
        }
    }
}

pub struct Deployment {
    pub nats: Nats,
    pub db: TestDb,
    pub api_addr: SocketAddr,
    pub watch_addr: SocketAddr,
    /// (role, process): api, watch, recorder, then the workers.
    procs: Vec<(&'static str, Proc)>,
}

/// A loopback address with a free port.
pub fn free_addr() -> SocketAddr {
    ([127, 0, 0, 1], free_port()).into()
}

fn spawn(bin: &'static str, args: &[&str]) -> Proc {
    let mut cmd = Command::new(workspace_bin(bin));
    // Errors only: under load, sqlx's slow-acquire warnings would drown the table.
    cmd.args(args)
        .env("RUST_LOG", "error")
        .stdout(std::process::Stdio::null());
    Proc::spawn(&mut cmd, bin)
}

impl Deployment {
    /// Starts everything; `metrics`: whether the processes serve (and so record)
    /// metrics, each on a free admin port.
    pub async fn start(db: Db, workers: usize, metrics: bool, nats_nodes: usize) -> Self {
        let nats = Nats::start(nats_nodes).await;
        let db = db.create().await;
        let url = nats.url();
        let replicas = nats.replicas().to_string();
        let (api_addr, watch_addr) = (free_addr(), free_addr());
        let admin = if metrics { "127.0.0.1:0" } else { "off" };
        let common = [
            "--nats-url",
            url.as_str(),
            "--stream-replicas",
            &replicas,
            "--database-url",
            db.url.as_str(),
            "--admin-listen",
            admin,
        ];
        let api = spawn(
            "taskwire-api",
            &[
                &common[..],
                &[
                    "--listen",
                    &api_addr.to_string(),
                    "--database-max-connections",
                    "32",
                ],
            ]
            .concat(),
        );
        let watch = spawn(
            "taskwire-watch",
            &[&common[..], &["--listen", &watch_addr.to_string()]].concat(),
        );
        let recorder = spawn("taskwire-recorder", &common);
        let mut procs = vec![("api", api), ("watch", watch), ("recorder", recorder)];
        for _ in 0..workers {
            procs.push((
                "worker",
                spawn(
                    "taskwire-worker",
                    &[
                        "--nats-url",
                        &url,
                        "--stream-replicas",
                        &replicas,
                        "--concurrency",
                        "64",
                        "--admin-listen",
                        admin,
                    ],
                ),
            ));
        }
        for addr in [api_addr, watch_addr] {
            wait_serving(addr).await;
        }
        Self {
            nats,
            db,
            api_addr,
            watch_addr,
            procs,
        }
    }

    /// (role, pid) of every process of the deployment, nats-server included.
    pub fn pids(&self) -> Vec<(&'static str, u32)> {
        let mut v: Vec<(&'static str, u32)> =
            self.procs.iter().map(|(role, p)| (*role, p.id())).collect();
        v.extend(self.nats.pids().into_iter().map(|pid| ("nats-server", pid)));
        v
    }

    /// The watch process's pid.
    pub fn watch_pid(&self) -> u32 {
        self.procs
            .iter()
            .find(|(role, _)| *role == "watch")
            .map(|(_, p)| p.id())
            .expect("a watch process")
    }
}

/// `n` connections to `addr`, for clients to share.
pub async fn channels(addr: SocketAddr, n: usize) -> Vec<Channel> {
    let mut v = Vec::new();
    for _ in 0..n {
        v.push(
            Channel::from_shared(format!("http://{addr}"))
                .expect("uri")
                .connect()
                .await
                .expect("connect"),
        );
    }
    v
}

/// `clients` clients each submitting `per` tasks of `kind`, back to back, over 8 shared
/// connections to `addr`; returns every submit's latency.
pub async fn closed_loop(
    addr: SocketAddr,
    kind: &'static str,
    clients: usize,
    per: usize,
) -> Vec<Duration> {
    let chans = Arc::new(channels(addr, 8).await);
    let tasks: Vec<_> = (0..clients)
        .map(|i| {
            let chans = chans.clone();
            tokio::spawn(async move {
                let mut c = TaskServiceClient::new(chans[i % chans.len()].clone());
                let mut lat = Vec::with_capacity(per);
                for _ in 0..per {
                    let t = Instant::now();
                    c.submit_task(submit_req(kind, serde_json::json!({"i": i})))
                        .await
                        .expect("submit");
                    lat.push(t.elapsed());
                }
                lat
            })
        })
        .collect();
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await.expect("client"));
    }
    lat
}

/// A WatchTask stream of `task_id` from its current state.
pub async fn watch(
    client: &mut WatchServiceClient<Channel>,
    task_id: String,
) -> Streaming<TaskEvent> {
    client
        .watch_task(WatchTaskRequest {
            task_id,
            after_seq: 0,
        })
        .await
        .expect("watch")
        .into_inner()
}
