//! The deployment a run measures: its own nats-server (or 3-node cluster with R3
//! streams), a fresh database and each service binary as a separate process, on free
//! loopback ports; stopped on drop.

use std::{
    net::SocketAddr,
    process::Command,
    sync::Arc,
    time::{Duration, Instant},
};

use taskwire::auth::Bearer;
use taskwire::pb::v1::{
    TaskEvent, WatchTaskRequest, task_service_client::TaskServiceClient,
    watch_service_client::WatchServiceClient,
};
use taskwire_tests::{
    Db, NatsCluster, NatsServer, Proc, TestDb, free_port, wait_serving, workspace_bin,
};
use tonic::{
    Streaming,
    service::interceptor::InterceptedService,
    transport::{Certificate, Channel, ClientTlsConfig},
};

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

    /// A JetStream context on the deployment's NATS.
    pub async fn jetstream(&self) -> async_nats::jetstream::Context {
        match self {
            Self::Single(n) => n.jetstream().await,
            Self::Cluster(c) => c.jetstream().await,
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
    /// With `--secure`: the CA and key clients use.
    secure: Option<Arc<Secure>>,
    /// (role, process): api, watch, recorder, then the workers.
    procs: Vec<(&'static str, Proc)>,
}

/// A loopback address with a free port.
pub fn free_addr() -> SocketAddr {
    ([127, 0, 0, 1], free_port()).into()
}

/// `n` distinct free loopback addresses. Every listener of a deployment gets one up
/// front: a process binding port 0 could otherwise be given a port picked (and
/// released) for another, which then answers in its place (an admin listener serves
/// gRPC health too, so the mix-up passed the readiness check: a 404 in W3).
fn free_addrs(n: usize) -> Vec<SocketAddr> {
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let a = free_addr();
        if seen.insert(a) {
            out.push(a);
        }
    }
    out
}

fn spawn(bin: &'static str, args: &[&str]) -> Proc {
    let mut cmd = Command::new(workspace_bin(bin));
    // Errors only: under load, sqlx's slow-acquire warnings would drown the table.
    cmd.args(args)
        .env("RUST_LOG", "error")
        .stdout(std::process::Stdio::null());
    Proc::spawn(&mut cmd, bin)
}

/// What a `--secure` run's clients need: the CA that signed the services'
/// certificate, and an API key (submitter, one tenant).
pub struct Secure {
    ca_pem: String,
    bearer: Bearer,
    /// The certificate and key files the services read.
    dir: tempfile::TempDir,
}

impl Secure {
    /// A CA, a certificate for 127.0.0.1 it signed, and a key in `db`.
    async fn make(db_url: &str) -> Self {
        let ca = taskwire_tests::TestCa::new("bench ca");
        let dir = tempfile::tempdir().expect("temp dir");
        ca.issue_server(dir.path());
        let store = taskwire::store::Store::connect(db_url, &Default::default())
            .await
            .expect("database");
        let (api_key, token) = taskwire::auth::ApiKey::create(
            "bench",
            taskwire::auth::Tenant::parse("bench").expect("tenant"),
            taskwire::auth::Role::Submitter,
        );
        store.insert_key(&api_key).await.expect("insert key");
        store.close().await;
        Self {
            ca_pem: ca.pem(),
            bearer: Bearer::new(Some(&token.reveal())).expect("ascii token"),
            dir,
        }
    }

    /// The services' flags: keys and TLS.
    fn flags(&self) -> Vec<String> {
        let file = |n: &str| self.dir.path().join(n).display().to_string();
        vec![
            "--auth".into(),
            "keys".into(),
            "--tls-cert".into(),
            file("server.crt"),
            "--tls-key".into(),
            file("server.key"),
        ]
    }
}

/// Where a client connects, and how.
#[derive(Clone)]
pub struct Target {
    pub addr: SocketAddr,
    secure: Option<Arc<Secure>>,
}

/// A connection the workloads call through.
pub type Conn = InterceptedService<Channel, Bearer>;

impl Deployment {
    /// The api, as clients reach it.
    pub fn api(&self) -> Target {
        Target {
            addr: self.api_addr,
            secure: self.secure.clone(),
        }
    }

    /// The watch service, as clients reach it.
    pub fn watch(&self) -> Target {
        Target {
            addr: self.watch_addr,
            secure: self.secure.clone(),
        }
    }

    /// Starts everything; `metrics`: whether the processes serve (and so record)
    /// metrics, each on a free admin port; `secure`: API keys and TLS on the api and
    /// watch.
    pub async fn start(
        db: Db,
        workers: usize,
        metrics: bool,
        nats_nodes: usize,
        secure: bool,
    ) -> Self {
        let nats = Nats::start(nats_nodes).await;
        let db = db.create().await;
        let secure = match secure {
            true => Some(Arc::new(Secure::make(&db.url).await)),
            false => None,
        };
        let extra = secure.as_ref().map(|s| s.flags()).unwrap_or_default();
        let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
        let url = nats.url();
        let replicas = nats.replicas().to_string();
        let mut addrs = free_addrs(2 + 3 + workers).into_iter();
        let (api_addr, watch_addr) = (addrs.next().unwrap(), addrs.next().unwrap());
        // Each process's admin listener, or "off".
        let mut admin = move || match metrics {
            true => addrs.next().expect("picked enough").to_string(),
            false => "off".to_string(),
        };
        let common = [
            "--nats-url",
            url.as_str(),
            "--stream-replicas",
            &replicas,
            "--database-url",
            db.url.as_str(),
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
                    "--admin-listen",
                    &admin(),
                ],
                &extra,
            ]
            .concat(),
        );
        let watch = spawn(
            "taskwire-watch",
            &[
                &common[..],
                &[
                    "--listen",
                    &watch_addr.to_string(),
                    "--admin-listen",
                    &admin(),
                ],
                &extra,
            ]
            .concat(),
        );
        let recorder = spawn(
            "taskwire-recorder",
            &[&common[..], &["--admin-listen", &admin()]].concat(),
        );
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
                        &admin(),
                    ],
                ),
            ));
        }
        let d = Self {
            nats,
            db,
            api_addr,
            watch_addr,
            secure,
            procs,
        };
        if d.secure.is_none() {
            for addr in [api_addr, watch_addr] {
                wait_serving(addr).await;
            }
        } else {
            // Health over TLS: the first call that is answered.
            let api = d.api();
            taskwire_tests::eventually("the secure api answers", || {
                let api = api.clone();
                async move {
                    let c = try_channel(&api).await.ok()?;
                    TaskServiceClient::new(c)
                        .list_tasks(taskwire::pb::v1::ListTasksRequest::default())
                        .await
                        .ok()
                }
            })
            .await;
            try_channel(&d.watch()).await.expect("watch connects");
        }
        for (role, p) in &d.procs {
            assert!(
                taskwire_tests::alive(p.id()),
                "{role} exited during start-up (its error is above)"
            );
        }
        d
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

