//! NATS down: SubmitTask answers UNAVAILABLE within its deadline (never hangs) and
//! leaves nothing behind; once NATS is back, submits work again. A list of NATS URLs
//! starts while one of them is down.

use std::time::{Duration, Instant};

use taskwire::pb::v1::ListTasksRequest;
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
    // Right after the kill (the client may not have noticed yet) and later.
    for _ in 0..3 {
        let started = Instant::now();
        let e = client
            .submit_task(submit_req("demo.echo", serde_json::json!(2)))
            .await
            .expect_err("NATS is down");
        assert_eq!(e.code(), Code::Unavailable, "{e:?}");
        // The api's NATS deadline in these tests is 2s: well before the client's 10s.
        assert!(
            started.elapsed() < Duration::from_secs(8),
            "answered within the deadline"
        );
    }
    let listed = client
        .list_tasks(ListTasksRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.tasks.len(), 1, "the failed submits left no row");

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
