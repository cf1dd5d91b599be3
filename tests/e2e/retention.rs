//! Retention: terminal tasks past their state's age are deleted, with their labels;
//! nothing else is. One test drives the store's batches against a cut-off between two
//! groups of finished tasks; one runs the recorder's loop with short ages.

use std::time::Duration;

use taskwire::{
    config::KeepFor,
    domain::TaskId,
    pb::v1::{GetStatusRequest, ListTasksRequest, TaskState},
    store::{Retention, Store},
};
use taskwire_tests::{Db, Running, Stack, eventually, recorder_config, wait_terminal};
use tokio_util::sync::CancellationToken;

use super::{submit, submit_req};

/// Submits `kind` with `label` and waits until it is terminal; returns its id.
async fn finished(stack: &Stack, kind: &str, label: &str) -> String {
    let mut client = stack.client().await;
    let mut req = submit_req(kind, serde_json::json!({}));
    req.labels.insert("group".into(), label.into());
    let id = submit(&mut client, req).await;
    wait_terminal(&client, &id).await;
    id
}

async fn retention_removes_exactly_the_expired(db: Db) {
    let stack = Stack::start(db).await;
    let store = Store::connect(&stack.db.url, &Default::default())
        .await
        .unwrap();
    let mut client = stack.client().await;

    // Group A finishes, then (after the cut-off) group B. A queued task of a kind no
    // worker serves is older than both but not finished: never expired.
    let queued = submit(
        &mut client,
        submit_req("nobody.serves.it", serde_json::json!(0)),
    )
    .await;
    let mut a_ok = Vec::new();
    for _ in 0..5 {
        a_ok.push(finished(&stack, "demo.echo", "a").await);
    }
    let a_failed = finished(&stack, "demo.fail", "a").await;
    // Every record must show its end before the cut-off is read from them.
    let finished_at = |id: String| {
        let store = store.clone();
        async move {
            eventually("the recorder stores the end", || {
                let store = store.clone();
                let id = id.clone();
                async move {
                    store
                        .get_task(TaskId::parse(&id).unwrap())
                        .await
                        .unwrap()
                        .and_then(|r| r.finished_at_us)
                }
            })
            .await
        }
    };
    let mut a_last = 0;
    for id in a_ok.iter().chain([&a_failed]) {
        a_last = a_last.max(finished_at(id.clone()).await);
    }
    tokio::time::sleep(Duration::from_millis(20)).await;
    let cut_off = taskwire::json::now_micros();
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(a_last < cut_off);
    let b_ok = finished(&stack, "demo.echo", "b").await;
    assert!(finished_at(b_ok.clone()).await > cut_off);

    // SUCCEEDED before the cut-off, two per batch: all five of group A, nothing else.
    let mut deleted = 0;
    loop {
        let n = store
            .expire_tasks(TaskState::Succeeded, cut_off, 2)
            .await
            .unwrap();
        assert!(n <= 2, "a batch deletes at most its size");
        deleted += n;
        if n < 2 {
            break;
        }
    }
    assert_eq!(deleted, 5);
    for id in &a_ok {
        let gone = client
            .get_status(GetStatusRequest {
                task_id: id.clone(),
            })
            .await
            .unwrap_err();
        assert_eq!(gone.code(), tonic::Code::NotFound, "{id} expired");
    }
    for id in [&a_failed, &b_ok, &queued] {
        client
            .get_status(GetStatusRequest {
                task_id: id.clone(),
            })
            .await
            .unwrap_or_else(|e| panic!("{id} is kept: {e:?}"));
    }
    // Their labels went with them.
    let mut by_label = ListTasksRequest::default();
    by_label.labels.insert("group".into(), "a".into());
    let left: Vec<String> = client
        .list_tasks(by_label)
        .await
        .unwrap()
        .into_inner()
        .tasks
        .into_iter()
        .map(|t| t.id)
        .collect();
    assert_eq!(left, vec![a_failed.clone()]);
    // FAILED has its own age: the same cut-off takes the failed task of group A only.
    assert_eq!(
        store
            .expire_tasks(TaskState::Failed, cut_off, 100)
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        store
            .expire_tasks(TaskState::Succeeded, cut_off, 100)
            .await
            .unwrap(),
        0,
        "a second pass finds nothing"
    );
}
taskwire_tests::both_databases!(retention_removes_exactly_the_expired);

/// The recorder's own loop with short ages: a succeeded task goes, a failed one (kept
/// longer) stays, and the counter says how many went.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_recorder_expires_tasks_by_state() {
    let mut stack = Stack::start(Db::Sqlite).await;
    let ok = finished(&stack, "demo.echo", "x").await;
    let failed = finished(&stack, "demo.fail", "x").await;
    // The stack's recorder with retention off for the first part: restart it with ages.
    stack.recorder.take().unwrap().stop().await;
    let mut config = recorder_config(&stack.nats.url(), &stack.db.url);
    config.retain_succeeded = KeepFor(Some(Duration::from_secs(1)));
    config.retain_failed = KeepFor(Some(Duration::from_secs(3600)));
    config.retain_cancelled = KeepFor(None);
    config.retention_interval = Duration::from_millis(200);
    stack.recorder = Some(Running::recorder(config));
    let client = stack.client().await;
    eventually("the succeeded task expires", || {
        let mut c = client.clone();
        let id = ok.clone();
        async move {
            match c.get_status(GetStatusRequest { task_id: id }).await {
                Err(e) if e.code() == tonic::Code::NotFound => Some(()),
                _ => None,
            }
        }
    })
    .await;
    let kept = client
        .clone()
        .get_status(GetStatusRequest { task_id: failed })
        .await
        .expect("the failed task is kept for an hour");
    assert_eq!(kept.into_inner().state, TaskState::Failed as i32);

    // A pass with nothing expired deletes nothing.
    let store = Store::connect(&stack.db.url, &Default::default())
        .await
        .unwrap();
    let retention = Retention {
        succeeded: Some(Duration::from_secs(3600)),
        failed: Some(Duration::from_secs(3600)),
        cancelled: Some(Duration::from_secs(3600)),
    };
    let n = taskwire_recorder::retention::pass(&store, &retention, 10, &CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(n, 0);
}
