//! The same idempotency key from the same caller returns the same task, forever
//! (guarantee 3): a database constraint decides, also under concurrent repeats.

use taskwire::{domain::Caller, pb::v1::SubmitTaskRequest};
use taskwire_tests::{Api, Db, NatsServer, api_config, both_databases, tasks_in_stream};
use tonic::Request;

use super::submit_req;

fn keyed(key: &str, caller: Option<&str>) -> Request<SubmitTaskRequest> {
    let mut r = Request::new(SubmitTaskRequest {
        idempotency_key: key.into(),
        ..submit_req("demo.echo", serde_json::json!({"n": 1}))
    });
    if let Some(c) = caller {
        r.metadata_mut()
            .insert(Caller::METADATA_KEY, c.parse().unwrap());
    }
    r
}

async fn repeats_return_the_first_task(db: Db) {
    let nats = NatsServer::start();
    let db = db.create().await;
    let api = Api::start(api_config(&nats.url(), &db.url)).await;
    let mut client = api.client().await;

    let first = client
        .submit_task(keyed("order-42", None))
        .await
        .unwrap()
        .into_inner();
    assert!(!first.deduplicated);
    let again = client
        .submit_task(keyed("order-42", None))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.task_id, first.task_id);
    assert!(again.deduplicated);

    // Another caller's identical key is another task.
    let other = client
        .submit_task(keyed("order-42", Some("billing")))
        .await
        .unwrap()
        .into_inner();
    assert_ne!(other.task_id, first.task_id);
    assert!(!other.deduplicated);

    // Without a key, two submits are two tasks.
    let a = super::submit(&mut client, submit_req("demo.echo", serde_json::json!(1))).await;
    let b = super::submit(&mut client, submit_req("demo.echo", serde_json::json!(1))).await;
    assert_ne!(a, b);
    assert_eq!(tasks_in_stream(&nats.jetstream().await).await.len(), 4);
}

async fn fifty_concurrent_repeats_make_one_task(db: Db) {
    let nats = NatsServer::start();
    let db = db.create().await;
    let api = Api::start(api_config(&nats.url(), &db.url)).await;

    let calls = (0..50).map(|_| {
        let addr = api.addr;
        tokio::spawn(async move {
            let mut c = taskwire_tests::connect(addr).await.unwrap();
            c.submit_task(keyed("same-key", Some("svc-a")))
                .await
                .map(|r| r.into_inner())
        })
    });
    let results = futures::future::join_all(calls).await;
    let responses: Vec<_> = results
        .into_iter()
        .map(|r| r.expect("task").expect("every repeat is answered OK"))
        .collect();
    let first = &responses[0].task_id;
    assert!(
        responses.iter().all(|r| &r.task_id == first),
        "one id for all 50"
    );
    assert_eq!(
        responses.iter().filter(|r| !r.deduplicated).count(),
        1,
        "exactly one original"
    );

    let msgs = tasks_in_stream(&nats.jetstream().await).await;
    assert_eq!(msgs.len(), 1, "one message in the stream");
    assert_eq!(&msgs[0].0, first);
    let listed = api
        .client()
        .await
        .list_tasks(taskwire::pb::v1::ListTasksRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.tasks.len(), 1, "one row in the database");
}

both_databases!(
    repeats_return_the_first_task,
    fifty_concurrent_repeats_make_one_task
);
