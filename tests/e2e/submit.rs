//! SubmitTask: an id at once, the row in the database, the message in the stream.

use std::collections::HashMap;

use taskwire::{
    json,
    pb::v1::{GetQueueStatsRequest, GetStatusRequest, SubmitTaskRequest, TaskState},
};
use taskwire_tests::{
    Api, Db, NatsServer, Running, Stack, api_config, both_databases, eventually, tasks_in_stream,
    wait_terminal,
};

async fn submit_stores_and_enqueues(db: Db) {
    let nats = NatsServer::start();
    let db = db.create().await;
    let api = Api::start(api_config(&nats.url(), &db.url)).await;
    let mut client = api.client().await;

    let input = serde_json::json!({"prompt": "hi", "tokens": 40});
    let resp = client
        .submit_task(SubmitTaskRequest {
            kind: "demo.agent".into(),
            input: Some(json::json_to_value(&input)),
            labels: HashMap::from([("team".to_string(), "ml".to_string())]),
            max_attempts: 5,
            timeout: Some(prost_types::Duration {
                seconds: 30,
                nanos: 0,
            }),
            ..Default::default()
        })
        .await
        .expect("submit")
        .into_inner();
    assert_eq!(resp.state, TaskState::Queued as i32);
    assert!(!resp.deduplicated);
    taskwire::domain::TaskId::parse(&resp.task_id).expect("task_id is a UUID");

    let task = client
        .get_status(GetStatusRequest {
            task_id: resp.task_id.clone(),
        })
        .await
        .expect("get status")
        .into_inner();
    assert_eq!(task.id, resp.task_id);
    assert_eq!(task.kind, "demo.agent");
    assert_eq!(task.state, TaskState::Queued as i32);
    assert_eq!(json::value_to_json(task.input.as_ref()).unwrap(), input);
    assert_eq!(task.max_attempts, 5);
    assert_eq!(task.attempt, 0);
    assert_eq!(task.labels.get("team").map(String::as_str), Some("ml"));
    assert!(task.created_at.is_some() && task.updated_at.is_some());
    assert!(task.started_at.is_none() && task.finished_at.is_none());

    let js = nats.jetstream().await;
    let msgs = tasks_in_stream(&js).await;
    assert_eq!(msgs.len(), 1, "exactly one message in TASKWIRE_TASKS");
    let (msg_id, body) = &msgs[0];
    assert_eq!(msg_id, &resp.task_id, "Nats-Msg-Id is the task id");
    assert_eq!(body.task_id, resp.task_id);
    assert_eq!(body.kind, "demo.agent");
    assert_eq!(body.max_attempts, 5);
    assert_eq!(json::value_to_json(body.input.as_ref()).unwrap(), input);
    assert_eq!(body.timeout.as_ref().map(|d| d.seconds), Some(30));

    // The outbox is emptied once JetStream acknowledged.
    let store = taskwire::store::Store::connect(&db.url, &Default::default())
        .await
        .unwrap();
    let id = taskwire::domain::TaskId::parse(&resp.task_id).unwrap();
    taskwire_tests::wait_outbox_cleared(&store, id).await;
    api.stop().await.expect("clean stop");
}

async fn default_max_attempts_applies(db: Db) {
    let nats = NatsServer::start();
    let db = db.create().await;
    let api = Api::start(api_config(&nats.url(), &db.url)).await;
    let mut client = api.client().await;
    let id = super::submit(
        &mut client,
        super::submit_req("demo.echo", serde_json::json!(null)),
    )
    .await;
    let task = client
        .get_status(GetStatusRequest { task_id: id })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(task.max_attempts, 3, "the server default");
}

