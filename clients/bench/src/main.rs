//! `taskwire-bench`: starts a taskwire deployment on this machine (its own nats-server,
//! a fresh SQLite file or PostgreSQL database, the service binaries as separate
//! processes) and runs named workloads with bounded counts and times, printing a table
//! and writing JSON. docs/benchmarks.md has the method and the latest figures.
//!
//! Workloads: R (raw JetStream reference), W1 (submit), W2 (end to end), W3 (round
//! trip), W4 (fan-out), W5 (footprint). Every figure is a measurement, never an assert.

use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use clap::{Parser, ValueEnum};
use futures::StreamExt;
use taskwire::{
    json,
    pb::v1::{
        SubmitTaskRequest, TaskState, WatchTaskRequest, task_service_client::TaskServiceClient,
        watch_service_client::WatchServiceClient,
    },
    store::Store,
};
use taskwire_tests::{Db, NatsServer, TestDb, workspace_bin};
use tonic::transport::Channel;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Which {
    Sqlite,
    Postgres,
    Both,
}

/// taskwire-bench: measure taskwire on this machine (loopback only, bounded).
#[derive(Debug, Parser)]
struct Args {
    /// Workloads to run, comma-separated: r,w1,w2,w3,w4,w5.
    #[arg(long, default_value = "r,w1,w2,w3,w4,w5", value_delimiter = ',')]
    workloads: Vec<String>,
    /// Database(s) to run against.
    #[arg(long, value_enum, default_value = "both")]
    db: Which,
    /// Tasks for W1 and W2, messages for R.
    #[arg(long, default_value_t = 20_000)]
    n: usize,
    /// Concurrent clients for W1 and W2.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// W1 open loop: offered submits per second, for --open-loop-secs.
    #[arg(long, default_value_t = 1_000)]
    rate: u64,
    #[arg(long, default_value_t = 10)]
    open_loop_secs: u64,
    /// W2: worker processes.
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// W3: sequential round trips.
    #[arg(long, default_value_t = 500)]
    round_trips: usize,
    /// W4: concurrent WatchTask streams over --w4-tasks tasks, which emit progress so
    /// that --w4-rate events per second are delivered to the streams in all, for
    /// --w4-secs.
    #[arg(long, default_value_t = 10_000)]
    w4_streams: usize,
    #[arg(long, default_value_t = 100)]
    w4_tasks: usize,
    #[arg(long, default_value_t = 10_000)]
    w4_rate: u64,
    #[arg(long, default_value_t = 10)]
    w4_secs: u64,
    /// Where to write the JSON results.
    #[arg(long, default_value = "bench-results.json")]
    out: PathBuf,
}

/// One measured figure.
#[derive(Debug, Clone)]
struct Figure {
    workload: &'static str,
    db: &'static str,
    metric: String,
    value: f64,
    unit: &'static str,
}

#[derive(Debug, Default)]
struct Results(Vec<Figure>);

impl Results {
    fn add(
        &mut self,
        workload: &'static str,
        db: &'static str,
        metric: impl Into<String>,
        value: f64,
        unit: &'static str,
    ) {
        let f = Figure {
            workload,
            db,
            metric: metric.into(),
            value,
            unit,
        };
        println!(
            "{:<4} {:<9} {:<44} {:>12.2} {}",
            f.workload, f.db, f.metric, f.value, f.unit
        );
        self.0.push(f);
    }

    fn latencies(
        &mut self,
        workload: &'static str,
        db: &'static str,
        what: &str,
        mut l: Vec<Duration>,
    ) {
        if l.is_empty() {
            return;
        }
        l.sort();
        let pct = |p: f64| {
            l[((l.len() as f64 * p).ceil() as usize).clamp(1, l.len()) - 1].as_secs_f64() * 1000.0
        };
        self.add(workload, db, format!("{what} p50"), pct(0.50), "ms");
        self.add(workload, db, format!("{what} p99"), pct(0.99), "ms");
        self.add(workload, db, format!("{what} p99.9"), pct(0.999), "ms");
    }
}

