//! Reads agree with what watchers saw: a client that watched a task to its terminal
//! event and reads it right after (GetStatus, ListTasks, with and without a state
//! filter) is never told it is still running, although the database trails the event
//! stream by the recorder's lag. A fast client, many times, on both databases.

use taskwire::pb::v1::{GetStatusRequest, ListTasksRequest, TaskState};
use taskwire_tests::{Db, Stack, WatchServer, both_databases, watch_all};

use super::{submit, submit_req};

/// How many watch-then-read rounds; before reads folded the newest event, about four
/// in five rounds read a running task on `taskwire dev`.
const ROUNDS: usize = 200;

async fn a_watcher_that_saw_the_end_reads_it(db: Db) {
    let stack = Stack::start(db).await;
    let watch = WatchServer::start(&stack.nats.url(), &stack.db.url).await;
    let mut client = stack.client().await;
    let mut watcher = watch.client().await;
    for round in 0..ROUNDS {
        // Alternate kinds: one ends SUCCEEDED, the other FAILED (its own code path).
        let kind = if round % 2 == 0 {
            "demo.echo"
        } else {
            "demo.fail"
        };
        let id = submit(
            &mut client,
            submit_req(kind, serde_json::json!({"n": round})),
        )
        .await;
        let events = watch_all(&mut watcher, &id, 0).await;
        let end = events
            .last()
            .expect("the stream ends with the terminal event");
        assert!(
            TaskState::try_from(end.state).is_ok_and(TaskState::is_terminal),
            "{events:?}"
        );

        let status = client
            .get_status(GetStatusRequest {
                task_id: id.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            status.state, end.state,
            "round {round}: GetStatus after the watch"
        );
        assert!(status.last_seq >= end.seq, "round {round}: {status:?}");
        assert!(
            status.started_at.is_some() && status.finished_at.is_some(),
            "round {round}: the record's times: {status:?}"
        );

        let listed = client
            .list_tasks(ListTasksRequest {
                page_size: 1,
                kind: kind.into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .tasks;
        assert_eq!(listed[0].id, id);
        assert_eq!(listed[0].state, end.state, "round {round}: ListTasks");

        // Filtered by the state the watcher saw, it is listed; by RUNNING, it is not.
        let in_end_state = client
            .list_tasks(ListTasksRequest {
                page_size: 1,
                kind: kind.into(),
                state: end.state,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .tasks;
        assert_eq!(
            in_end_state.first().map(|t| t.id.as_str()),
            Some(id.as_str()),
            "round {round}: listed under its terminal state"
        );
        let running = client
            .list_tasks(ListTasksRequest {
                page_size: 50,
                state: TaskState::Running as i32,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .tasks;
        assert!(
            running.iter().all(|t| t.id != id),
            "round {round}: not listed as running"
        );
    }
}

both_databases!(a_watcher_that_saw_the_end_reads_it);
