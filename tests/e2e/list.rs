//! ListTasks: newest first, stable pages that neither overlap nor skip, filters.

use std::collections::{HashMap, HashSet};

use taskwire::pb::v1::{CancelTaskRequest, ListTasksRequest, SubmitTaskRequest, TaskState};
use taskwire_tests::{Api, Db, NatsServer, api_config, both_databases};

use super::submit_req;

async fn pages_are_stable_and_filters_work(db: Db) {
    let nats = NatsServer::start();
    let db = db.create().await;
    let api = Api::start(api_config(&nats.url(), &db.url)).await;
    let mut client = api.client().await;

    let mut ids = Vec::new();
    for i in 0..23 {
        let kind = if i % 2 == 0 {
            "demo.echo"
        } else {
            "demo.sleep"
        };
        let team = if i % 3 == 0 { "ml" } else { "web" };
        ids.push(
            super::submit(
                &mut client,
                SubmitTaskRequest {
                    labels: HashMap::from([
                        ("team".into(), team.into()),
                        ("n".into(), i.to_string()),
                    ]),
                    ..submit_req(kind, serde_json::json!({"i": i}))
                },
            )
            .await,
        );
    }

    // Page through with size 5 while new tasks keep arriving: the pages hold exactly
    // the tasks that existed at the start, newest first, without overlap.
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = client
            .list_tasks(ListTasksRequest {
                page_size: 5,
                page_token: token.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert!(page.tasks.len() <= 5);
        seen.extend(page.tasks.iter().map(|t| t.id.clone()));
        super::submit(
            &mut client,
            submit_req("demo.late", serde_json::json!(null)),
        )
        .await;
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    let expected: Vec<String> = ids.iter().rev().cloned().collect();
    assert_eq!(seen, expected, "newest first, no overlap, nothing skipped");
    assert_eq!(seen.iter().collect::<HashSet<_>>().len(), seen.len());

    let lister = client.clone();
    let count = |req: ListTasksRequest| {
        let mut c = lister.clone();
        async move { c.list_tasks(req).await.unwrap().into_inner().tasks }
    };
    let echo = count(ListTasksRequest {
        kind: "demo.echo".into(),
        page_size: 100,
        ..Default::default()
    })
    .await;
    assert_eq!(echo.len(), 12);
    assert!(echo.iter().all(|t| t.kind == "demo.echo"));

    let ml = count(ListTasksRequest {
        labels: HashMap::from([("team".into(), "ml".into())]),
        page_size: 100,
        ..Default::default()
    })
    .await;
    assert_eq!(ml.len(), 8, "i = 0, 3, ..., 21");
    let ml_echo_n6 = count(ListTasksRequest {
        kind: "demo.echo".into(),
        labels: HashMap::from([("team".into(), "ml".into()), ("n".into(), "6".into())]),
        ..Default::default()
    })
    .await;
    assert_eq!(ml_echo_n6.len(), 1, "every label must match, and the kind");
    assert_eq!(ml_echo_n6[0].id, ids[6]);

    client
        .cancel_task(CancelTaskRequest {
            task_id: ids[4].clone(),
        })
        .await
        .unwrap();
    let cancelled = count(ListTasksRequest {
        state: TaskState::Cancelled as i32,
        ..Default::default()
    })
    .await;
    assert_eq!(
        cancelled.iter().map(|t| &t.id).collect::<Vec<_>>(),
        vec![&ids[4]]
    );
}

async fn default_page_size_is_fifty(db: Db) {
    let nats = NatsServer::start();
    let db = db.create().await;
    let api = Api::start(api_config(&nats.url(), &db.url)).await;
    let mut client = api.client().await;
    for _ in 0..51 {
        super::submit(
            &mut client,
            submit_req("demo.echo", serde_json::json!(null)),
        )
        .await;
    }
    let page = client
        .list_tasks(ListTasksRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(page.tasks.len(), 50);
    assert!(!page.next_page_token.is_empty());
}

both_databases!(
    pages_are_stable_and_filters_work,
    default_page_size_is_fifty
);
