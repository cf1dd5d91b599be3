//! Kill things: a worker process dies mid-task, a worker is stopped under load. Nothing
//! accepted is lost, nothing finishes twice, and seq never goes back (guarantees 1, 2).

use std::collections::HashMap;

use taskwire::pb::v1::TaskState;
use taskwire_tests::{
    Api, Db, NatsServer, Running, WorkerProcess, api_config, both_databases, eventually,
    recorder_config, task_events, wait_progress, wait_terminal, worker_config,
};

use super::submit_req;

async fn killed_worker_task_is_finished_by_another(db: Db) {
    let nats = NatsServer::start();
    let db = db.create().await;
    let api = Api::start(api_config(&nats.url(), &db.url)).await;
    let _recorder = Running::recorder(recorder_config(&nats.url(), &db.url));
    let mut client = api.client().await;
    let js = nats.jetstream().await;

    let mut doomed = WorkerProcess::spawn(&nats.url(), &[]);
    let id = super::submit(
        &mut client,
        submit_req("demo.sleep", serde_json::json!({"seconds": 3, "steps": 12})),
    )
    .await;
    // The first worker is a quarter through.
    wait_progress(&js, &id, 0.25).await;
    doomed.kill();

    // Another worker takes it over once ack_wait (2s) has passed.
    let _rescuer = Running::worker(worker_config(&nats.url()));
    let t = wait_terminal(&client, &id).await;
    assert_eq!(t.state, TaskState::Succeeded as i32, "{t:?}");
    assert_eq!(t.attempt, 2, "the second delivery finished it");

    let events = task_events(&js, &id).await;
    assert!(
        events.windows(2).all(|w| w[0].0 < w[1].0),
        "seq never goes back"
    );
    let terminal: Vec<_> = events
        .iter()
        .filter(|(_, e)| TaskState::try_from(e.state).unwrap().is_terminal())
        .collect();
    assert_eq!(terminal.len(), 1, "exactly one terminal event");
    assert_eq!(
        terminal[0].0,
        events.last().unwrap().0,
        "and it is the last"
    );
}

