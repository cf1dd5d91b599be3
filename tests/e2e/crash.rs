//! The api dies between commit and publish, or between publish and cleanup, or its
//! publish is not confirmed: the outbox relay still puts exactly one message in the
//! stream, and no caller is told UNAVAILABLE about a task that runs (guarantee 1).

use taskwire::{
    domain::TaskId,
    pb::v1::{GetStatusRequest, SubmitTasksRequest, TaskState, submit_tasks_result::Outcome},
    store::Store,
};
use taskwire_tests::{
    Api, ApiProcess, Db, NatsServer, Running, api_config, both_databases, connect, eventually,
    recorder_config, task_events, tasks_in_stream, wait_outbox_cleared, wait_terminal,
    worker_config,
};

use super::submit_req;

/// Submits through an api process that aborts at `fault`; returns the one task row.
async fn submit_into_crash(nats: &NatsServer, db_url: &str, fault: &str) -> TaskId {
    let mut api = ApiProcess::spawn(&nats.url(), db_url, &[("TASKWIRE_FAULT", fault)]).await;
    let mut client = connect(api.addr).await.unwrap();
    let answer = client
        .submit_task(submit_req("demo.echo", serde_json::json!({"crash": fault})))
        .await;
    assert!(answer.is_err(), "the process died before answering");
    let status = api.wait_exit().await;
    assert!(!status.success(), "it aborted: {status:?}");

    let store = Store::connect(db_url, &Default::default()).await.unwrap();
    let (rows, _) = store
        .list_tasks(&taskwire::store::ListQuery {
            page_size: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(rows.len(), 1, "the task was committed before the crash");
    assert!(
        store.in_outbox(rows[0].id).await.unwrap(),
        "and its outbox row is left"
    );
    rows[0].id
}

async fn crash_after_commit_is_relayed(db: Db) {
    let nats = NatsServer::start();
    let db = db.create().await;
    let id = submit_into_crash(&nats, &db.url, "abort-after-commit").await;
    let js = nats.jetstream().await;
    assert!(
        tasks_in_stream(&js).await.is_empty(),
        "nothing was published before the crash"
    );

    // Another api (any replica) relays it once the dead submitter's lease runs out.
    let api = Api::start(api_config(&nats.url(), &db.url)).await;
    let msgs = eventually("the relay publishes the task", || {
        let js = js.clone();
        async move { Some(tasks_in_stream(&js).await).filter(|m| !m.is_empty()) }
    })
    .await;
    assert_eq!(msgs.len(), 1);
    assert_eq!(msgs[0].0, id.to_string());
    let store = Store::connect(&db.url, &Default::default()).await.unwrap();
    wait_outbox_cleared(&store, id).await;
    let task = api
        .client()
        .await
        .get_status(GetStatusRequest {
            task_id: id.to_string(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(task.state, TaskState::Queued as i32);
}

async fn crash_after_publish_is_not_duplicated(db: Db) {
    let nats = NatsServer::start();
    let db = db.create().await;
    let id = submit_into_crash(&nats, &db.url, "abort-after-publish").await;
    let js = nats.jetstream().await;
    assert_eq!(
        tasks_in_stream(&js).await.len(),
        1,
        "published before the crash"
    );

    let _api = Api::start(api_config(&nats.url(), &db.url)).await;
    let store = Store::connect(&db.url, &Default::default()).await.unwrap();
    // The relay re-publishes and deletes the row.
    wait_outbox_cleared(&store, id).await;
    let msgs = tasks_in_stream(&js).await;
    assert_eq!(
        msgs.len(),
        1,
        "JetStream dropped the relay's duplicate: {msgs:?}"
    );
    assert_eq!(msgs[0].0, id.to_string());
}

both_databases!(
    crash_after_commit_is_relayed,
    crash_after_publish_is_not_duplicated
);

/// A publish that is not confirmed, because NATS took nothing or because its ack was
/// lost: the answer is OK, never UNAVAILABLE (a task the caller was told failed could
/// otherwise run), and the task runs exactly once: the relay publishes it when the
/// call's lease runs out, and JetStream drops a second copy by its id.
async fn an_unconfirmed_publish_is_accepted_and_runs_once(db: Db) {
    for fault in ["fail-publish", "lose-publish-ack"] {
        let nats = NatsServer::start();
        let db = db.create().await;
        let api = ApiProcess::spawn(&nats.url(), &db.url, &[("TASKWIRE_FAULT", fault)]).await;
        let _recorder = Running::recorder(recorder_config(&nats.url(), &db.url));
        let _worker = Running::worker(worker_config(&nats.url()));
        let mut client = connect(api.addr).await.unwrap();
        let id = client
            .submit_task(submit_req("demo.echo", serde_json::json!({"fault": fault})))
            .await
            .unwrap_or_else(|e| panic!("{fault}: accepted, not {e:?}"))
            .into_inner()
            .task_id;
        // A batch's publishes fail the same way, each task on its own.
        let batch = client
            .submit_tasks(SubmitTasksRequest {
                tasks: (0..3)
                    .map(|i| submit_req("demo.echo", serde_json::json!({"batch": i})))
                    .collect(),
            })
            .await
            .unwrap_or_else(|e| panic!("{fault}: the batch is accepted, not {e:?}"))
            .into_inner();
        let mut ids = vec![id];
        for r in batch.results {
            match r.outcome {
                Some(Outcome::Accepted(a)) => ids.push(a.task_id),
                other => panic!("{fault}: accepted, not {other:?}"),
            }
        }
        let js = nats.jetstream().await;
        let store = Store::connect(&db.url, &Default::default()).await.unwrap();
        for id in &ids {
            let task = wait_terminal(&client, id).await;
            assert_eq!(task.state, TaskState::Succeeded as i32, "{fault}: {task:?}");
            let events = task_events(&js, id).await;
            let runs = events
                .iter()
                .filter(|(_, e)| e.state == TaskState::Running as i32 && e.progress.is_none())
                .count();
            assert_eq!(runs, 1, "{fault}: run once: {events:?}");
            wait_outbox_cleared(&store, TaskId::parse(id).unwrap()).await;
        }
        assert!(
            tasks_in_stream(&js).await.is_empty(),
            "{fault}: nothing left to run"
        );
    }
}

both_databases!(an_unconfirmed_publish_is_accepted_and_runs_once);
