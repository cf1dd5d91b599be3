//! WatchTask: the contract's stream semantics, resume without gaps (also on another
//! replica after a kill), fan-out to many watchers, and a slow watcher that slows
//! nobody (guarantee 4).

use std::time::Duration;

use futures::future::join_all;
use taskwire::pb::v1::{TaskEvent, TaskState, WatchTaskRequest};
use taskwire_tests::{
    Db, Stack, WatchServer, both_databases, task_events, wait_progress, wait_terminal, watch_all,
    watch_client,
};
use tonic::Code;

use super::submit_req;

fn terminal(e: &TaskEvent) -> bool {
    TaskState::try_from(e.state).is_ok_and(TaskState::is_terminal)
}

/// Checks one stream: seqs strictly increase, progress never goes back within an
/// attempt, it ends with exactly one terminal event, and after the first (snapshot)
/// event it is exactly the task's stored history.
pub(super) fn check_stream(
    events: &[TaskEvent],
    history: &[(u64, taskwire::pb::internal::v1::Event)],
) {
    assert!(!events.is_empty());
    assert!(
        events.windows(2).all(|w| w[0].seq < w[1].seq),
        "seq strictly increases: {:?}",
        events
            .iter()
            .map(|e| (e.seq, e.state, e.attempt))
            .collect::<Vec<_>>()
    );
    let fractions: Vec<(u32, f64)> = events
        .iter()
        .filter(|e| e.state == TaskState::Running as i32)
        .filter_map(|e| e.progress.as_ref().map(|p| (e.attempt, p.fraction)))
        .collect();
    assert!(
        fractions
            .windows(2)
            .all(|w| w[0].0 != w[1].0 || w[0].1 <= w[1].1),
        "progress never goes backwards: {fractions:?}"
    );
    assert_eq!(events.iter().filter(|e| terminal(e)).count(), 1);
    assert!(
        terminal(events.last().unwrap()),
        "ends right after the terminal event"
    );
    let after: Vec<u64> = history
        .iter()
        .map(|(s, _)| *s)
        .filter(|s| *s > events[0].seq)
        .collect();
    let got: Vec<u64> = events[1..].iter().map(|e| e.seq).collect();
    assert_eq!(got, after, "nothing skipped, nothing twice");
}

