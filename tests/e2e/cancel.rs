//! CancelTask: a queued task becomes CANCELLED and can never start; a running one is
//! signalled and its worker's next event is rejected; terminal rules as in the contract.

use futures::StreamExt;
use taskwire::{
    domain::TaskId,
    json, nats,
    pb::{
        internal::v1::Event,
        v1::{CancelTaskRequest, GetStatusRequest, TaskState},
    },
    store::{EventUpdate, Store},
};
use taskwire_tests::{Api, Db, NatsServer, api_config, both_databases};
use tonic::Code;

use super::submit_req;

fn event(id: &str, state: TaskState, attempt: u32) -> Event {
    Event {
        task_id: id.to_string(),
        time: Some(json::micros_to_timestamp(json::now_micros())),
        state: state as i32,
        attempt,
        ..Default::default()
    }
}

/// Plays a worker's part: appends an event to the task's history the way workers do.
async fn worker_event(
    js: &async_nats::jetstream::Context,
    id: TaskId,
    ev: &Event,
    expected_last: u64,
) -> Result<u64, nats::Error> {
    assert_eq!(ev.task_id, id.to_string());
    nats::History::open(js)
        .await?
        .append(ev, expected_last)
        .await
}

async fn cancel_queued_task(db: Db) {
    let nats = NatsServer::start();
    let db = db.create().await;
    let api = Api::start(api_config(&nats.url(), &db.url)).await;
    let mut client = api.client().await;
    let id = super::submit(
        &mut client,
        submit_req("demo.sleep", serde_json::json!({"seconds": 1})),
    )
    .await;

    let task = client
        .cancel_task(CancelTaskRequest {
            task_id: id.clone(),
        })
        .await
        .expect("cancel")
        .into_inner();
    assert_eq!(task.state, TaskState::Cancelled as i32);
    assert!(task.finished_at.is_some());
    assert!(task.last_seq > 0, "the CANCELLED event's seq is recorded");

    // A worker that now tries to start it loses: its RUNNING event expects an empty
    // history, and the history holds the CANCELLED event.
    let js = nats.jetstream().await;
    let tid = TaskId::parse(&id).unwrap();
    let lost = worker_event(&js, tid, &event(&id, TaskState::Running, 1), 0).await;
    assert!(matches!(lost, Err(nats::Error::Conflict)), "{lost:?}");

    // Cancelling a CANCELLED task is OK and changes nothing.
    let again = client
        .cancel_task(CancelTaskRequest {
            task_id: id.clone(),
        })
        .await
        .expect("second cancel is OK")
        .into_inner();
    assert_eq!(again, task);
    let status = client
        .get_status(GetStatusRequest { task_id: id })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status, task);
}

async fn cancel_running_task_signals_worker(db: Db) {
    let nats = NatsServer::start();
    let db = db.create().await;
    let api = Api::start(api_config(&nats.url(), &db.url)).await;
    let mut client = api.client().await;
    let id = super::submit(
        &mut client,
        submit_req("demo.sleep", serde_json::json!({"seconds": 60})),
    )
    .await;
    let tid = TaskId::parse(&id).unwrap();

    let js = nats.jetstream().await;
    let worker = nats::connect(
        &nats.url(),
        "fake-worker",
        std::time::Duration::from_secs(5),
    )
    .await
    .unwrap();
    let mut signal = worker.subscribe(nats::cancel_subject(tid)).await.unwrap();
    worker.flush().await.unwrap();
    let running = worker_event(&js, tid, &event(&id, TaskState::Running, 1), 0)
        .await
        .unwrap();

    let task = client
        .cancel_task(CancelTaskRequest {
            task_id: id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(task.state, TaskState::Cancelled as i32);
    assert_eq!(
        task.attempt, 1,
        "the cancel keeps the running attempt's number"
    );
    tokio::time::timeout(std::time::Duration::from_secs(5), signal.next())
        .await
        .expect("the worker is signalled on taskwire.cancel.<id>")
        .expect("a signal");

    // The worker's next progress event is rejected: no event after the terminal one.
    let late = worker_event(&js, tid, &event(&id, TaskState::Running, 1), running).await;
    assert!(matches!(late, Err(nats::Error::Conflict)), "{late:?}");
}

async fn finished_tasks_cannot_be_cancelled(db: Db) {
    let nats = NatsServer::start();
    let db = db.create().await;
    let api = Api::start(api_config(&nats.url(), &db.url)).await;
    let mut client = api.client().await;
    let store = Store::connect(&db.url, &Default::default()).await.unwrap();
    let js = nats.jetstream().await;

    for (state, label) in [
        (TaskState::Succeeded, "succeeded"),
        (TaskState::Failed, "failed"),
    ] {
        let id = super::submit(&mut client, submit_req("demo.echo", serde_json::json!(1))).await;
        let tid = TaskId::parse(&id).unwrap();
        let seq = worker_event(&js, tid, &event(&id, state, 1), 0)
            .await
            .unwrap();
        // As the recorder would.
        store
            .apply_event(
                tid,
                &EventUpdate::from_event(seq, &event(&id, state, 1)).unwrap(),
            )
            .await
            .unwrap();
        let e = client
            .cancel_task(CancelTaskRequest {
                task_id: id.clone(),
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::FailedPrecondition, "{label}");
        assert!(e.message().contains(label), "{}", e.message());
        let task = client
            .get_status(GetStatusRequest { task_id: id })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(task.state, state as i32, "unchanged");
    }

    // The recorder may lag: a task whose stream already says SUCCEEDED is refused too.
    let id = super::submit(&mut client, submit_req("demo.echo", serde_json::json!(1))).await;
    let tid = TaskId::parse(&id).unwrap();
    worker_event(&js, tid, &event(&id, TaskState::Succeeded, 1), 0)
        .await
        .unwrap();
    let e = client
        .cancel_task(CancelTaskRequest {
            task_id: id.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    let task = client
        .get_status(GetStatusRequest { task_id: id })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        task.state,
        TaskState::Succeeded as i32,
        "the record caught up"
    );
}

both_databases!(
    cancel_queued_task,
    cancel_running_task_signals_worker,
    finished_tasks_cannot_be_cancelled
);
