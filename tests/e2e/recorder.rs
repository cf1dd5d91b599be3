//! The recorder is idempotent: restarting it, or replaying the whole event stream into
//! it, leaves the database unchanged.

use taskwire::pb::v1::{ListTasksRequest, Task, TaskState};
use taskwire_tests::{
    Db, Running, Stack, both_databases, eventually, recorder_config, wait_terminal,
};

use super::submit_req;

async fn all_tasks(stack: &Stack) -> Vec<Task> {
    stack
        .client()
        .await
        .list_tasks(ListTasksRequest {
            page_size: 1000,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .tasks
}

/// Waits until the recorder's consumer has nothing pending or unacknowledged.
async fn drained(stack: &Stack) {
    let js = stack.nats.jetstream().await;
    eventually("the recorder has applied everything", || {
        let js = js.clone();
        async move {
            let stream = js.get_stream(taskwire::nats::EVENTS_STREAM).await.ok()?;
            let mut c: async_nats::jetstream::consumer::PullConsumer = stream
                .get_consumer(taskwire::nats::streams::RECORDER_CONSUMER)
                .await
                .ok()?;
            let info = c.info().await.ok()?;
            (info.num_pending == 0 && info.num_ack_pending == 0).then_some(())
        }
    })
    .await;
}

async fn restart_and_replay_change_nothing(db: Db) {
    let mut stack = Stack::start(db).await;
    let mut client = stack.client().await;
    let mut ids = Vec::new();
    for (kind, input) in [
        (
            "demo.sleep",
            serde_json::json!({"seconds": 0.2, "steps": 4}),
        ),
        ("demo.flaky", serde_json::json!({"fail_times": 1})),
        ("demo.fail", serde_json::json!(null)),
        (
            "demo.agent",
            serde_json::json!({"prompt": "x", "tokens": 5, "delay_ms": 1}),
        ),
    ] {
        ids.push(super::submit(&mut client, submit_req(kind, input)).await);
    }
    for id in &ids {
        wait_terminal(&client, id).await;
    }
    drained(&stack).await;
    let before = all_tasks(&stack).await;
    assert!(
        before
            .iter()
            .all(|t| TaskState::try_from(t.state).unwrap().is_terminal())
    );

    // Restart: the durable consumer resumes where it was.
    stack.recorder.take().unwrap().stop().await;
    stack.recorder = Some(Running::recorder(recorder_config(
        &stack.nats.url(),
        &stack.db.url,
    )));
    drained(&stack).await;
    assert_eq!(all_tasks(&stack).await, before, "restart changed nothing");

    // Replay: a new consumer from the start of the stream applies every event again.
    stack.recorder.take().unwrap().stop().await;
    let js = stack.nats.jetstream().await;
    js.get_stream(taskwire::nats::EVENTS_STREAM)
        .await
        .unwrap()
        .delete_consumer(taskwire::nats::streams::RECORDER_CONSUMER)
        .await
        .unwrap();
    stack.recorder = Some(Running::recorder(recorder_config(
        &stack.nats.url(),
        &stack.db.url,
    )));
    drained(&stack).await;
    assert_eq!(all_tasks(&stack).await, before, "replay changed nothing");
}

both_databases!(restart_and_replay_change_nothing);