/// A deployment: nats-server, a database and the services as child processes.
struct Deployment {
    /// Kept for the deployment's lifetime: dropping it stops nats-server.
    _nats: NatsServer,
    db: TestDb,
    api: Child,
    api_addr: String,
    watch: Child,
    watch_addr: String,
    recorder: Child,
    workers: Vec<Child>,
}

fn free_addr() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("free port");
    l.local_addr().expect("addr").to_string()
}

fn spawn(bin: &str, args: &[&str]) -> Child {
    Command::new(workspace_bin(bin))
        .args(args)
        // Errors only: under load, sqlx's slow-acquire warnings would drown the table.
        .env("RUST_LOG", "error")
        .stdout(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("{bin}: {e}"))
}

impl Deployment {
    async fn start(db: Db, workers: usize) -> Self {
        let nats = NatsServer::start();
        let db = db.create().await;
        let url = nats.url();
        let api_addr = free_addr();
        let watch_addr = free_addr();
        let common = [
            "--nats-url",
            url.as_str(),
            "--database-url",
            db.url.as_str(),
        ];
        let api = spawn(
            "taskwire-api",
            &[
                &common[..],
                &["--listen", &api_addr, "--database-max-connections", "32"],
            ]
            .concat(),
        );
        let watch = spawn(
            "taskwire-watch",
            &[&common[..], &["--listen", &watch_addr]].concat(),
        );
        let recorder = spawn("taskwire-recorder", &common);
        let workers = (0..workers)
            .map(|_| {
                spawn(
                    "taskwire-worker",
                    &["--nats-url", &url, "--concurrency", "64"],
                )
            })
            .collect();
        for addr in [&api_addr, &watch_addr] {
            wait_serving(addr).await;
        }
        Self {
            _nats: nats,
            db,
            api,
            api_addr,
            watch,
            watch_addr,
            recorder,
            workers,
        }
    }

    fn children(&mut self) -> Vec<(&'static str, &mut Child)> {
        let mut v: Vec<(&'static str, &mut Child)> = vec![
            ("api", &mut self.api),
            ("watch", &mut self.watch),
            ("recorder", &mut self.recorder),
        ];
        for w in &mut self.workers {
            v.push(("worker", w));
        }
        v
    }
}

