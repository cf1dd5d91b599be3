//! Delayed tasks: a task submitted with a delay is SCHEDULED, does not start before its
//! time (also when the api restarts in between: it waits in the database), starts
//! once due; one cancelled before its time never runs and leaves no outbox row.

use std::time::Duration;

use taskwire::{
    domain::TaskId,
    json,
    pb::v1::{CancelTaskRequest, GetStatusRequest, ListTasksRequest, SubmitTaskRequest, TaskState},
    store::Store,
};
use taskwire_tests::{
    Api, Db, NatsServer, Running, api_config, recorder_config, wait_terminal, worker_config,
};
use tonic::Code;

use super::submit_req;

fn delayed(kind: &str, delay: Duration) -> SubmitTaskRequest {
    SubmitTaskRequest {
        delay: Some(delay.try_into().unwrap()),
        ..submit_req(kind, serde_json::json!({"delayed": true}))
    }
}

async fn delayed_tasks_wait_survive_a_restart_and_cancel(db: Db) {
    let nats = NatsServer::start();
    let db = db.create().await;
    let store = Store::connect(&db.url, &Default::default()).await.unwrap();
    let api = Api::start(api_config(&nats.url(), &db.url)).await;
    let _recorder = Running::recorder(recorder_config(&nats.url(), &db.url));
    let _worker = Running::worker(worker_config(&nats.url()));
    let mut client = api.client().await;

    let submitted_at = json::now_micros();
    let answer = client
        .submit_task(delayed("demo.echo", Duration::from_secs(3)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer.state, TaskState::Scheduled as i32);
    let id = answer.task_id;
    let record = client
        .get_status(GetStatusRequest {
            task_id: id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(record.state, TaskState::Scheduled as i32);
    let run_at = json::timestamp_to_micros(record.run_at.as_ref().expect("run_at is set"));
    assert!(
        run_at >= submitted_at + 3_000_000 && run_at <= json::now_micros() + 3_000_000,
        "run_at is three seconds after the submit"
    );
    // Listed as SCHEDULED; its row waits in the outbox without counting as a backlog.
    let scheduled = client
        .list_tasks(ListTasksRequest {
            state: TaskState::Scheduled as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(scheduled.tasks.len(), 1);
    assert_eq!(
        store.outbox_stats().await.unwrap().0,
        0,
        "not due: no backlog"
    );

    // One cancelled before its time: CANCELLED, never run, no outbox row left.
    let doomed = client
        .submit_task(delayed("demo.echo", Duration::from_secs(60)))
        .await
        .unwrap()
        .into_inner()
        .task_id;
    let cancelled = client
        .cancel_task(CancelTaskRequest {
            task_id: doomed.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(cancelled.state, TaskState::Cancelled as i32);
    assert!(
        !store
            .in_outbox(TaskId::parse(&doomed).unwrap())
            .await
            .unwrap()
    );

    // The api restarts before the task is due: the task waits in the database.
    api.stop().await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let api = Api::start(api_config(&nats.url(), &db.url)).await;
    let client = api.client().await;
    let done = wait_terminal(&client, &id).await;
    assert_eq!(done.state, TaskState::Succeeded as i32, "{done:?}");
    assert_eq!(
        done.output,
        Some(json::json_to_value(&serde_json::json!({"delayed": true})))
    );
    let started = json::timestamp_to_micros(done.started_at.as_ref().unwrap());
    assert!(
        started >= run_at,
        "started {} µs before its time",
        run_at - started
    );
    let doomed_now = client
        .clone()
        .get_status(GetStatusRequest { task_id: doomed })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(doomed_now.state, TaskState::Cancelled as i32);
    assert_eq!(doomed_now.started_at, None, "never ran");

    // A run_at already past runs at once; delay and run_at together are refused, as is
    // a delay of zero or beyond a year.
    let mut c = client.clone();
    let past = SubmitTaskRequest {
        run_at: Some(json::micros_to_timestamp(json::now_micros() - 60_000_000)),
        ..submit_req("demo.echo", serde_json::json!(1))
    };
    let now_answer = c.submit_task(past).await.unwrap().into_inner();
    assert_eq!(now_answer.state, TaskState::Queued as i32);
    for bad in [
        SubmitTaskRequest {
            run_at: Some(json::micros_to_timestamp(json::now_micros() + 60_000_000)),
            ..delayed("demo.echo", Duration::from_secs(5))
        },
        SubmitTaskRequest {
            delay: Some(prost_types::Duration {
                seconds: 0,
                nanos: 0,
            }),
            ..submit_req("demo.echo", serde_json::json!(1))
        },
        delayed("demo.echo", Duration::from_secs(400 * 24 * 3600)),
    ] {
        let e = c.submit_task(bad).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    }
}
taskwire_tests::both_databases!(delayed_tasks_wait_survive_a_restart_and_cancel);