async fn watchers_before_during_after_agree(db: Db) {
    let stack = Stack::start(db).await;
    let watch = WatchServer::start(&stack.nats.url(), &stack.db.url).await;
    let mut client = stack.client().await;
    let js = stack.nats.jetstream().await;
    let id = super::submit(
        &mut client,
        submit_req(
            "demo.agent",
            serde_json::json!({"prompt": "w", "tokens": 20, "delay_ms": 30}),
        ),
    )
    .await;

    let before = tokio::spawn({
        let mut c = watch.client().await;
        let id = id.clone();
        async move { watch_all(&mut c, &id, 0).await }
    });
    wait_progress(&js, &id, 0.25).await;
    let during = tokio::spawn({
        let mut c = watch.client().await;
        let id = id.clone();
        async move { watch_all(&mut c, &id, 0).await }
    });
    let final_task = wait_terminal(&client, &id).await;
    let after = watch_all(&mut watch.client().await, &id, 0).await;
    let before = before.await.unwrap();
    let during = during.await.unwrap();

    let history = task_events(&js, &id).await;
    for (name, events) in [("before", &before), ("during", &during), ("after", &after)] {
        check_stream(events, &history);
        let last = events.last().unwrap();
        assert_eq!(last.state, TaskState::Succeeded as i32, "{name}");
        assert_eq!(
            last.output, final_task.output,
            "{name} sees the final output"
        );
        assert_eq!(last.seq, history.last().unwrap().0, "{name}");
    }
    assert!(before.len() > during.len(), "the early watcher saw the run");
    assert_eq!(after.len(), 1, "after the end: just the final state");

    // Resume: after_seq = N gives exactly the events after N.
    for (seq, _) in history.iter().step_by(5) {
        let resumed = watch_all(&mut watch.client().await, &id, *seq).await;
        let want: Vec<u64> = history
            .iter()
            .map(|(s, _)| *s)
            .filter(|s| s > seq)
            .collect();
        assert_eq!(
            resumed.iter().map(|e| e.seq).collect::<Vec<_>>(),
            want,
            "after_seq {seq}"
        );
    }

    // Resuming at the terminal event's seq: nothing more, and the stream ends.
    let at_end = watch_all(&mut watch.client().await, &id, history.last().unwrap().0).await;
    assert!(at_end.is_empty(), "{at_end:?}");

    // Unknown and malformed ids.
    let unknown = uuid::Uuid::now_v7().to_string();
    let e = watch
        .client()
        .await
        .watch_task(WatchTaskRequest {
            task_id: unknown,
            after_seq: 0,
            tree: false,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    let e = watch
        .client()
        .await
        .watch_task(WatchTaskRequest {
            task_id: "x".into(),
            after_seq: 0,
            tree: false,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
}

async fn resume_on_another_replica_after_a_kill(db: Db) {
    let stack = Stack::start(db).await;
    let first = WatchServer::start(&stack.nats.url(), &stack.db.url).await;
    let second = WatchServer::start(&stack.nats.url(), &stack.db.url).await;
    let mut client = stack.client().await;
    let id = super::submit(
        &mut client,
        submit_req(
            "demo.agent",
            serde_json::json!({"prompt": "r", "tokens": 40, "delay_ms": 25}),
        ),
    )
    .await;

    let mut stream = first
        .client()
        .await
        .watch_task(WatchTaskRequest {
            task_id: id.clone(),
            after_seq: 0,
            tree: false,
        })
        .await
        .unwrap()
        .into_inner();
    let mut seen = Vec::new();
    while seen.len() < 8 {
        seen.push(stream.message().await.unwrap().expect("an event"));
    }
    first.kill();
    // The broken stream ends with an error (or nothing more) once the replica is gone.
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        while let Ok(Some(e)) = stream.message().await {
            seen.push(e);
        }
    })
    .await;

    let last = seen.last().unwrap().seq;
    let rest = watch_all(&mut second.client().await, &id, last).await;
    let mut all = seen.clone();
    all.extend(rest);
    check_stream(&all, &task_events(&stack.nats.jetstream().await, &id).await);
}

async fn a_thousand_watchers(db: Db) {
    let stack = Stack::start_with(db, |url| {
        let mut c = taskwire_tests::worker_config(url);
        c.concurrency = 64;
        c
    })
    .await;
    let watch = WatchServer::start(&stack.nats.url(), &stack.db.url).await;
    let mut client = stack.client().await;
    // Several connections, as many clients would have.
    let mut clients = Vec::new();
    for _ in 0..10 {
        clients.push(watch_client(watch.addr).await);
    }

    // 1,000 watchers of one task.
    let one = super::submit(
        &mut client,
        submit_req(
            "demo.agent",
            serde_json::json!({"prompt": "k", "tokens": 30, "delay_ms": 50}),
        ),
    )
    .await;
    let watchers = (0..1000).map(|i| {
        let mut c = clients[i % clients.len()].clone();
        let id = one.clone();
        tokio::spawn(async move { watch_all(&mut c, &id, 0).await })
    });
    let results = join_all(watchers).await;
    let history = task_events(&stack.nats.jetstream().await, &one).await;
    for r in results {
        check_stream(&r.unwrap(), &history);
    }

    // 1,000 watchers of 1,000 tasks.
    let mut ids = Vec::new();
    for i in 0..1000 {
        ids.push(
            super::submit(
                &mut client,
                submit_req(
                    "demo.agent",
                    serde_json::json!({"prompt": format!("t{i}"), "tokens": 3, "delay_ms": 1}),
                ),
            )
            .await,
        );
    }
    let watchers = ids.iter().enumerate().map(|(i, id)| {
        let mut c = clients[i % clients.len()].clone();
        let id = id.clone();
        tokio::spawn(async move { watch_all(&mut c, &id, 0).await })
    });
    let results = join_all(watchers).await;
    let js = stack.nats.jetstream().await;
    for (id, r) in ids.iter().zip(results) {
        let events = r.unwrap();
        assert_eq!(
            events.last().unwrap().state,
            TaskState::Succeeded as i32,
            "{id}"
        );
        check_stream(&events, &task_events(&js, id).await);
    }
}

async fn a_watcher_that_never_reads_slows_nobody(db: Db) {
    let stack = Stack::start(db).await;
    let watch = WatchServer::start(&stack.nats.url(), &stack.db.url).await;
    let mut client = stack.client().await;
    let id = super::submit(
        &mut client,
        submit_req(
            "demo.agent",
            serde_json::json!({"prompt": "s", "tokens": 2000, "delay_ms": 0}),
        ),
    )
    .await;
    // The slow one: opens its stream and reads nothing while the task runs.
    let mut slow = watch
        .client()
        .await
        .watch_task(WatchTaskRequest {
            task_id: id.clone(),
            after_seq: 0,
            tree: false,
        })
        .await
        .unwrap()
        .into_inner();
    let fast = watch_all(&mut watch.client().await, &id, 0).await;
    let history = task_events(&stack.nats.jetstream().await, &id).await;
    check_stream(&fast, &history);

    // Now it reads: it was caught up from the stream, in order, nothing missing.
    let mut late = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(e) = slow.message().await.unwrap() {
            late.push(e);
        }
    })
    .await
    .expect("the slow stream completes");
    check_stream(&late, &history);
}

