//! Dead letters: a FAILED task retried runs again under the same id and succeeds, and
//! its attempt history shows both runs; a bulk retry by filter changes exactly the
//! tasks its dry run counted (not those failing after it); a bulk discard deletes
//! exactly its count; WatchTasks with state FAILED is the hook that hears each
//! dead-lettering.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use taskwire::pb::v1::{
    BulkTasksRequest, GetStatusRequest, ListAttemptsRequest, RetryTaskRequest, TaskState,
    WatchTasksRequest,
};
use taskwire_tests::{
    Api, Db, NatsServer, PATIENCE, Running, WatchServer, api_config, eventually, recorder_config,
    wait_terminal, watch_client, worker_config,
};
use taskwire_worker::{Registry, TaskFailure};
use tonic::Code;

use super::{submit, submit_req};

/// A worker whose `test.gate` fails (non-retryably, code GATE_CLOSED) until the gate
/// opens, and whose `test.broken` always fails (code BROKEN).
fn gated_worker(nats_url: &str, open: Arc<AtomicBool>) -> Running {
    let config = worker_config(nats_url);
    Running::spawn(move |stop| async move {
        let mut kinds = Registry::new();
        kinds.register("test.gate", move |ctx| {
            let open = open.clone();
            async move {
                if open.load(Ordering::SeqCst) {
                    Ok(serde_json::json!({"passed": ctx.attempt()}))
                } else {
                    Err(TaskFailure::fatal("the gate is closed").with_code("GATE_CLOSED"))
                }
            }
        });
        kinds.register("test.broken", |_| async {
            Err(TaskFailure::fatal("always").with_code("BROKEN"))
        });
        taskwire_worker::run(config, kinds, stop)
            .await
            .expect("worker runs");
    })
}

