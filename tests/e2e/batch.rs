//! SubmitTasks: a batch of tasks in one call, each with its own idempotency key and
//! its own result. A refused task does not hold back the others; resending the whole
//! batch makes no second copy of any task; every accepted task runs once.

use std::collections::HashSet;

use taskwire::pb::v1::{
    ListTasksRequest, SubmitTaskRequest, SubmitTasksRequest, SubmitTasksResponse, TaskState,
    submit_tasks_result::Outcome, task_service_client::TaskServiceClient,
};
use taskwire_tests::{
    Api, Db, NatsServer, Running, api_config, both_databases, recorder_config, task_events,
    tasks_in_stream, wait_terminal, worker_config,
};
use tonic::{Code, transport::Channel};

use super::submit_req;

/// 40 keyed echo tasks, with a malformed kind at 10 and an input over the 1 MiB limit
/// at 25.
fn mixed_batch() -> Vec<SubmitTaskRequest> {
    (0..40)
        .map(|i| match i {
            10 => submit_req("Not A Kind", serde_json::json!(i)),
            25 => submit_req("demo.echo", serde_json::json!("x".repeat(1 << 20))),
            _ => SubmitTaskRequest {
                idempotency_key: format!("batch-{i}"),
                ..submit_req("demo.echo", serde_json::json!({ "i": i }))
            },
        })
        .collect()
}

async fn submit_batch(
    client: &mut TaskServiceClient<Channel>,
    tasks: Vec<SubmitTaskRequest>,
) -> SubmitTasksResponse {
    client
        .submit_tasks(SubmitTasksRequest { tasks })
        .await
        .expect("the batch is answered")
        .into_inner()
}

/// The (task id, deduplicated) a batch's answer accepted, in order.
type Accepted = Vec<(String, bool)>;
/// The (position, code) of each task a batch's answer refused.
type Refused = Vec<(usize, Code)>;

fn outcomes(resp: &SubmitTasksResponse) -> (Accepted, Refused) {
    let mut accepted = Vec::new();
    let mut refused = Vec::new();
    for (i, r) in resp.results.iter().enumerate() {
        match r.outcome.as_ref().expect("every result has an outcome") {
            Outcome::Accepted(a) => accepted.push((a.task_id.clone(), a.deduplicated)),
            Outcome::Error(e) => {
                assert!(!e.message.is_empty(), "task {i}: the error says why");
                refused.push((i, Code::from(e.code)));
            }
        }
    }
    (accepted, refused)
}

async fn a_batch_with_bad_tasks_accepts_the_rest_and_resends_are_deduplicated(db: Db) {
    let nats = NatsServer::start();
    let db = db.create().await;
    let api = Api::start(api_config(&nats.url(), &db.url)).await;
    let _recorder = Running::recorder(recorder_config(&nats.url(), &db.url));
    let _worker = Running::worker(worker_config(&nats.url()));
    let mut client = api.client().await;
    let js = nats.jetstream().await;

    let first = submit_batch(&mut client, mixed_batch()).await;
    assert_eq!(first.results.len(), 40, "one result per task, in order");
    let (accepted, refused) = outcomes(&first);
    assert_eq!(
        refused,
        vec![(10, Code::InvalidArgument), (25, Code::ResourceExhausted)],
        "each refusal is what SubmitTask would answer for that task alone"
    );
    assert_eq!(accepted.len(), 38);
    assert!(accepted.iter().all(|(_, dedup)| !dedup));
    let ids: HashSet<&String> = accepted.iter().map(|(id, _)| id).collect();
    assert_eq!(ids.len(), 38, "38 distinct tasks");

    // Every accepted task runs, once, with its own input.
    for (n, (id, _)) in accepted.iter().enumerate() {
        let t = wait_terminal(&client, id).await;
        assert_eq!(t.state, TaskState::Succeeded as i32, "{t:?}");
        let i = if n < 10 {
            n
        } else if n < 24 {
            n + 1
        } else {
            n + 2
        };
        assert_eq!(
            t.output
                .map(|v| taskwire::json::value_to_json(Some(&v)).unwrap()),
            Some(serde_json::json!({ "i": i })),
            "task {n} is the batch's task {i}"
        );
        let runs = task_events(&js, id)
            .await
            .iter()
            .filter(|(_, e)| e.state == TaskState::Running as i32 && e.progress.is_none())
            .count();
        assert_eq!(runs, 1, "task {id} ran once");
    }

    // The whole batch again, as a caller whose answer was lost would send it: the
    // accepted tasks answer deduplicated with their first ids, the bad ones are
    // refused again, and nothing new is stored or published.
    let again = submit_batch(&mut client, mixed_batch()).await;
    let (accepted_again, refused_again) = outcomes(&again);
    assert_eq!(refused_again, refused);
    assert_eq!(
        accepted_again,
        accepted
            .iter()
            .map(|(id, _)| (id.clone(), true))
            .collect::<Vec<_>>()
    );
    let listed = client
        .list_tasks(ListTasksRequest {
            page_size: 1000,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.tasks.len(), 38, "no second copy of any task");
    assert!(tasks_in_stream(&js).await.is_empty(), "nothing left to run");

    // Two tasks with one key in one batch are one task.
    let twins = vec![
        SubmitTaskRequest {
            idempotency_key: "twin".into(),
            ..submit_req("demo.echo", serde_json::json!(1))
        };
        2
    ];
    let (twins, none) = outcomes(&submit_batch(&mut client, twins).await);
    assert!(none.is_empty());
    assert_eq!(twins[0].0, twins[1].0, "{twins:?}");
    assert_eq!(
        (twins[0].1, twins[1].1),
        (false, true),
        "the second is the first's repeat"
    );
}

async fn empty_and_oversized_batches_are_refused_whole(db: Db) {
    let nats = NatsServer::start();
    let db = db.create().await;
    let api = Api::start(api_config(&nats.url(), &db.url)).await;
    let mut client = api.client().await;
    for n in [0, 1001] {
        let tasks = vec![submit_req("demo.echo", serde_json::json!(1)); n];
        let err = client
            .submit_tasks(SubmitTasksRequest { tasks })
            .await
            .expect_err("refused");
        assert_eq!(err.code(), Code::InvalidArgument, "{n} tasks: {err:?}");
        assert!(err.message().contains("1 to 1000"), "{err:?}");
    }
    // A full batch of 1,000 is taken.
    let tasks = vec![submit_req("demo.echo", serde_json::json!(1)); 1000];
    let (accepted, refused) = outcomes(&submit_batch(&mut client, tasks).await);
    assert!(refused.is_empty(), "{refused:?}");
    assert_eq!(accepted.len(), 1000);
    assert_eq!(
        tasks_in_stream(&nats.jetstream().await).await.len(),
        1000,
        "only the full batch was published"
    );
}

both_databases!(
    a_batch_with_bad_tasks_accepts_the_rest_and_resends_are_deduplicated,
    empty_and_oversized_batches_are_refused_whole
);
