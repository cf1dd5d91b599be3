//! NATS down: SubmitTask answers UNAVAILABLE within its deadline (never hangs) and
//! leaves nothing behind, or (in the instant before the api notices) accepts a task
//! that then runs once NATS is back; after that, submits work again. A list of NATS
//! URLs starts while one of them is down.

use std::time::{Duration, Instant};

use taskwire::pb::v1::{ListTasksRequest, TaskState};
use taskwire_tests::{Api, Db, NatsServer, api_config, both_databases, eventually};
use tonic::Code;

use super::submit_req;

async fn nats_down_is_unavailable(db: Db) {
    let mut nats = NatsServer::start();
    let db = db.create().await;
    let api = Api::start(api_config(&nats.url(), &db.url)).await;
    let mut client = api.client().await;
    super::submit(&mut client, submit_req("demo.echo", serde_json::json!(1))).await;

    nats.stop();
    // Right after the kill the api may not have noticed yet: a submit that got its
    // task committed is accepted (the relay enqueues it once NATS is back). Once it
    // has noticed, UNAVAILABLE, and nothing is written.
    let mut accepted = Vec::new();
    for round in 0..3 {
        let started = Instant::now();
        match client
            .submit_task(submit_req("demo.echo", serde_json::json!(2)))
            .await
        {
            Ok(r) if round == 0 => accepted.push(r.into_inner().task_id),
            Ok(r) => panic!("NATS is known down, yet accepted: {r:?}"),
            Err(e) => assert_eq!(e.code(), Code::Unavailable, "{e:?}"),
        }
        // The api's NATS deadline in these tests is 2s: well before the client's 10s.
        assert!(
            started.elapsed() < Duration::from_secs(8),
            "answered within the deadline"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let listed = client
        .list_tasks(ListTasksRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        listed.tasks.len(),
        1 + accepted.len(),
        "the refused submits left no row"
    );

    nats.restart();
    eventually("submits work again once NATS is back", || {
        let mut c = client.clone();
        async move {
            c.submit_task(submit_req("demo.echo", serde_json::json!(3)))
                .await
                .ok()
        }
    })
    .await;
    // A worker (this test had none) runs what was accepted while NATS was down.
    let _worker = taskwire_tests::Running::worker(taskwire_tests::worker_config(&nats.url()));
    for id in &accepted {
        let t = taskwire_tests::wait_terminal(&client, id).await;
        assert_eq!(t.state, TaskState::Succeeded as i32, "accepted, so it runs");
    }
}

/// A comma-separated list of NATS URLs, as NATS users write them: the api starts and
/// works while the first server listed is down.
async fn a_list_of_nats_urls_with_one_down(db: Db) {
    let nats = NatsServer::start();
    let db = db.create().await;
    let down = format!("nats://127.0.0.1:{}", taskwire_tests::free_port());
    let list = format!("{down},{}", nats.url());
    let api = Api::start(api_config(&list, &db.url)).await;
    let mut client = api.client().await;
    super::submit(&mut client, submit_req("demo.echo", serde_json::json!(1))).await;
}

both_databases!(nats_down_is_unavailable, a_list_of_nats_urls_with_one_down);
