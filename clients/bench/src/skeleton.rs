//! S: the skeleton, the bound W1, W2 and W3 are read against. It performs the durable
//! operations any design that keeps taskwire's promises performs for a task, with the
//! least code that performs them: everything in this one process, no RPC, no
//! services, no outbox, on its own nats-server and a fresh database. What it reaches
//! on a machine is what taskwire could reach there if its own code cost nothing.
//!
//! Per task, as taskwire does it:
//! - accept: the task's row is committed (group commit: the submits waiting share one
//!   INSERT), then its message is published to a work-queue stream with its id as
//!   `Nats-Msg-Id`, and the publish's ack awaited;
//! - run: a worker pulls it, appends RUNNING and then SUCCEEDED to the events stream
//!   (each with its own `Nats-Msg-Id` and conditional on the task's last event, each
//!   ack awaited), then acks the task;
//! - record: a recorder pulls events as they come (up to 256 at once), folds them per
//!   task into one UPDATE, then acks each;
//! - watch: the events stream republishes each stored event on core NATS, and one
//!   subscriber receives them all, as a watch replica does.
//!
//! S1 accepts tasks of a kind no worker serves (W1), S2 runs them end to end until
//! every SUCCEEDED is recorded (W2), S2B does so with batches of accepts (W2B), S3
//! accepts one at a time and waits for its SUCCEEDED on the republished subject,
//! subscribed before the accept (W3's round trip with no second call).

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use async_nats::{
    HeaderMap,
    jetstream::{
        self, Context,
        consumer::{AckPolicy, PullConsumer, pull},
        stream,
    },
};
use bytes::Bytes;
use futures::StreamExt;
use sqlx::{AnyPool, Executor, any::AnyPoolOptions, pool::PoolConnection};
use taskwire::domain::TaskId;
use taskwire_tests::Db;
use tokio::sync::{mpsc, oneshot};

use crate::{Args, deployment::Nats, procfs::CpuSince, results::Results};

/// The skeleton's task states, in its own table.
const RUNNING: u8 = 1;
const SUCCEEDED: u8 = 2;
/// Most accepts sharing one INSERT, as in the api.
const MAX_BATCH: usize = 512;
/// Tasks each worker runs at once, as `taskwire-bench`'s workers.
const SLOTS: usize = 64;
/// Most events one recorder UPDATE folds.
const RECORD_BATCH: usize = 256;