/// A kind no worker has ever served is accepted, queued, with a warning that says so;
/// once a worker for it has started, the warning is gone (after the api's short
/// memory of unserved kinds, a second).
async fn an_unserved_kind_is_accepted_with_a_warning(db: Db) {
    let stack = Stack::start(db).await;
    let mut client = stack.client().await;
    // The stack's worker starts beside the api: once it has, the demo kinds are served.
    let served = eventually("demo.echo is served", || {
        let mut c = client.clone();
        async move {
            let r = c
                .submit_task(super::submit_req("demo.echo", serde_json::json!(1)))
                .await
                .ok()?
                .into_inner();
            r.warning.is_empty().then_some(r)
        }
    })
    .await;
    assert_eq!(served.warning, "", "the demo kinds have a worker");

    let unserved = client
        .submit_task(super::submit_req(
            "nobody.serves.this",
            serde_json::json!(1),
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(
        unserved.warning.contains("nobody.serves.this") && unserved.warning.contains("no worker"),
        "{unserved:?}"
    );
    let task = client
        .get_status(GetStatusRequest {
            task_id: unserved.task_id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(task.state, TaskState::Queued as i32, "accepted, waiting");

    // A worker for the kind starts: it runs the waiting task, and new submits of the
    // kind carry no warning.
    let mut registry = taskwire_worker::Registry::new();
    registry.register("nobody.serves.this", |_ctx| async {
        Ok(serde_json::json!("ran"))
    });
    let config = taskwire_tests::worker_config(&stack.nats.url());
    let _worker = Running::spawn(|s| async move {
        taskwire_worker::run(config, registry, s)
            .await
            .expect("worker runs");
    });
    let t = wait_terminal(&client, &unserved.task_id).await;
    assert_eq!(t.state, TaskState::Succeeded as i32, "{t:?}");
    let warning = eventually("the kind counts as served", || {
        let mut c = client.clone();
        async move {
            let r = c
                .submit_task(super::submit_req(
                    "nobody.serves.this",
                    serde_json::json!(2),
                ))
                .await
                .ok()?
                .into_inner();
            r.warning.is_empty().then_some(r.warning)
        }
    })
    .await;
    assert_eq!(warning, "");
}

both_databases!(
    submit_stores_and_enqueues,
    default_max_attempts_applies,
    an_unserved_kind_is_accepted_with_a_warning
);

/// GetQueueStats: tasks of a kind whose worker is away wait, and the oldest wait is
/// dated; finished tasks are counted by kind.
async fn queue_stats_show_waiting_and_finished_tasks(db: Db) {
    let stack = Stack::start(db).await;
    let mut client = stack.client().await;
    // A worker of `queued.kind` registered it once and is gone: its consumer stays.
    let js = stack.nats.jetstream().await;
    taskwire::nats::setup_kind_consumer(
        &js,
        "queued.kind",
        std::time::Duration::from_secs(30),
        101,
        None,
    )
    .await
    .unwrap();
    for i in 0..3 {
        super::submit(
            &mut client,
            super::submit_req("queued.kind", serde_json::json!(i)),
        )
        .await;
    }
    let echo = super::submit(
        &mut client,
        super::submit_req("demo.echo", serde_json::json!(1)),
    )
    .await;
    wait_terminal(&client, &echo).await;

    let stats = eventually("the echo task is counted", || {
        let mut c = client.clone();
        async move {
            let s = c
                .get_queue_stats(GetQueueStatsRequest { window_minutes: 5 })
                .await
                .ok()?
                .into_inner();
            s.kinds
                .iter()
                .any(|k| k.kind == "demo.echo" && k.succeeded >= 1)
                .then_some(s)
        }
    })
    .await;
    assert_eq!(stats.window_minutes, 5);
    let queued = stats
        .kinds
        .iter()
        .find(|k| k.kind == "queued.kind")
        .expect("listed");
    assert_eq!((queued.waiting, queued.running), (3, 0), "{queued:?}");
    let oldest = queued.oldest_waiting.expect("the oldest wait is dated");
    assert!(oldest.seconds > 0 || oldest.nanos > 0, "{oldest:?}");
    let echo = stats.kinds.iter().find(|k| k.kind == "demo.echo").unwrap();
    assert_eq!(echo.finished_per_minute.len(), 5);
    assert_eq!(
        echo.finished_per_minute.iter().sum::<u64>(),
        echo.succeeded + echo.failed
    );
    let err = client
        .get_queue_stats(GetQueueStatsRequest { window_minutes: 61 })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
}

both_databases!(queue_stats_show_waiting_and_finished_tasks);