async fn a_retried_dead_letter_succeeds_with_both_runs_in_its_history(db: Db) {
    let nats = NatsServer::start();
    let db = db.create().await;
    let api = Api::start(api_config(&nats.url(), &db.url)).await;
    let _recorder = Running::recorder(recorder_config(&nats.url(), &db.url));
    let gate = Arc::new(AtomicBool::new(false));
    let _worker = gated_worker(&nats.url(), gate.clone());
    let mut client = api.client().await;

    let id = submit(&mut client, submit_req("test.gate", serde_json::json!({}))).await;
    let dead = wait_terminal(&client, &id).await;
    assert_eq!(dead.state, TaskState::Failed as i32);
    assert_eq!(dead.run, 1);
    assert_eq!(dead.error.as_ref().unwrap().code, "GATE_CLOSED");

    // Retry only FAILED tasks: a running or succeeded one is FAILED_PRECONDITION.
    let queued = submit(
        &mut client,
        submit_req("nobody.serves.this", serde_json::json!(0)),
    )
    .await;
    let e = client
        .retry_task(RetryTaskRequest { task_id: queued })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");

    gate.store(true, Ordering::SeqCst);
    let retried = client
        .retry_task(RetryTaskRequest {
            task_id: id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    // The answer is the task as it is now: run 2, started over (the worker may have
    // taken it already).
    assert_eq!(retried.run, 2);
    assert_ne!(retried.state, TaskState::Failed as i32, "{retried:?}");
    assert!(
        retried.error.is_none(),
        "a new run starts clean: {retried:?}"
    );
    // A second retry of the same run is refused: it is not FAILED any more.
    let again = client
        .retry_task(RetryTaskRequest {
            task_id: id.clone(),
        })
        .await;
    if let Err(e) = &again {
        assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    }

    let done = eventually("the second run succeeds", || {
        let mut c = client.clone();
        let id = id.clone();
        async move {
            let t = c
                .get_status(GetStatusRequest { task_id: id })
                .await
                .ok()?
                .into_inner();
            (t.state == TaskState::Succeeded as i32).then_some(t)
        }
    })
    .await;
    assert_eq!(done.run, 2);
    assert_eq!(done.attempt, 1, "attempts count from 1 in the new run");
    assert!(done.error.is_none());

    let attempts = client
        .list_attempts(ListAttemptsRequest { task_id: id })
        .await
        .unwrap()
        .into_inner()
        .attempts;
    let runs: Vec<(u32, u32, i32)> = attempts
        .iter()
        .map(|a| (a.run, a.attempt, a.outcome))
        .collect();
    assert_eq!(
        runs,
        vec![
            (1, 1, TaskState::Failed as i32),
            (2, 1, TaskState::Succeeded as i32)
        ]
    );
    assert_eq!(attempts[0].error.as_ref().unwrap().code, "GATE_CLOSED");
    for a in &attempts {
        assert!(a.worker.starts_with("taskwire-worker@"), "{a:?}");
        assert!(a.started_at.is_some() && a.ended_at.is_some(), "{a:?}");
    }
}
taskwire_tests::both_databases!(a_retried_dead_letter_succeeds_with_both_runs_in_its_history);

async fn bulk_retry_and_discard_apply_to_exactly_the_dry_run(db: Db) {
    let nats = NatsServer::start();
    let db = db.create().await;
    let api = Api::start(api_config(&nats.url(), &db.url)).await;
    let watch = WatchServer::start(&nats.url(), &db.url).await;
    let _recorder = Running::recorder(recorder_config(&nats.url(), &db.url));
    let _worker = gated_worker(&nats.url(), Arc::new(AtomicBool::new(false)));
    let mut client = api.client().await;

    // The hook: one FAILED event per dead-lettered task of the kind.
    let mut hook = watch_client(watch.addr)
        .await
        .watch_tasks(WatchTasksRequest {
            kind: "test.broken".into(),
            state: TaskState::Failed as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();

    let broken = |batch: &str| {
        let mut req = submit_req("test.broken", serde_json::json!({}));
        req.labels.insert("batch".into(), batch.into());
        req
    };
    let mut first = Vec::new();
    for _ in 0..5 {
        first.push(submit(&mut client, broken("b1")).await);
    }
    // Another label: never matched by the filter below.
    let other = submit(&mut client, broken("b2")).await;
    for id in first.iter().chain([&other]) {
        wait_terminal(&client, id).await;
    }
    let mut heard = std::collections::BTreeSet::new();
    tokio::time::timeout(PATIENCE, async {
        while heard.len() < 6 {
            let ev = hook.message().await.unwrap().expect("the hook stays open");
            assert_eq!(ev.state, TaskState::Failed as i32);
            heard.insert(ev.task_id);
        }
    })
    .await
    .expect("the hook hears every dead letter");

    let filter = || {
        let mut f = BulkTasksRequest {
            kind: "test.broken".into(),
            error_code: "BROKEN".into(),
            ..Default::default()
        };
        f.labels.insert("batch".into(), "b1".into());
        f
    };
    let dry = client
        .retry_tasks(BulkTasksRequest {
            dry_run: true,
            ..filter()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(dry.matched, 5);
    assert!(dry.task_ids.is_empty(), "a dry run changes nothing");

    // Three more fail after the dry run: not counted, so not retried.
    let mut later = Vec::new();
    for _ in 0..3 {
        later.push(submit(&mut client, broken("b1")).await);
    }
    for id in &later {
        wait_terminal(&client, id).await;
    }
    // Without the dry run's moment a real run is refused.
    let e = client.retry_tasks(filter()).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    // In two calls of at most 3.
    let mut retried = Vec::new();
    for call in 0..2 {
        let r = client
            .retry_tasks(BulkTasksRequest {
                finished_before: dry.finished_before,
                limit: 3,
                ..filter()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.matched as usize, r.task_ids.len());
        retried.extend(r.task_ids);
        if call == 1 {
            assert_eq!(r.remaining, 0);
        }
    }
    retried.sort();
    let mut expected = first.clone();
    expected.sort();
    assert_eq!(retried, expected, "exactly the tasks the dry run counted");
    for id in &later {
        let t = client
            .get_status(GetStatusRequest {
                task_id: id.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(t.run, 1, "failed after the dry run: left alone");
    }
    // The retried ones fail again (test.broken always does), in run 2.
    for id in &first {
        let t = eventually("the second run ends", || {
            let mut c = client.clone();
            let id = id.clone();
            async move {
                let t = c
                    .get_status(GetStatusRequest { task_id: id })
                    .await
                    .ok()?
                    .into_inner();
                (t.run == 2 && t.state == TaskState::Failed as i32).then_some(t)
            }
        })
        .await;
        assert_eq!(t.attempt, 1);
    }

    // Discard: the dry run counts the b1 dead letters now (the 5 again and the later
    // 3); the real run deletes exactly those, and the b2 one stays.
    tokio::time::sleep(Duration::from_millis(10)).await;
    let dry = client
        .discard_tasks(BulkTasksRequest {
            dry_run: true,
            ..filter()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(dry.matched, 8);
    let gone = client
        .discard_tasks(BulkTasksRequest {
            finished_before: dry.finished_before,
            ..filter()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(gone.matched, 8);
    assert_eq!(gone.remaining, 0);
    for id in first.iter().chain(&later) {
        let e = client
            .get_status(GetStatusRequest {
                task_id: id.clone(),
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::NotFound);
    }
    client
        .get_status(GetStatusRequest { task_id: other })
        .await
        .expect("another batch's dead letter stays");
}
taskwire_tests::both_databases!(bulk_retry_and_discard_apply_to_exactly_the_dry_run);