/// Runs S1, S2, S2B and S3 on `db`, with `args.workers` workers.
pub async fn run(args: &Args, db: Db, name: &'static str, r: &mut Results) {
    let nats = Nats::start(args.nats_nodes.into()).await;
    let test_db = db.create().await;
    let pool = pool(&test_db.url, db).await;
    pool.execute(
        "CREATE TABLE sk_tasks (id TEXT PRIMARY KEY, kind TEXT NOT NULL, \
         input TEXT NOT NULL, state BIGINT NOT NULL, last_seq BIGINT NOT NULL, \
         created_at_us BIGINT NOT NULL, updated_at_us BIGINT NOT NULL)",
    )
    .await
    .expect("table");

    let client = taskwire::nats::connect(&nats.url(), "skeleton", Duration::from_secs(5))
        .await
        .expect("connect");
    let js = jetstream::new(client.clone());
    let (tasks, events) = streams(&js, nats.replicas()).await;

    // The parts that run and record tasks, for the whole run.
    let mut parts = tokio::task::JoinSet::new();
    let mut live = client.subscribe("sk.live.>").await.expect("subscribe");
    parts.spawn(async move { while live.next().await.is_some() {} });
    for _ in 0..args.workers {
        let (tasks, js) = (tasks.clone(), js.clone());
        parts.spawn(worker(tasks, js));
    }
    parts.spawn(recorder(events, pool.clone()));
    let inserter = Inserter::spawn(pool.acquire().await.expect("connection"));
    let processes = || -> Vec<(&'static str, u32)> {
        nats.pids()
            .into_iter()
            .map(|p| ("nats-server", p))
            .collect()
    };

    // S1: accepts only (no worker serves "none").
    let per = (args.n / args.concurrency).max(1);
    let total = per * args.concurrency;
    let cpu = CpuSince::now(processes());
    let started = Instant::now();
    let lat = closed_loop(&inserter, &js, "none", args.concurrency, per).await;
    r.add(
        "S1",
        name,
        format!("submits/s (closed loop, c={})", args.concurrency),
        total as f64 / started.elapsed().as_secs_f64(),
        "/s",
    );
    r.latencies("S1", name, "submit latency (closed loop)", lat);
    cpu.report(r, "S1", name);

    // S2 and S2B: end to end, until every SUCCEEDED is recorded; S2B's callers accept
    // batches (a batch's rows in one commit, its messages published with pipelined
    // acks), as W2B's SubmitTasks calls.
    for (load, batched) in [("S2", false), ("S2B", true)] {
        let cpu = CpuSince::now(processes());
        let before = succeeded(&pool).await;
        let started = Instant::now();
        let (total, calls) = if batched {
            let batch = usize::from(args.batch_size);
            let calls = (args.n / (args.batch_clients * batch)).max(1);
            closed_loop_batches(&inserter, &js, args.batch_clients, calls, batch).await;
            (
                calls * args.batch_clients * batch,
                format!("c={}x{batch}", args.batch_clients),
            )
        } else {
            closed_loop(&inserter, &js, "echo", args.concurrency, per).await;
            (total, format!("c={}", args.concurrency))
        };
        let submitted = started.elapsed();
        let deadline = Instant::now() + Duration::from_secs(600);
        while succeeded(&pool).await - before < total as i64 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        r.add(
            load,
            name,
            format!("tasks/s end to end ({} workers, {calls})", args.workers),
            total as f64 / started.elapsed().as_secs_f64(),
            "/s",
        );
        r.add(
            load,
            name,
            "of which submitting",
            submitted.as_secs_f64(),
            "s",
        );
        cpu.report(r, load, name);
    }

    // S3: one at a time, the terminal event heard on the republished subject.
    let mut lat = Vec::with_capacity(args.round_trips);
    for _ in 0..args.round_trips {
        let id = TaskId::new().to_string();
        let mut sub = client
            .subscribe(format!("sk.live.{id}"))
            .await
            .expect("subscribe");
        let t = Instant::now();
        accept(&inserter, &js, "echo", id).await;
        while let Some(m) = sub.next().await {
            if m.payload.first() == Some(&SUCCEEDED) {
                break;
            }
        }
        lat.push(t.elapsed());
    }
    r.latencies("S3", name, "submit -> terminal event", lat);
    parts.abort_all();
}

/// A pool on `url`; SQLite as taskwire's store opens it (WAL, fsync on every commit).
async fn pool(url: &str, db: Db) -> AnyPool {
    // Once per process, whoever asks first (taskwire's store asks too).
    sqlx::any::install_default_drivers();
    let url = match db {
        Db::Sqlite => format!("{url}?mode=rwc"),
        Db::Postgres => url.to_string(),
    };
    AnyPoolOptions::new()
        .max_connections(4)
        .after_connect(move |conn, _| {
            Box::pin(async move {
                if matches!(db, Db::Sqlite) {
                    conn.execute(
                        "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; \
                         PRAGMA busy_timeout = 5000;",
                    )
                    .await?;
                }
                Ok(())
            })
        })
        .connect(&url)
        .await
        .expect("pool")
}