both_databases!(
    watchers_before_during_after_agree,
    resume_on_another_replica_after_a_kill,
    a_thousand_watchers,
    a_watcher_that_never_reads_slows_nobody
);

/// WatchTasks: one stream for many tasks, filtered by kind and labels.
async fn watch_tasks_follows_many_tasks(db: Db) {
    use std::collections::HashMap;
    use taskwire::pb::v1::{SubmitTaskRequest, WatchTasksRequest};
    let stack = Stack::start(db).await;
    let watch = WatchServer::start(&stack.nats.url(), &stack.db.url).await;
    let client = stack.client().await;

    let open = |kind: &str, labels: &[(&str, &str)]| {
        let req = WatchTasksRequest {
            kind: kind.to_string(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            state: 0,
        };
        let addr = watch.addr;
        async move {
            watch_client(addr)
                .await
                .watch_tasks(req)
                .await
                .unwrap()
                .into_inner()
        }
    };
    let mut all = open("", &[]).await;
    let mut sleeps = open("demo.sleep", &[]).await;
    let mut ml = open("", &[("team", "ml")]).await;

    let submit = |kind: &str, team: &str| {
        let req = SubmitTaskRequest {
            labels: HashMap::from([("team".to_string(), team.to_string())]),
            ..submit_req(kind, serde_json::json!({"seconds": 0.1, "steps": 2}))
        };
        let mut c = client.clone();
        async move { super::submit(&mut c, req).await }
    };
    let echo_web = submit("demo.echo", "web").await;
    let sleep_ml = submit("demo.sleep", "ml").await;
    let sleep_web = submit("demo.sleep", "web").await;
    for id in [&echo_web, &sleep_ml, &sleep_web] {
        wait_terminal(&stack.client().await, id).await;
    }

    /// Reads until every named task has sent its terminal event.
    async fn until_done(
        s: &mut tonic::Streaming<TaskEvent>,
        ids: &[&String],
    ) -> HashMap<String, Vec<TaskEvent>> {
        let mut got: HashMap<String, Vec<TaskEvent>> = HashMap::new();
        tokio::time::timeout(Duration::from_secs(20), async {
            while !ids
                .iter()
                .all(|id| got.get(*id).is_some_and(|v| v.last().is_some_and(terminal)))
            {
                let e = s.message().await.unwrap().expect("stream open");
                got.entry(e.task_id.clone()).or_default().push(e);
            }
        })
        .await
        .expect("all terminal events arrive");
        got
    }
    let js = stack.nats.jetstream().await;
    let got = until_done(&mut all, &[&echo_web, &sleep_ml, &sleep_web]).await;
    for (id, events) in &got {
        let history: Vec<u64> = task_events(&js, id).await.iter().map(|(s, _)| *s).collect();
        assert_eq!(
            events.iter().map(|e| e.seq).collect::<Vec<_>>(),
            history,
            "{id}: every live event, in order"
        );
    }
    let got = until_done(&mut sleeps, &[&sleep_ml, &sleep_web]).await;
    assert!(!got.contains_key(&echo_web), "kind filter");
    let got = until_done(&mut ml, &[&sleep_ml]).await;
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        vec![&sleep_ml],
        "label filter"
    );

    let e = watch_client(watch.addr)
        .await
        .watch_tasks(WatchTasksRequest {
            kind: "Bad Kind".into(),
            labels: HashMap::new(),
            state: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
}

both_databases!(watch_tasks_follows_many_tasks);

/// A graceful stop ends open streams at once with a resumable UNAVAILABLE, instead of
/// waiting for their clients to leave.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_open_streams() {
    let stack = Stack::start(Db::Sqlite).await;
    let watch = WatchServer::start(&stack.nats.url(), &stack.db.url).await;
    let mut client = stack.client().await;
    let id = super::submit(
        &mut client,
        submit_req(
            "demo.sleep",
            serde_json::json!({"seconds": 60, "steps": 60}),
        ),
    )
    .await;
    let mut stream = watch
        .client()
        .await
        .watch_task(WatchTaskRequest {
            task_id: id,
            after_seq: 0,
            tree: false,
        })
        .await
        .unwrap()
        .into_inner();
    stream.message().await.unwrap().expect("the snapshot");
    tokio::time::timeout(Duration::from_secs(10), watch.stop())
        .await
        .expect("the server stops although a stream is open");
    let end = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match stream.message().await {
                Ok(Some(_)) => continue,
                other => return other,
            }
        }
    })
    .await
    .expect("the stream ends");
    let status = end.expect_err("ended with a status");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(status.message().contains("after_seq"), "{status:?}");
}