/// A worker process killed in a parent's fan-in step: another worker runs the fan-in
/// again (its second attempt) with the same 20 results; the first step is not run
/// again, no child is created twice, and the parent ends once.
async fn worker_killed_in_fan_in_loses_nothing(db: Db) {
    use taskwire::pb::v1::ListTasksRequest;
    let nats = NatsServer::start();
    let db = db.create().await;
    let api = Api::start(api_config(&nats.url(), &db.url)).await;
    let _recorder = Running::recorder(recorder_config(&nats.url(), &db.url));
    let mut client = api.client().await;
    let js = nats.jetstream().await;

    let mut doomed = WorkerProcess::spawn(&nats.url(), &[]);
    let id = super::submit(
        &mut client,
        submit_req(
            "demo.fanout",
            serde_json::json!({"children": 20, "fan_in_seconds": 3}),
        ),
    )
    .await;
    // demo.fanout's first step reports no progress: this is its fan-in, a third through.
    wait_progress(&js, &id, 0.3).await;
    doomed.kill();

    let _rescuer = Running::worker(worker_config(&nats.url()));
    let t = wait_terminal(&client, &id).await;
    assert_eq!(t.state, TaskState::Succeeded as i32, "{t:?}");
    assert_eq!(t.attempt, 2, "the fan-in's second attempt finished it");
    let out = taskwire::json::value_to_json(t.output.as_ref()).unwrap();
    assert_eq!(out["received"], 20, "{out}");
    assert_eq!(out["succeeded"], 20, "{out}");

    let events = task_events(&js, &id).await;
    let in_state = |s: TaskState| events.iter().filter(|(_, e)| e.state == s as i32).count();
    assert_eq!(in_state(TaskState::Waiting), 1, "the first step ran once");
    assert_eq!(in_state(TaskState::Succeeded), 1, "the parent ended once");
    assert_eq!(events.last().unwrap().1.state, TaskState::Succeeded as i32);
    let children = client
        .list_tasks(ListTasksRequest {
            parent_id: id.clone(),
            page_size: 100,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .tasks;
    assert_eq!(children.len(), 20, "no child was created twice");
}

async fn sigterm_under_load_loses_nothing(db: Db) {
    let nats = NatsServer::start();
    let db = db.create().await;
    let api = Api::start(api_config(&nats.url(), &db.url)).await;
    let _recorder = Running::recorder(recorder_config(&nats.url(), &db.url));
    let mut client = api.client().await;
    let js = nats.jetstream().await;

    let mut leaving = WorkerProcess::spawn(
        &nats.url(),
        &["--shutdown-grace", "500ms", "--concurrency", "8"],
    );
    let _staying = Running::worker(worker_config(&nats.url()));
    // Stop one worker while tasks run on both. The leaving one is a process of its
    // own, which under load may start pulling only after the other has taken (or
    // even finished) the first tasks: tasks keep arriving, a few at a time, until it
    // holds some. Each runs 2 s, well past the leaving worker's 500 ms grace, so
    // what it holds when told to stop is handed back, not finished.
    let mut ids = Vec::new();
    loop {
        for _ in 0..8 {
            let task = submit_req(
                "demo.sleep",
                serde_json::json!({"seconds": 2.0, "steps": 4}),
            );
            ids.push(super::submit(&mut client, task).await);
        }
        let holds = async {
            while leaving.tasks_running().await.is_none_or(|n| n == 0) {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        };
        if tokio::time::timeout(std::time::Duration::from_secs(1), holds)
            .await
            .is_ok()
        {
            break;
        }
        assert!(
            ids.len() < 160,
            "the leaving worker took none of {} tasks",
            ids.len()
        );
    }
    leaving.terminate();
    let status = leaving.wait_exit().await;
    assert!(status.success(), "graceful exit: {status:?}");

    let mut outcomes = HashMap::new();
    for id in &ids {
        let t = wait_terminal(&client, id).await;
        assert_eq!(t.state, TaskState::Succeeded as i32, "{t:?}");
        let succeeded = task_events(&js, id)
            .await
            .iter()
            .filter(|(_, e)| e.state == TaskState::Succeeded as i32)
            .count();
        outcomes.insert(id.clone(), succeeded);
    }
    assert!(
        outcomes.values().all(|&n| n == 1),
        "each task completed exactly once: {outcomes:?}"
    );
    // The stopped worker really held tasks: some were handed back to the other.
    let mut handed_back = 0;
    for id in &ids {
        handed_back += task_events(&js, id)
            .await
            .iter()
            .filter(|(_, e)| {
                e.error
                    .as_ref()
                    .is_some_and(|e| e.code == "WORKER_SHUTDOWN")
            })
            .count();
    }
    assert!(
        handed_back > 0,
        "the shutdown handed no task back; the test proved nothing"
    );
}

both_databases!(
    worker_killed_in_fan_in_loses_nothing,
    killed_worker_task_is_finished_by_another,
    sigterm_under_load_loses_nothing
);

/// Every worker holding a task dies until JetStream stops delivering it (the
/// consumer's max_deliver, lowered to 2 here): the MAX_DELIVERIES advisory, kept in a
/// stream, lets the recorder fail the task, dead-letter it and clear the work queue.
async fn exhausted_deliveries_fail_the_task(db: Db) {
    use taskwire::pb::v1::SubmitTaskRequest;
    use taskwire_tests::{dlq_messages, tasks_in_stream};
    let nats = NatsServer::start();
    let db = db.create().await;
    let api = Api::start(api_config(&nats.url(), &db.url)).await;
    let _recorder = Running::recorder(recorder_config(&nats.url(), &db.url));
    let mut client = api.client().await;
    let js = nats.jetstream().await;
    let id = super::submit(
        &mut client,
        SubmitTaskRequest {
            max_attempts: 5,
            ..submit_req(
                "demo.sleep",
                serde_json::json!({"seconds": 60, "steps": 60}),
            )
        },
    )
    .await;
    let flags = ["--max-deliver", "2"];
    for attempt in 1..=2u32 {
        let mut doomed = WorkerProcess::spawn(&nats.url(), &flags);
        eventually(&format!("attempt {attempt} runs"), || {
            let js = js.clone();
            let id = id.clone();
            async move {
                task_events(&js, &id)
                    .await
                    .iter()
                    .any(|(_, e)| e.attempt == attempt && e.state == TaskState::Running as i32)
                    .then_some(())
            }
        })
        .await;
        doomed.kill();
    }
    // A live worker's next pull makes JetStream emit the advisory.
    let _puller = WorkerProcess::spawn(&nats.url(), &flags);
    let t = wait_terminal(&client, &id).await;
    assert_eq!(t.state, TaskState::Failed as i32, "{t:?}");
    assert_eq!(
        t.error.as_ref().map(|e| e.code.as_str()),
        Some("MAX_DELIVERIES")
    );
    eventually("the task is dead-lettered and off the work queue", || {
        let js = js.clone();
        let id = id.clone();
        async move {
            let in_dlq = dlq_messages(&js).await.iter().any(|(m, _)| *m == id);
            (in_dlq && tasks_in_stream(&js).await.is_empty()).then_some(())
        }
    })
    .await;
}

both_databases!(exhausted_deliveries_fail_the_task);