/// The task stream (work queue) with its one kind's durable consumer, and the events
/// stream (republished) with the recorder's.
async fn streams(js: &Context, replicas: usize) -> (PullConsumer, PullConsumer) {
    let file = |name: &str, subjects: &str| stream::Config {
        name: name.into(),
        subjects: vec![subjects.into()],
        storage: stream::StorageType::File,
        num_replicas: replicas,
        ..Default::default()
    };
    let tasks = js
        .create_stream(stream::Config {
            retention: stream::RetentionPolicy::WorkQueue,
            ..file("SK_TASKS", "sk.tasks.>")
        })
        .await
        .expect("task stream");
    let events = js
        .create_stream(stream::Config {
            republish: Some(stream::Republish {
                source: "sk.events.>".into(),
                destination: "sk.live.>".into(),
                headers_only: false,
            }),
            ..file("SK_EVENTS", "sk.events.>")
        })
        .await
        .expect("event stream");
    let consumer = |stream: stream::Stream, name: &str, filter: &str| {
        let config = pull::Config {
            durable_name: Some(name.into()),
            filter_subject: filter.into(),
            ack_policy: AckPolicy::Explicit,
            ..Default::default()
        };
        async move { stream.create_consumer(config).await.expect("consumer") }
    };
    (
        consumer(tasks, "echo", "sk.tasks.echo").await,
        consumer(events, "recorder", "sk.events.>").await,
    )
}

/// Runs tasks, `SLOTS` at once: RUNNING, SUCCEEDED, ack.
async fn worker(tasks: PullConsumer, js: Context) {
    let messages = tasks.messages().await.expect("messages");
    messages
        .for_each_concurrent(SLOTS, |m| {
            let js = js.clone();
            async move {
                let Ok(m) = m else { return };
                let id = String::from_utf8_lossy(&m.payload).into_owned();
                let running = append(&js, &id, RUNNING, 0).await;
                append(&js, &id, SUCCEEDED, running).await;
                m.ack().await.expect("ack");
            }
        })
        .await;
}

/// Appends a task's event after its event `after` (0: its first); returns its seq.
async fn append(js: &Context, id: &str, state: u8, after: u64) -> u64 {
    let mut h = HeaderMap::new();
    h.insert("Nats-Msg-Id", format!("{id}:{state}").as_str());
    h.insert(
        "Nats-Expected-Last-Subject-Sequence",
        after.to_string().as_str(),
    );
    js.publish_with_headers(format!("sk.events.{id}"), h, Bytes::from(vec![state]))
        .await
        .expect("publish")
        .await
        .expect("stored")
        .sequence
}

/// Records events as they come: the newest per task in one UPDATE, then the acks.
async fn recorder(events: PullConsumer, pool: AnyPool) {
    let mut batches = events
        .messages()
        .await
        .expect("messages")
        .ready_chunks(RECORD_BATCH);
    while let Some(batch) = batches.next().await {
        let batch: Vec<jetstream::Message> = batch.into_iter().filter_map(Result::ok).collect();
        let mut newest: HashMap<&str, (i64, i64)> = HashMap::new();
        for m in &batch {
            let seq = m.info().expect("a JetStream message").stream_sequence as i64;
            let id = m.subject.strip_prefix("sk.events.").unwrap_or_default();
            let state = i64::from(m.payload.first().copied().unwrap_or_default());
            let e = newest.entry(id).or_insert((state, seq));
            if seq > e.1 {
                *e = (state, seq);
            }
        }
        let values: Vec<String> = (0..newest.len())
            .map(|i| format!("(${}, ${}, ${})", 3 * i + 2, 3 * i + 3, 3 * i + 4))
            .collect();
        let sql = format!(
            "WITH v(id, state, seq) AS (VALUES {}) \
             UPDATE sk_tasks SET state = v.state, last_seq = v.seq, updated_at_us = $1 \
             FROM v WHERE sk_tasks.id = v.id AND sk_tasks.last_seq < v.seq",
            values.join(", ")
        );
        // Safe: only `$n` placeholders were formatted into the statement.
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(taskwire::json::now_micros());
        for (id, (state, seq)) in &newest {
            q = q.bind(id.to_string()).bind(*state).bind(*seq);
        }
        q.execute(&pool).await.expect("record");
        for m in &batch {
            m.ack().await.expect("ack");
        }
    }
}

/// How many tasks are recorded SUCCEEDED.
async fn succeeded(pool: &AnyPool) -> i64 {
    sqlx::query_scalar("SELECT COUNT(*) FROM sk_tasks WHERE state = $1")
        .bind(i64::from(SUCCEEDED))
        .fetch_one(pool)
        .await
        .expect("count")
}

