//! Bad input gets the contract's status code and leaves no row and no message
//! (guarantee 5).

use std::collections::HashMap;

use taskwire::pb::v1::{CancelTaskRequest, GetStatusRequest, ListTasksRequest, SubmitTaskRequest};
use taskwire_tests::{Api, Db, NatsServer, api_config, both_databases, tasks_in_stream};
use tonic::Code;

use super::submit_req;

fn with(f: impl FnOnce(&mut SubmitTaskRequest)) -> SubmitTaskRequest {
    let mut r = submit_req("demo.echo", serde_json::json!({"ok": true}));
    f(&mut r);
    r
}

async fn bad_submits_change_nothing(db: Db) {
    let nats = NatsServer::start();
    let db = db.create().await;
    let api = Api::start(api_config(&nats.url(), &db.url)).await;
    let mut client = api.client().await;

    let big = |bytes: usize| serde_json::json!({"blob": "x".repeat(bytes)});
    let cases: Vec<(&str, SubmitTaskRequest, Code)> = vec![
        (
            "empty kind",
            with(|r| r.kind.clear()),
            Code::InvalidArgument,
        ),
        (
            "upper-case kind",
            with(|r| r.kind = "Demo.Echo".into()),
            Code::InvalidArgument,
        ),
        (
            "space in kind",
            with(|r| r.kind = "demo echo".into()),
            Code::InvalidArgument,
        ),
        (
            "wildcard in kind",
            with(|r| r.kind = "demo.>".into()),
            Code::InvalidArgument,
        ),
        (
            "129-char kind",
            with(|r| r.kind = "k".repeat(129)),
            Code::InvalidArgument,
        ),
        (
            "max_attempts 101",
            with(|r| r.max_attempts = 101),
            Code::InvalidArgument,
        ),
        (
            "negative timeout",
            with(|r| {
                r.timeout = Some(prost_types::Duration {
                    seconds: -1,
                    nanos: 0,
                })
            }),
            Code::InvalidArgument,
        ),
        (
            "bad label key",
            with(|r| r.labels = HashMap::from([("Bad Key".into(), "v".into())])),
            Code::InvalidArgument,
        ),
        (
            "control char in idempotency key",
            with(|r| r.idempotency_key = "a\u{7}b".into()),
            Code::InvalidArgument,
        ),
        (
            "NaN in input",
            with(|r| {
                r.input = Some(prost_types::Value {
                    kind: Some(prost_types::value::Kind::NumberValue(f64::NAN)),
                })
            }),
            Code::InvalidArgument,
        ),
        (
            "input just over 1 MiB",
            with(|r| r.input = Some(taskwire::json::json_to_value(&big(1 << 20)))),
            Code::ResourceExhausted,
        ),
        // Larger than the server's whole-message limit (8 MiB, room for a batch): still
        // RESOURCE_EXHAUSTED.
        (
            "input of 9 MiB",
            with(|r| r.input = Some(taskwire::json::json_to_value(&big(9 << 20)))),
            Code::ResourceExhausted,
        ),
    ];
    for (what, req, code) in cases {
        let err = client.submit_task(req).await.expect_err(what);
        assert_eq!(err.code(), code, "{what}: {err:?}");
        assert!(!err.message().is_empty(), "{what}: the status says why");
    }

    let listed = client
        .list_tasks(ListTasksRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(
        listed.tasks.is_empty(),
        "no row was written: {:?}",
        listed.tasks
    );
    assert!(
        tasks_in_stream(&nats.jetstream().await).await.is_empty(),
        "no message was published"
    );

    // An input right at the limit is accepted: the limit is on the input, not less.
    let at_limit = serde_json::json!("x".repeat((1 << 20) - 2));
    client
        .submit_task(submit_req("demo.echo", at_limit))
        .await
        .expect("an input of exactly 1 MiB is accepted");
}

async fn bad_ids_and_pages(db: Db) {
    let nats = NatsServer::start();
    let db = db.create().await;
    let api = Api::start(api_config(&nats.url(), &db.url)).await;
    let mut client = api.client().await;

    for bad in [
        "",
        "nope",
        "0192f4e26c1a7d3e9a4b1f2e3d4c5b6a",
        "0192f4e2-6c1a-7d3e-9a4b-1f2e3d4c5b6g",
    ] {
        let e = client
            .get_status(GetStatusRequest {
                task_id: bad.into(),
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "GetStatus {bad:?}");
        let e = client
            .cancel_task(CancelTaskRequest {
                task_id: bad.into(),
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "CancelTask {bad:?}");
    }
    let unknown = uuid::Uuid::now_v7().to_string();
    let e = client
        .get_status(GetStatusRequest {
            task_id: unknown.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    let e = client
        .cancel_task(CancelTaskRequest { task_id: unknown })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);

    let list = |f: fn(&mut ListTasksRequest)| {
        let mut r = ListTasksRequest::default();
        f(&mut r);
        r
    };
    for (what, req) in [
        ("negative page size", list(|r| r.page_size = -1)),
        ("page size 1001", list(|r| r.page_size = 1001)),
        ("absurd page size", list(|r| r.page_size = i32::MAX)),
        (
            "garbage page token",
            list(|r| r.page_token = "not-a-token".into()),
        ),
        ("unknown state", list(|r| r.state = 42)),
        ("bad kind filter", list(|r| r.kind = "No Such Kind".into())),
    ] {
        let e = client.list_tasks(req).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{what}");
    }
}

/// Unicode, hostile and out-of-range values on the RPCs the tables above do not cover
/// (WatchTask, WatchTasks, GetQueueStats), and hostile values that are valid: stored
/// verbatim, never interpreted.
async fn hostile_values_everywhere(db: Db) {
    use taskwire::pb::v1::{GetQueueStatsRequest, WatchTaskRequest, WatchTasksRequest};
    let nats = NatsServer::start();
    let db = db.create().await;
    let api = Api::start(api_config(&nats.url(), &db.url)).await;
    let watch = taskwire_tests::WatchServer::start(&nats.url(), &db.url).await;
    let mut client = api.client().await;
    let mut w = watch.client().await;

    for bad in [
        "",
        "ü",
        "0192f4e2-6c1a-7d3e-9a4b-1f2e3d4c5b6ä",
        "'; DROP TABLE tasks;--",
    ] {
        let e = w
            .watch_task(WatchTaskRequest {
                task_id: bad.into(),
                after_seq: 0,
                tree: false,
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "WatchTask {bad:?}");
    }
    let e = w
        .watch_task(WatchTaskRequest {
            task_id: uuid::Uuid::now_v7().to_string(),
            after_seq: u64::MAX,
            tree: false,
        })
        .await
        .unwrap_err();
    assert_eq!(
        e.code(),
        Code::NotFound,
        "an unknown task, however far resumed"
    );
    let all = |kind: &str, labels: &[(&str, &str)]| WatchTasksRequest {
        kind: kind.into(),
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        state: 0,
    };
    for (what, req) in [
        ("unicode kind", all("démo.echo", &[])),
        ("wildcard kind", all("demo.*", &[])),
        ("emoji label key", all("", &[("🔥", "v")])),
        ("control char in label value", all("", &[("k", "a\u{0}b")])),
        ("300-byte label value", all("", &[("k", &"v".repeat(300))])),
    ] {
        let e = w.watch_tasks(req).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "WatchTasks {what}: {e:?}");
    }
    let e = client
        .get_queue_stats(GetQueueStatsRequest {
            window_minutes: u32::MAX,
        })
        .await
        .unwrap_err();
    assert_eq!(
        e.code(),
        Code::InvalidArgument,
        "GetQueueStats window: {e:?}"
    );

    // Unicode kinds, keys and labels are refused on submit, and nothing is written.
    for (what, req) in [
        ("unicode kind", with(|r| r.kind = "démo.echo".into())),
        (
            "emoji idempotency key",
            with(|r| r.idempotency_key = "🔑".into()),
        ),
        (
            "emoji label key",
            with(|r| r.labels = HashMap::from([("🔥".into(), "v".into())])),
        ),
    ] {
        let e = client.submit_task(req).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{what}: {e:?}");
    }
    // Hostile but valid: kept verbatim as data (every value is a bind parameter).
    let hostile = "x'); DROP TABLE tasks;-- ✓ \"<script>\"";
    let id = super::submit(
        &mut client,
        with(|r| {
            r.labels = HashMap::from([("note".into(), hostile.into())]);
            r.input = Some(taskwire::json::json_to_value(
                &serde_json::json!({"s": hostile}),
            ));
        }),
    )
    .await;
    let listed = client
        .list_tasks(ListTasksRequest {
            labels: HashMap::from([("note".into(), hostile.into())]),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        listed.tasks.len(),
        1,
        "the one task, found by its hostile label"
    );
    assert_eq!(listed.tasks[0].id, id);
    assert_eq!(
        listed.tasks[0].labels.get("note").map(String::as_str),
        Some(hostile)
    );
}

both_databases!(
    bad_submits_change_nothing,
    bad_ids_and_pages,
    hostile_values_everywhere
);
