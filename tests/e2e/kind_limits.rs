//! A kind's limit on tasks running at once holds across workers: with
//! `--max-running demo.sleep=2` on one of three workers (16 slots each), never more
//! than two demo.sleep tasks run at once, and two do. A worker started without the
//! flag keeps the limit; `=0` lifts it.

use taskwire::{
    domain::TaskId,
    nats::kind_consumer,
    pb::v1::{GetQueueStatsRequest, TaskState},
    store::Store,
};
use taskwire_tests::{
    Api, Db, NatsServer, Running, api_config, eventually, recorder_config, wait_terminal,
    worker_config,
};
use taskwire_worker::config::KindLimit;

use super::{submit, submit_req};

fn limited(nats_url: &str, max: u32) -> taskwire_worker::Config {
    let mut config = worker_config(nats_url);
    config.max_running = vec![KindLimit {
        kind: "demo.sleep".into(),
        max,
    }];
    config
}

/// The demo.sleep consumer's (max_ack_pending, pull requests waiting).
async fn consumer(nats: &NatsServer) -> Option<(i64, usize)> {
    let js = nats.jetstream().await;
    let stream = js.get_stream("TASKWIRE_TASKS").await.ok()?;
    let info = stream
        .consumer_info(kind_consumer("demo.sleep"))
        .await
        .ok()?;
    Some((info.config.max_ack_pending, info.num_waiting))
}

async fn consumer_limit(nats: &NatsServer) -> Option<i64> {
    consumer(nats).await.map(|(limit, _)| limit)
}

/// The most intervals open at one instant (an end at t closes before a start at t).
fn most_at_once(intervals: &[(i64, i64)]) -> usize {
    let mut edges: Vec<(i64, i32)> = intervals
        .iter()
        .flat_map(|&(start, end)| [(start, 1), (end, -1)])
        .collect();
    edges.sort();
    let (mut now, mut most) = (0i32, 0i32);
    for (_, d) in edges {
        now += d;
        most = most.max(now);
    }
    most as usize
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kind_limited_to_two_never_runs_three_at_once() {
    let nats = NatsServer::start();
    let db = Db::Sqlite.create().await;
    let api = Api::start(api_config(&nats.url(), &db.url)).await;
    let _recorder = Running::recorder(recorder_config(&nats.url(), &db.url));
    // The first worker sets the limit; the two started after it, without the flag,
    // must keep it.
    let first = Running::worker(limited(&nats.url(), 2));
    eventually("the first worker sets the limit", || async {
        (consumer_limit(&nats).await == Some(2)).then_some(())
    })
    .await;
    let others = [
        Running::worker(worker_config(&nats.url())),
        Running::worker(worker_config(&nats.url())),
    ];
    // Every idle worker holds a pull request on the kind's consumer.
    eventually("all three workers pull", || async {
        consumer(&nats).await.filter(|&(_, pulls)| pulls >= 3)
    })
    .await;
    assert_eq!(consumer_limit(&nats).await, Some(2));

    let mut client = api.client().await;
    let mut ids = Vec::new();
    for _ in 0..9 {
        let req = submit_req(
            "demo.sleep",
            serde_json::json!({"seconds": 0.5, "steps": 2}),
        );
        ids.push(submit(&mut client, req).await);
    }
    let stats = client
        .get_queue_stats(GetQueueStatsRequest::default())
        .await
        .unwrap()
        .into_inner();
    let sleep = stats.kinds.iter().find(|k| k.kind == "demo.sleep").unwrap();
    assert_eq!(sleep.max_running, 2);
    assert!(sleep.running <= 2, "{sleep:?}");

    for id in &ids {
        let t = wait_terminal(&client, id).await;
        assert_eq!(t.state, TaskState::Succeeded as i32, "{t:?}");
    }
    // Each task's run, from its first RUNNING to its end, as the records hold them.
    let store = Store::connect(&db.url, &Default::default()).await.unwrap();
    let mut runs = Vec::new();
    for id in &ids {
        let run = eventually("the recorder stores the run", || {
            let store = store.clone();
            let id = TaskId::parse(id).unwrap();
            async move {
                let r = store.get_task(id).await.unwrap()?;
                Some((r.started_at_us?, r.finished_at_us?))
            }
        })
        .await;
        runs.push(run);
    }
    assert_eq!(
        most_at_once(&runs),
        2,
        "at most two at once, and two did run together: {runs:?}"
    );

    // `=0` lifts the limit (a restarted worker with it).
    drop(others);
    first.stop().await;
    let _lifted = Running::worker(limited(&nats.url(), 0));
    eventually("the limit is lifted", || async {
        (consumer_limit(&nats).await == Some(taskwire::nats::streams::UNLIMITED_RUNNING))
            .then_some(())
    })
    .await;
    let stats = client
        .get_queue_stats(GetQueueStatsRequest::default())
        .await
        .unwrap()
        .into_inner();
    let sleep = stats.kinds.iter().find(|k| k.kind == "demo.sleep").unwrap();
    assert_eq!(sleep.max_running, 0, "no limit");
}

#[test]
fn overlap_counting() {
    assert_eq!(most_at_once(&[(0, 10), (10, 20)]), 1);
    assert_eq!(most_at_once(&[(0, 10), (5, 20), (6, 7)]), 3);
    assert_eq!(most_at_once(&[]), 0);
}

/// `--max-rate demo.echo=4`: the worker starts at most 4 a second (after a burst of
/// 4), so 12 tasks that would otherwise all start at once take at least 2 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_paces_a_kind_by_its_rate() {
    let nats = NatsServer::start();
    let db = Db::Sqlite.create().await;
    let api = Api::start(api_config(&nats.url(), &db.url)).await;
    let _recorder = Running::recorder(recorder_config(&nats.url(), &db.url));
    let mut config = worker_config(&nats.url());
    config.max_rate = vec![KindLimit {
        kind: "demo.echo".into(),
        max: 4,
    }];
    let _worker = Running::worker(config);
    let mut client = api.client().await;
    let mut ids = Vec::new();
    for i in 0..12 {
        ids.push(submit(&mut client, submit_req("demo.echo", serde_json::json!(i))).await);
    }
    let store = Store::connect(&db.url, &Default::default()).await.unwrap();
    let mut starts = Vec::new();
    for id in &ids {
        wait_terminal(&client, id).await;
        let started = eventually("the recorder stores the start", || {
            let store = store.clone();
            let id = TaskId::parse(id).unwrap();
            async move { store.get_task(id).await.unwrap()?.started_at_us }
        })
        .await;
        starts.push(started);
    }
    starts.sort();
    let span = starts[11] - starts[0];
    assert!(
        span >= 1_800_000,
        "12 starts at 4/s (burst 4) take 2 s, took {span} µs"
    );
    // In any one second: at most the burst and a second's worth.
    for (i, &s) in starts.iter().enumerate() {
        let in_window = starts[i..].iter().filter(|&&t| t < s + 1_000_000).count();
        assert!(in_window <= 8, "{in_window} starts within a second of {s}");
    }
}