/// `clients` callers accepting `per` tasks of `kind` each, back to back; each accept's
/// latency.
async fn closed_loop(
    inserter: &Inserter,
    js: &Context,
    kind: &'static str,
    clients: usize,
    per: usize,
) -> Vec<Duration> {
    let callers = (0..clients).map(|_| async move {
        let mut lat = Vec::with_capacity(per);
        for _ in 0..per {
            let t = Instant::now();
            accept(inserter, js, kind, TaskId::new().to_string()).await;
            lat.push(t.elapsed());
        }
        lat
    });
    futures::future::join_all(callers)
        .await
        .into_iter()
        .flatten()
        .collect()
}

/// `clients` callers each accepting `calls` batches of `batch` tasks back to back.
async fn closed_loop_batches(
    inserter: &Inserter,
    js: &Context,
    clients: usize,
    calls: usize,
    batch: usize,
) {
    let callers = (0..clients).map(|_| async move {
        for _ in 0..calls {
            let ids: Vec<String> = (0..batch).map(|_| TaskId::new().to_string()).collect();
            futures::future::join_all(
                ids.iter()
                    .map(|id| inserter.insert(id.clone(), "echo".into())),
            )
            .await;
            futures::future::join_all(ids.into_iter().map(|id| publish(js, "echo", id))).await;
        }
    });
    futures::future::join_all(callers).await;
}

/// Accepts a task: its row committed, then its message stored.
async fn accept(inserter: &Inserter, js: &Context, kind: &str, id: String) {
    inserter.insert(id.clone(), kind.to_string()).await;
    publish(js, kind, id).await;
}

/// Publishes a task's message and waits for JetStream to store it.
async fn publish(js: &Context, kind: &str, id: String) {
    let mut h = HeaderMap::new();
    h.insert("Nats-Msg-Id", id.as_str());
    js.publish_with_headers(format!("sk.tasks.{kind}"), h, Bytes::from(id))
        .await
        .expect("publish")
        .await
        .expect("stored");
}

/// Group commit on one kept connection, as the api's inserter.
struct Inserter {
    tx: mpsc::Sender<(String, String, oneshot::Sender<()>)>,
}

impl Inserter {
    fn spawn(mut conn: PoolConnection<sqlx::Any>) -> Self {
        let (tx, mut rx) = mpsc::channel::<(String, String, oneshot::Sender<()>)>(4 * MAX_BATCH);
        tokio::spawn(async move {
            while let Some(first) = rx.recv().await {
                let mut jobs = vec![first];
                while jobs.len() < MAX_BATCH {
                    match rx.try_recv() {
                        Ok(j) => jobs.push(j),
                        Err(_) => break,
                    }
                }
                let rows: Vec<String> = (0..jobs.len())
                    .map(|i| format!("(${}, ${}, '{{}}', 0, 0, $1, $1)", 2 * i + 2, 2 * i + 3))
                    .collect();
                let sql = format!(
                    "INSERT INTO sk_tasks (id, kind, input, state, last_seq, created_at_us, \
                     updated_at_us) VALUES {}",
                    rows.join(", ")
                );
                // Safe: only `$n` placeholders were formatted into the statement.
                let mut q =
                    sqlx::query(sqlx::AssertSqlSafe(sql)).bind(taskwire::json::now_micros());
                for (id, kind, _) in &jobs {
                    q = q.bind(id.clone()).bind(kind.clone());
                }
                q.execute(&mut *conn).await.expect("insert");
                for (_, _, reply) in jobs {
                    let _ = reply.send(());
                }
            }
        });
        Self { tx }
    }

    async fn insert(&self, id: String, kind: String) {
        let (reply, done) = oneshot::channel();
        self.tx.send((id, kind, reply)).await.expect("inserter");
        done.await.expect("inserted");
    }
}

impl std::fmt::Debug for Inserter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Inserter")
    }
}