/// One connection to `to`: TLS with the run's CA and its key when secure.
async fn try_channel(to: &Target) -> Result<Conn, tonic::transport::Error> {
    let channel = match &to.secure {
        None => {
            Channel::from_shared(format!("http://{}", to.addr))
                .expect("uri")
                .connect()
                .await?
        }
        Some(s) => {
            let tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&s.ca_pem));
            Channel::from_shared(format!("https://{}", to.addr))
                .expect("uri")
                .tls_config(tls)?
                .connect()
                .await?
        }
    };
    let bearer = to.secure.as_ref().map(|s| s.bearer.clone());
    Ok(InterceptedService::new(channel, bearer.unwrap_or_default()))
}

/// `n` connections to `to`, for clients to share.
pub async fn channels(to: &Target, n: usize) -> Vec<Conn> {
    let mut v = Vec::new();
    for _ in 0..n {
        v.push(try_channel(to).await.expect("connect"));
    }
    v
}

/// `clients` clients each submitting `per` tasks of `kind`, back to back, over 8 shared
/// connections to `addr`; returns every submit's latency.
pub async fn closed_loop(
    to: &Target,
    kind: &'static str,
    clients: usize,
    per: usize,
) -> Vec<Duration> {
    let chans = Arc::new(channels(to, 8).await);
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

/// `clients` concurrent callers each making `calls` SubmitTasks calls of `batch` tasks
/// of `kind`; every task must be accepted. Returns each call's latency.
pub async fn closed_loop_batches(
    to: &Target,
    kind: &'static str,
    clients: usize,
    calls: usize,
    batch: usize,
) -> Vec<Duration> {
    use taskwire::pb::v1::{SubmitTasksRequest, submit_tasks_result::Outcome};
    let chans = Arc::new(channels(to, 8).await);
    let tasks: Vec<_> = (0..clients)
        .map(|i| {
            let chans = chans.clone();
            tokio::spawn(async move {
                let mut c = TaskServiceClient::new(chans[i % chans.len()].clone());
                let mut lat = Vec::with_capacity(calls);
                for _ in 0..calls {
                    let tasks = (0..batch)
                        .map(|j| submit_req(kind, serde_json::json!({"i": i, "j": j})))
                        .collect();
                    let t = Instant::now();
                    let results = c
                        .submit_tasks(SubmitTasksRequest { tasks })
                        .await
                        .expect("submit a batch")
                        .into_inner()
                        .results;
                    lat.push(t.elapsed());
                    assert!(
                        results
                            .iter()
                            .all(|r| matches!(r.outcome, Some(Outcome::Accepted(_)))),
                        "every task of a batch is accepted"
                    );
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
pub async fn watch(client: &mut WatchServiceClient<Conn>, task_id: String) -> Streaming<TaskEvent> {
    client
        .watch_task(WatchTaskRequest {
            task_id,
            after_seq: 0,
            tree: false,
        })
        .await
        .expect("watch")
        .into_inner()
}
