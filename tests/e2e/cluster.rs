//! taskwire on a 3-node NATS cluster with R3 streams, run as an operator runs it:
//! two replicas of every service as real processes (api, watch, recorder, worker) on
//! PostgreSQL, each given the list of the cluster's URLs. While tasks are submitted
//! with idempotency keys and retried as a real client does, and some are watched live
//! (resuming on the other watch replica when theirs goes), the chaos, one fault per
//! stage of the load: kill -9 the work stream's leader node (twice, bringing it back),
//! an api, a worker mid-task, a recorder and a watch replica with live watchers; end
//! every database session (what a PostgreSQL restart does to its clients); then a
//! rolling restart of every service. After: every accepted task reached exactly one
//! terminal state, nothing was appended after it, the database matches each task's
//! history, and every watcher saw every event once and in order. The figures (load,
//! faults, recovery, losses, duplicate executions) are printed; TASKWIRE_CHAOS_TASKS
//! sets the size (CI runs 240; docs/reliability.md has a longer run's figures).

use std::{
    collections::{BTreeSet, HashMap},
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use taskwire::pb::v1::{
    SubmitTaskRequest, TaskEvent, TaskState, WatchTaskRequest,
    watch_service_client::WatchServiceClient,
};
use taskwire_tests::{
    Api, Db, NatsCluster, ServiceProcess, WorkerProcess, api_config, eventually, task_events,
    wait_terminal,
};

use super::submit_req;

fn tasks_to_run() -> usize {
    std::env::var("TASKWIRE_CHAOS_TASKS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(240)
}

/// How many submits are let through at each fault, so it meets submits in flight.
const HEADROOM: usize = 16;
/// Every how many tasks one is watched live.
const WATCH_EVERY: usize = 8;

/// Submits task `i` (idempotency key `chaos-<i>`), trying the api replicas in turn
/// until one accepts it, as a client does through losses; returns its id.
async fn submit_until_accepted(apis: &[SocketAddr], i: usize) -> String {
    let req = SubmitTaskRequest {
        idempotency_key: format!("chaos-{i}"),
        ..submit_req(
            "demo.sleep",
            serde_json::json!({"seconds": 1.0, "steps": 4}),
        )
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut n = 0;
    loop {
        let addr = apis[(i + n) % apis.len()];
        n += 1;
        let last = match taskwire_tests::connect(addr).await {
            Ok(mut c) => match c.submit_task(req.clone()).await {
                Ok(r) => return r.into_inner().task_id,
                Err(e) => format!("{e:?}"),
            },
            Err(e) => format!("{e:?}"),
        };
        assert!(Instant::now() < deadline, "task {i} never accepted: {last}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A live watcher of one task, as a dashboard is: WatchTask on one replica; when its
/// stream breaks, it resumes after the last seq it saw on the other. Returns every
/// event it received and how often it resumed.
async fn watch_to_the_end(
    watches: [SocketAddr; 2],
    id: String,
    first: usize,
) -> (Vec<TaskEvent>, usize) {
    // Bounded, and long enough for a task queued behind a long run's backlog.
    let deadline = Instant::now() + Duration::from_secs(600);
    let (mut events, mut resumes) = (Vec::<TaskEvent>::new(), 0);
    for replica in (first..).map(|n| watches[n % 2]) {
        assert!(
            Instant::now() < deadline,
            "watcher of {id} never saw the end"
        );
        let after_seq = events.last().map_or(0, |e| e.seq);
        if after_seq == 0 {
            // Only the snapshot of a task without events yet: a new one replaces it.
            events.clear();
        }
        let stream = async {
            let channel = tonic::transport::Channel::from_shared(format!("http://{replica}"))
                .ok()?
                .connect_timeout(Duration::from_secs(2))
                .connect()
                .await
                .ok()?;
            let mut client = WatchServiceClient::new(channel);
            let request = WatchTaskRequest {
                task_id: id.clone(),
                after_seq,
                tree: false,
            };
            Some(client.watch_task(request).await.ok()?.into_inner())
        };
        if let Ok(Some(mut stream)) = tokio::time::timeout(Duration::from_secs(5), stream).await {
            while let Ok(Some(e)) = stream.message().await {
                let end = TaskState::try_from(e.state).is_ok_and(TaskState::is_terminal);
                events.push(e);
                if end {
                    return (events, resumes);
                }
            }
        }
        resumes += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    unreachable!("the replicas never run out")
}

type Watched = (String, (Vec<TaskEvent>, usize));

/// The chaos test's load: `total` tasks from eight clients, let through up to
/// `allowed`, so each fault lands while submits are in flight and some are still to
/// come, however fast the machine is. Every [`WATCH_EVERY`]th task gets a watcher.
struct Load {
    total: usize,
    allowed: AtomicUsize,
    next: AtomicUsize,
    ids: Mutex<HashMap<usize, String>>,
    watchers: Mutex<Vec<tokio::task::JoinHandle<Watched>>>,
}

impl Load {
    fn accepted(&self) -> usize {
        self.ids.lock().unwrap().len()
    }

    fn allow(&self, up_to: usize) {
        self.allowed.store(up_to.min(self.total), Ordering::SeqCst);
    }

    /// Waits until every submit let through so far is accepted.
    async fn settled(&self) {
        eventually("every submit let through is accepted", || async {
            (self.accepted() >= self.allowed.load(Ordering::SeqCst)).then_some(())
        })
        .await;
    }

    /// One client: takes the next task number while one is let through, submits it.
    async fn submit_all(self: Arc<Self>, apis: [SocketAddr; 2], watches: [SocketAddr; 2]) {
        loop {
            let i = self.next.load(Ordering::SeqCst);
            if i >= self.total {
                return;
            }
            if i >= self.allowed.load(Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
            if self
                .next
                .compare_exchange(i, i + 1, Ordering::SeqCst, Ordering::SeqCst)
                .is_err()
            {
                continue;
            }
            let id = submit_until_accepted(&apis, i).await;
            if i.is_multiple_of(WATCH_EVERY) {
                let watcher = tokio::spawn({
                    let id = id.clone();
                    async move {
                        (
                            id.clone(),
                            watch_to_the_end(watches, id, i / WATCH_EVERY).await,
                        )
                    }
                });
                self.watchers.lock().unwrap().push(watcher);
            }
            self.ids.lock().unwrap().insert(i, id);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// What the run prints: each fault and how long the system took to take
/// [`HEADROOM`] more submits after it.
#[derive(Default)]
struct Faults(Vec<String>);

impl Faults {
    async fn record(&mut self, load: &Load, what: String, at: Instant) {
        load.settled().await;
        self.0.push(format!(
            "{what}: {HEADROOM} submits in flight accepted within {:?}",
            at.elapsed()
        ));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_lost_through_kills_of_every_part() {
    let total = tasks_to_run();
    let stage = |k: usize| total * k / 9;
    let mut cluster = NatsCluster::start(3).await;
    let db = Db::Postgres.create().await;
    let urls = cluster.urls();
    let r3 = ["--stream-replicas", "3", "--database-url", &db.url];
    let api_args = [
        &r3[..],
        &[
            "--nats-timeout",
            "2s",
            "--outbox-lease",
            "3s",
            "--outbox-poll",
            "100ms",
        ],
    ]
    .concat();
    let mut api1 = ServiceProcess::start("taskwire-api", &urls, &api_args).await;
    let mut api2 = ServiceProcess::start("taskwire-api", &urls, &api_args).await;
    let mut watch1 = ServiceProcess::start("taskwire-watch", &urls, &r3).await;
    let mut watch2 = ServiceProcess::start("taskwire-watch", &urls, &r3).await;
    let mut recorder1 = ServiceProcess::start("taskwire-recorder", &urls, &r3).await;
    let mut recorder2 = ServiceProcess::start("taskwire-recorder", &urls, &r3).await;
    let worker_args = ["--stream-replicas", "3", "--concurrency", "32"];
    let mut worker1 = WorkerProcess::spawn(&urls, &worker_args);
    let mut worker2 = WorkerProcess::spawn(&urls, &worker_args);
    let apis = [api1.addr.unwrap(), api2.addr.unwrap()];
    let watches = [watch1.addr.unwrap(), watch2.addr.unwrap()];

    let load = Arc::new(Load {
        total,
        allowed: AtomicUsize::new(stage(1)),
        next: AtomicUsize::new(0),
        ids: Mutex::default(),
        watchers: Mutex::default(),
    });
    let started = Instant::now();
    let clients: Vec<_> = (0..8)
        .map(|_| tokio::spawn(load.clone().submit_all(apis, watches)))
        .collect();

    // Each fault: wait for the stage's submits, let HEADROOM more through, strike.
    let mut faults = Faults::default();
    for k in 1..=2 {
        load.settled().await;
        let leader = cluster.leader_of(taskwire::nats::TASKS_STREAM).await;
        load.allow(stage(k) + HEADROOM);
        let at = Instant::now();
        cluster.kill(leader);
        faults
            .record(
                &load,
                format!("kill -9 NATS node n{leader}, the work stream's leader"),
                at,
            )
            .await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        cluster.restart(leader);
        load.allow(stage(k + 1));
    }

    load.settled().await;
    load.allow(stage(3) + HEADROOM);
    let at = Instant::now();
    api1.kill();
    faults
        .record(&load, "kill -9 an api replica".into(), at)
        .await;
    api1.restart().await;
    load.allow(stage(4));

    load.settled().await;
    load.allow(stage(4) + HEADROOM);
    let at = Instant::now();
    // Tasks go to whichever worker's pull is waiting: the stage's last ones may all
    // have gone to worker2. Keep a few arriving (up to the next stage) until worker1
    // runs some, so the kill always lands on a worker with tasks in hand.
    let running = eventually("the worker to be killed runs tasks", || {
        let more = (load.allowed.load(Ordering::SeqCst) + 2).min(stage(5));
        load.allow(more);
        async { worker1.tasks_running().await.filter(|n| *n > 0) }
    })
    .await;
    worker1.kill();
    faults
        .record(
            &load,
            format!("kill -9 a worker running {running} tasks"),
            at,
        )
        .await;
    let mut worker3 = WorkerProcess::spawn(&urls, &worker_args);
    load.allow(stage(5));

    load.settled().await;
    load.allow(stage(5) + HEADROOM);
    let at = Instant::now();
    recorder1.kill();
    faults
        .record(&load, "kill -9 a recorder replica".into(), at)
        .await;
    recorder1.restart().await;
    load.allow(stage(6));

    load.settled().await;
    load.allow(stage(6) + HEADROOM);
    let at = Instant::now();
    watch1.kill();
    faults
        .record(
            &load,
            "kill -9 a watch replica with live watchers".into(),
            at,
        )
        .await;
    watch1.restart().await;
    load.allow(stage(7));

    load.settled().await;
    load.allow(stage(7) + HEADROOM);
    let at = Instant::now();
    let ended = db.drop_connections().await;
    faults
        .record(
            &load,
            format!("every database session ended ({ended}), as a PostgreSQL restart does"),
            at,
        )
        .await;
    load.allow(stage(8));

    // A rolling restart: each replica stopped gracefully and started again in turn.
    load.settled().await;
    load.allow(stage(8) + HEADROOM);
    let at = Instant::now();
    for service in [
        &mut api1,
        &mut api2,
        &mut watch1,
        &mut watch2,
        &mut recorder1,
        &mut recorder2,
    ] {
        assert!(
            service.terminate().await.success(),
            "a graceful stop exits 0"
        );
        service.restart().await;
    }
    for worker in [&mut worker2, &mut worker3] {
        worker.terminate();
        assert!(
            worker.wait_exit().await.success(),
            "a graceful stop exits 0"
        );
        *worker = WorkerProcess::spawn(&urls, &worker_args);
    }
    faults
        .record(
            &load,
            "rolling restart of every api, watch, recorder and worker".into(),
            at,
        )
        .await;
    load.allow(total);

    for c in clients {
        c.await.unwrap();
    }
    // In submission order: tasks end roughly in that order, so each wait is short
    // even behind a long run's backlog.
    let ids: Vec<String> = std::collections::BTreeMap::from_iter(load.ids.lock().unwrap().clone())
        .into_values()
        .collect();
    assert_eq!(ids.len(), total, "every submit accepted");
    let client = taskwire_tests::connect(apis[1]).await.unwrap();
    for id in &ids {
        assert_eq!(
            wait_terminal(&client, id).await.state,
            TaskState::Succeeded as i32,
            "task {id}"
        );
    }
    let finished = started.elapsed();

    // Each history: one terminal event, nothing after it; the record agrees with it.
    let js = cluster.jetstream().await;
    let store = taskwire::store::Store::connect(&db.url, &Default::default())
        .await
        .unwrap();
    let mut histories = HashMap::new();
    let mut executions = 0;
    for id in &ids {
        let events = task_events(&js, id).await;
        let terminal: Vec<usize> = events
            .iter()
            .enumerate()
            .filter(|(_, (_, e))| TaskState::try_from(e.state).is_ok_and(TaskState::is_terminal))
            .map(|(i, _)| i)
            .collect();
        assert_eq!(
            terminal,
            [events.len() - 1],
            "task {id}: one terminal event, last: {events:?}"
        );
        let attempts: BTreeSet<u32> = events
            .iter()
            .filter(|(_, e)| e.state == TaskState::Running as i32)
            .map(|(_, e)| e.attempt)
            .collect();
        executions += attempts.len();
        let last_seq = events.last().unwrap().0;
        let first_start = events
            .iter()
            .find(|(_, e)| e.state == TaskState::Running as i32)
            .and_then(|(_, e)| e.time.as_ref())
            .map(taskwire::json::timestamp_to_micros);
        // The record catches up with the history: its newest event, and the start
        // time of its first RUNNING, whichever recorder applied it and when (a killed
        // recorder's batch is applied by another after the consumer's ack_wait).
        let record = eventually("the record catches up with the history", || async {
            let r = store
                .get_task(taskwire::domain::TaskId::parse(id).unwrap())
                .await
                .ok()??;
            (r.last_seq == last_seq && r.started_at_us == first_start).then_some(r)
        })
        .await;
        assert_eq!(record.state, TaskState::Succeeded, "task {id}'s record");
        histories.insert(id.clone(), events);
    }

    // Every watcher saw every event once and in order, across its resumes.
    let watchers: Vec<_> = std::mem::take(&mut *load.watchers.lock().unwrap());
    let (mut watched, mut resumes) = (0, 0);
    for w in watchers {
        let (id, (events, resumed)) = w.await.unwrap();
        super::watch::check_stream(&events, &histories[&id]);
        watched += 1;
        resumes += resumed;
    }

    println!(
        "chaos on a 3-node R3 cluster, two replicas of every service: {total} tasks accepted \
         (idempotency keys, retried across api replicas) through {} faults, all SUCCEEDED \
         in {finished:?}; lost 0; duplicate terminal states 0; executions {executions} \
         ({} re-run, the killed worker held {running}); {watched} live \
         watchers saw every event once and in order, resuming {resumes} times",
        faults.0.len(),
        executions - total,
    );
    for f in &faults.0 {
        println!("  {f}");
    }
}

/// A task runs on while the node leading its kind's consumer dies: the worker's
/// heartbeats reach the new leader, and the task is not handed to anyone else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_task_outlives_its_consumer_leader() {
    let mut cluster = NatsCluster::start(3).await;
    let db = Db::Sqlite.create().await;
    let urls = cluster.urls();
    let mut config = api_config(&urls, &db.url);
    config.streams.stream_replicas = 3;
    let api = Api::start(config).await;
    let _worker = WorkerProcess::spawn(&urls, &["--stream-replicas", "3", "--ack-wait", "3s"]);
    let mut client = api.client().await;
    let id = super::submit(
        &mut client,
        submit_req("demo.sleep", serde_json::json!({"seconds": 8, "steps": 16})),
    )
    .await;
    let js = cluster.jetstream().await;
    taskwire_tests::wait_progress(&js, &id, 0.1).await;
    let consumer = taskwire::nats::streams::kind_consumer("demo.sleep");
    let leader = eventually("the kind's consumer has a leader", || async {
        let stream = js.get_stream(taskwire::nats::TASKS_STREAM).await.ok()?;
        let mut c: async_nats::jetstream::consumer::PullConsumer =
            stream.get_consumer(&consumer).await.ok()?;
        let info = c.info().await.ok()?;
        cluster.index_of(info.cluster.as_ref()?.leader.as_ref()?)
    })
    .await;
    cluster.kill(leader);
    assert_eq!(
        wait_terminal(&client, &id).await.state,
        TaskState::Succeeded as i32
    );
    let attempts: std::collections::BTreeSet<u32> = task_events(&js, &id)
        .await
        .iter()
        .filter(|(_, e)| e.state == TaskState::Running as i32)
        .map(|(_, e)| e.attempt)
        .collect();
    assert_eq!(attempts.len(), 1, "one attempt: {attempts:?}");
}