impl Drop for Deployment {
    fn drop(&mut self) {
        for (_, c) in self.children() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

async fn wait_serving(addr: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(ch) = Channel::from_shared(format!("http://{addr}"))
            .expect("uri")
            .connect()
            .await
        {
            let ok = tonic_health::pb::health_client::HealthClient::new(ch)
                .check(tonic_health::pb::HealthCheckRequest::default())
                .await
                .is_ok_and(|r| r.into_inner().status == 1);
            if ok {
                return;
            }
        }
        assert!(Instant::now() < deadline, "{addr} did not become ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn channels(addr: &str, n: usize) -> Vec<Channel> {
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

/// CPU seconds (user + system) a process has used so far.
fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

/// CPU seconds used so far by each part of the deployment, the database server and
/// this benchmark client: where the machine's two cores go during a workload.
fn cpu_by_part(d: &mut Deployment) -> Vec<(&'static str, f64)> {
    let mut parts: Vec<(&'static str, f64)> = Vec::new();
    let mut add = |name: &'static str, secs: f64| match parts.iter_mut().find(|(n, _)| *n == name) {
        Some((_, s)) => *s += secs,
        None => parts.push((name, secs)),
    };
    for (role, child) in d.children() {
        add(role, cpu_secs(child.id()));
    }
    if let Some(pid) = d._nats.pid() {
        add("nats-server", cpu_secs(pid));
    }
    add("bench client", cpu_secs(std::process::id()));
    let mut db = 0.0;
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        if comm.trim() == "postgres" {
            db += cpu_secs(pid);
        }
    }
    add("postgres (all)", db);
    parts
}

/// Reports each part's share of the CPU between two snapshots.
fn report_cpu(
    r: &mut Results,
    workload: &'static str,
    db: &'static str,
    before: &[(&'static str, f64)],
    after: &[(&'static str, f64)],
    wall: f64,
) {
    for ((name, b), (_, a)) in before.iter().zip(after) {
        r.add(
            workload,
            db,
            format!("CPU {name}"),
            (a - b) / wall * 100.0,
            "% of a core",
        );
    }
}

fn rss_mb(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

fn submit_req(kind: &str, input: serde_json::Value) -> SubmitTaskRequest {
    SubmitTaskRequest {
        kind: kind.into(),
        input: Some(json::json_to_value(&input)),
        ..Default::default()
    }
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let mut results = Results::default();
    let dbs: Vec<(Db, &'static str)> = match args.db {
        Which::Sqlite => vec![(Db::Sqlite, "sqlite")],
        Which::Postgres => vec![(Db::Postgres, "postgres")],
        Which::Both => vec![(Db::Sqlite, "sqlite"), (Db::Postgres, "postgres")],
    };
    let wants = |w: &str| args.workloads.iter().any(|x| x == w);
    println!(
        "{:<4} {:<9} {:<44} {:>12} unit",
        "load", "db", "metric", "value"
    );
    if wants("r") {
        raw_jetstream(&args, &mut results).await;
    }
    for (db, name) in dbs {
        let mut d = Deployment::start(db, args.workers).await;
        if wants("w5") {
            for (role, child) in d.children() {
                results.add(
                    "W5",
                    name,
                    format!("idle RSS {role}"),
                    rss_mb(child.id()),
                    "MB",
                );
            }
        }
        if wants("w1") {
            let (before, t) = (cpu_by_part(&mut d), Instant::now());
            w1_submit(&args, &d, name, &mut results).await;
            let after = cpu_by_part(&mut d);
            report_cpu(
                &mut results,
                "W1",
                name,
                &before,
                &after,
                t.elapsed().as_secs_f64(),
            );
        }
        if wants("w2") {
            let (before, t) = (cpu_by_part(&mut d), Instant::now());
            w2_end_to_end(&args, &d, name, &mut results).await;
            let after = cpu_by_part(&mut d);
            report_cpu(
                &mut results,
                "W2",
                name,
                &before,
                &after,
                t.elapsed().as_secs_f64(),
            );
        }
        if wants("w3") {
            w3_round_trip(&args, &d, name, &mut results).await;
        }
        if wants("w4") {
            w4_fan_out(&args, &mut d, name, &mut results).await;
        }
    }
    if wants("w5") {
        dev_startup(&mut results).await;
    }
    let json: Vec<serde_json::Value> = results
        .0
        .iter()
        .map(|f| serde_json::json!({"workload": f.workload, "db": f.db, "metric": f.metric, "value": f.value, "unit": f.unit}))
        .collect();
    std::fs::write(
        &args.out,
        serde_json::to_string_pretty(&json).expect("json"),
    )
    .expect("write results");
    println!("wrote {}", args.out.display());
}

/// R: the substrate's limit, measured the same way in the same run: publish + consume
/// + ack on a file-backed stream, and a publish -> consume -> ack -> reply round trip.
async fn raw_jetstream(args: &Args, r: &mut Results) {
    use async_nats::jetstream::{self, consumer::pull, stream};
    let nats = NatsServer::start();
    let client = async_nats::connect(nats.url()).await.expect("connect");
    let js = jetstream::new(client.clone());
    let s = js
        .create_stream(stream::Config {
            name: "RAW".into(),
            subjects: vec!["raw.>".into()],
            storage: stream::StorageType::File,
            ..Default::default()
        })
        .await
        .expect("stream");
    let consumer: jetstream::consumer::PullConsumer = s
        .create_consumer(pull::Config {
            durable_name: Some("raw".into()),
            ack_policy: jetstream::consumer::AckPolicy::Explicit,
            ..Default::default()
        })
        .await
        .expect("consumer");
    let n = args.n;
    let started = Instant::now();
    // Publish with up to 256 acks in flight, while consuming and acking.
    let publish = async {
        let mut acks = futures::stream::FuturesUnordered::new();
        for i in 0..n {
            let ack = js
                .publish("raw.x", bytes::Bytes::from(format!("{i}")))
                .await
                .expect("publish");
            acks.push(std::future::IntoFuture::into_future(ack));
            if acks.len() >= 256 {
                acks.next().await.expect("ack").expect("stored");
            }
        }
        while let Some(a) = acks.next().await {
            a.expect("stored");
        }
    };
    let mut messages = consumer.messages().await.expect("messages");
    let consume = async {
        for _ in 0..n {
            let m = messages.next().await.expect("message").expect("ok");
            m.ack().await.expect("ack");
        }
    };
    tokio::join!(publish, consume);
    r.add(
        "R",
        "-",
        "publish+consume+ack throughput",
        n as f64 / started.elapsed().as_secs_f64(),
        "msg/s",
    );

    // Round trip: a responder consumes, acks, and replies on core NATS.
    let responder = {
        let client = client.clone();
        tokio::spawn(async move {
            while let Some(Ok(m)) = messages.next().await {
                let reply = m
                    .headers
                    .as_ref()
                    .and_then(|h| h.get("Reply-To"))
                    .map(|v| v.to_string());
                m.ack().await.expect("ack");
                if let Some(to) = reply {
                    client
                        .publish(to, bytes::Bytes::new())
                        .await
                        .expect("reply");
                }
            }
        })
    };
    let inbox = client.new_inbox();
    let mut replies = client.subscribe(inbox.clone()).await.expect("sub");
    let mut lat = Vec::new();
    for _ in 0..args.round_trips {
        let t = Instant::now();
        let mut h = async_nats::HeaderMap::new();
        h.insert("Reply-To", inbox.as_str());
        js.publish_with_headers("raw.rt", h, bytes::Bytes::new())
            .await
            .expect("pub")
            .await
            .expect("stored");
        replies.next().await.expect("reply");
        lat.push(t.elapsed());
    }
    responder.abort();
    r.latencies("R", "-", "round trip", lat);
}

/// W1: SubmitTask alone (a kind no worker serves, so only the front door is measured).
async fn w1_submit(args: &Args, d: &Deployment, db: &'static str, r: &mut Results) {
    let chans = Arc::new(channels(&d.api_addr, 8).await);
    let per = args.n / args.concurrency;
    let started = Instant::now();
    let tasks: Vec<_> = (0..args.concurrency)
        .map(|i| {
            let chans = chans.clone();
            tokio::spawn(async move {
                let mut c = TaskServiceClient::new(chans[i % chans.len()].clone());
                let mut lat = Vec::with_capacity(per);
                for _ in 0..per {
                    let t = Instant::now();
                    c.submit_task(submit_req("bench.submit", serde_json::json!({"i": i})))
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
    let secs = started.elapsed().as_secs_f64();
    r.add(
        "W1",
        db,
        format!("submits/s (closed loop, c={})", args.concurrency),
        lat.len() as f64 / secs,
        "/s",
    );
    r.latencies("W1", db, "submit latency (closed loop)", lat);

    // Open loop: a fixed offered rate, whatever the answers do.
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / args.rate as f64));
    let end = Instant::now() + Duration::from_secs(args.open_loop_secs);
    let mut pending = Vec::new();
    let mut i = 0;
    while Instant::now() < end {
        ticker.tick().await;
        let mut c = TaskServiceClient::new(chans[i % chans.len()].clone());
        i += 1;
        pending.push(tokio::spawn(async move {
            let t = Instant::now();
            c.submit_task(submit_req("bench.submit", serde_json::json!(null)))
                .await
                .expect("submit");
            t.elapsed()
        }));
    }
    let mut lat = Vec::new();
    for p in pending {
        lat.push(p.await.expect("submit"));
    }
    r.latencies(
        "W1",
        db,
        &format!("submit latency at {}/s offered", args.rate),
        lat,
    );
}

/// W2: demo.echo tasks from submit until SUCCEEDED is recorded in the database.
async fn w2_end_to_end(args: &Args, d: &Deployment, db: &'static str, r: &mut Results) {
    let store = Store::connect(&d.db.url, &Default::default())
        .await
        .expect("store");
    let before = store
        .count_in_state(TaskState::Succeeded)
        .await
        .expect("count");
    let chans = Arc::new(channels(&d.api_addr, 8).await);
    let per = args.n / args.concurrency;
    let total = per * args.concurrency;
    let started = Instant::now();
    let tasks: Vec<_> = (0..args.concurrency)
        .map(|i| {
            let chans = chans.clone();
            tokio::spawn(async move {
                let mut c = TaskServiceClient::new(chans[i % chans.len()].clone());
                for _ in 0..per {
                    c.submit_task(submit_req("demo.echo", serde_json::json!({"i": i})))
                        .await
                        .expect("submit");
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("client");
    }
    let submitted = started.elapsed();
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let done = store
            .count_in_state(TaskState::Succeeded)
            .await
            .expect("count")
            - before;
        if done as usize >= total || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let secs = started.elapsed().as_secs_f64();
    r.add(
        "W2",
        db,
        format!(
            "tasks/s end to end ({} workers, c={})",
            args.workers, args.concurrency
        ),
        total as f64 / secs,
        "/s",
    );
    r.add(
        "W2",
        db,
        "of which submitting",
        submitted.as_secs_f64(),
        "s",
    );
}

/// W3: one at a time, submit then follow WatchTask to the terminal event.
async fn w3_round_trip(args: &Args, d: &Deployment, db: &'static str, r: &mut Results) {
    let mut tasks = TaskServiceClient::new(channels(&d.api_addr, 1).await.remove(0));
    let mut watch = WatchServiceClient::new(channels(&d.watch_addr, 1).await.remove(0));
    let (mut lat, mut submitted) = (Vec::new(), Vec::new());
    for i in 0..args.round_trips {
        let t = Instant::now();
        let id = tasks
            .submit_task(submit_req("demo.echo", serde_json::json!(i)))
            .await
            .expect("submit")
            .into_inner()
            .task_id;
        submitted.push(t.elapsed());
        let mut s = watch
            .watch_task(WatchTaskRequest {
                task_id: id,
                after_seq: 0,
            })
            .await
            .expect("watch")
            .into_inner();
        while let Some(e) = s.message().await.expect("stream") {
            if TaskState::try_from(e.state).is_ok_and(TaskState::is_terminal) {
                break;
            }
        }
        lat.push(t.elapsed());
    }
    r.latencies("W3", db, "submit -> terminal event", lat);
    r.latencies("W3", db, "of which SubmitTask answered", submitted);
}

/// W4: many WatchTask streams over a few tasks that emit progress at a set rate.
async fn w4_fan_out(args: &Args, d: &mut Deployment, db: &'static str, r: &mut Results) {
    let mut tasks = TaskServiceClient::new(channels(&d.api_addr, 1).await.remove(0));
    // Each stream should receive rate/streams events a second, so each task emits that.
    let delay_ms = (args.w4_streams as u64 * 1000 / args.w4_rate.max(1)).max(1);
    let tokens = args.w4_secs * 1000 / delay_ms;
    let mut ids = Vec::new();
    // Submitted evenly over one emission period, so the tasks' progress is spread in
    // time (the offered rate) instead of arriving as one burst per period.
    let spacing = Duration::from_millis(delay_ms) / args.w4_tasks.max(1) as u32;
    for i in 0..args.w4_tasks {
        tokio::time::sleep(spacing).await;
        let input =
            serde_json::json!({"prompt": format!("f{i}"), "tokens": tokens, "delay_ms": delay_ms});
        ids.push(
            tasks
                .submit_task(submit_req("demo.agent", input))
                .await
                .expect("submit")
                .into_inner()
                .task_id,
        );
    }
    let chans = Arc::new(channels(&d.watch_addr, 32).await);
    let started = Instant::now();
    let streams: Vec<_> = (0..args.w4_streams)
        .map(|i| {
            let chans = chans.clone();
            let id = ids[i % ids.len()].clone();
            tokio::spawn(async move {
                let mut c = WatchServiceClient::new(chans[i % chans.len()].clone());
                let mut s = c
                    .watch_task(WatchTaskRequest {
                        task_id: id,
                        after_seq: 0,
                    })
                    .await
                    .expect("watch")
                    .into_inner();
                // (receipt, latency) of each live event; when the snapshot came.
                let mut got = Vec::new();
                let mut joined = None;
                while let Ok(Some(e)) = s.message().await {
                    let now = Instant::now();
                    // The first event is the snapshot, not a live delivery.
                    if joined.is_none() {
                        joined = Some(now);
                    } else if let Some(t) = &e.time {
                        let sent = json::timestamp_to_micros(t);
                        let lat = Duration::from_micros((json::now_micros() - sent).max(0) as u64);
                        got.push((now, lat));
                    }
                    if TaskState::try_from(e.state).is_ok_and(TaskState::is_terminal) {
                        break;
                    }
                }
                (joined, got)
            })
        })
        .collect();
    // Peak resident memory of the watch process while the streams run.
    let watch_pid = d.watch.id();
    let peak_kb = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let sampler = {
        let peak_kb = peak_kb.clone();
        tokio::spawn(async move {
            loop {
                let kb = (rss_mb(watch_pid) * 1024.0) as u64;
                peak_kb.fetch_max(kb, std::sync::atomic::Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    let mut all = Vec::new();
    let mut established = started;
    for s in streams {
        let (joined, got) = s.await.expect("stream");
        established = established.max(joined.unwrap_or(started));
        all.extend(got);
    }
    sampler.abort();
    let peak = peak_kb.load(std::sync::atomic::Ordering::Relaxed) as f64 / 1024.0;
    // Steady state: from the moment the last stream had its snapshot (all M streams
    // live) to the last delivery. Start-up (M streams each reading a record at once)
    // is reported apart.
    let end = all.iter().map(|(t, _)| *t).max().unwrap_or(established);
    let steady: Vec<Duration> = all
        .iter()
        .filter(|(t, _)| *t >= established)
        .map(|(_, l)| *l)
        .collect();
    r.add(
        "W4",
        db,
        format!("all {} streams live after", args.w4_streams),
        (established - started).as_secs_f64() * 1000.0,
        "ms",
    );
    r.add(
        "W4",
        db,
        format!("events/s delivered, all {} streams live", args.w4_streams),
        steady.len() as f64 / (end - established).as_secs_f64().max(1e-3),
        "/s",
    );
    r.latencies("W4", db, "delivery latency, all streams live", steady);
    r.latencies(
        "W4",
        db,
        "delivery latency, start-up included",
        all.into_iter().map(|(_, l)| l).collect(),
    );
    r.add("W4", db, "watch peak RSS", peak, "MB");
}

/// W5: how fast `taskwire dev` answers health SERVING, nats-server start included.
async fn dev_startup(r: &mut Results) {
    let dir = std::env::temp_dir().join(format!("taskwire-bench-dev-{}", std::process::id()));
    let addr = free_addr();
    let t = Instant::now();
    let mut child = Command::new(workspace_bin("taskwire"))
        .args([
            "dev",
            "--listen",
            &addr,
            "--web-listen",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(&dir)
        .arg("--nats-server")
        .arg(taskwire_tests::venv_bin("nats-server"))
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .expect("taskwire dev");
    wait_serving(&addr).await;
    r.add(
        "W5",
        "sqlite",
        "taskwire dev start to SERVING",
        t.elapsed().as_secs_f64() * 1000.0,
        "ms",
    );
    let _ = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(dir);
}
