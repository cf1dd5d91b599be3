//! Tasks run: the built-in kinds succeed with the right output and ordered progress;
//! retries back off and end in the dead-letter stream; a live long task is not
//! redelivered; a cancelled running task stops at once and never runs again; one
//! kind with a backlog gets the slots the idle kinds leave.

use std::time::{Duration, Instant};

use taskwire::{
    json,
    pb::v1::{CancelTaskRequest, SubmitTaskRequest, TaskState},
};
use taskwire_tests::{
    Db, Stack, both_databases, dlq_messages, eventually, task_events, tasks_in_stream,
    wait_progress, wait_terminal,
};

use super::submit_req;

fn state_of(ev: &taskwire::pb::internal::v1::Event) -> TaskState {
    TaskState::try_from(ev.state).expect("known state")
}

fn ms(ts: &Option<prost_types::Timestamp>) -> i64 {
    json::timestamp_to_micros(ts.as_ref().expect("time")) / 1000
}

async fn demo_kinds_succeed(db: Db) {
    let stack = Stack::start(db).await;
    let mut client = stack.client().await;
    let js = stack.nats.jetstream().await;

    let echo = super::submit(
        &mut client,
        submit_req("demo.echo", serde_json::json!({"a": [1, "x"]})),
    )
    .await;
    let sleep = super::submit(
        &mut client,
        submit_req(
            "demo.sleep",
            serde_json::json!({"seconds": 0.3, "steps": 3}),
        ),
    )
    .await;
    let agent = super::submit(
        &mut client,
        submit_req(
            "demo.agent",
            serde_json::json!({"prompt": "hi", "tokens": 6, "delay_ms": 5}),
        ),
    )
    .await;

    let t = wait_terminal(&client, &echo).await;
    assert_eq!(t.state, TaskState::Succeeded as i32, "{t:?}");
    assert_eq!(
        json::value_to_json(t.output.as_ref()).unwrap(),
        serde_json::json!({"a": [1, "x"]})
    );
    assert_eq!(t.attempt, 1);
    assert!(t.started_at.is_some() && t.finished_at.is_some());

    let t = wait_terminal(&client, &sleep).await;
    assert_eq!(t.state, TaskState::Succeeded as i32, "{t:?}");
    assert_eq!(
        json::value_to_json(t.output.as_ref()).unwrap(),
        serde_json::json!({"slept": 0.3})
    );
    assert_eq!(t.progress.as_ref().map(|p| p.fraction), Some(1.0));
    let events = task_events(&js, &sleep).await;
    let fractions: Vec<f64> = events
        .iter()
        .filter(|(_, e)| state_of(e) == TaskState::Running)
        .filter_map(|(_, e)| e.progress.as_ref().map(|p| p.fraction))
        .collect();
    assert_eq!(fractions.len(), 3, "{fractions:?}");
    assert!((fractions[0] - 1.0 / 3.0).abs() < 1e-9 && (fractions[2] - 1.0).abs() < 1e-9);
    assert!(
        fractions.windows(2).all(|w| w[0] < w[1]),
        "progress in order"
    );
    assert!(
        events.windows(2).all(|w| w[0].0 < w[1].0),
        "seq strictly increases"
    );
    assert_eq!(
        t.last_seq,
        events.last().unwrap().0,
        "the record holds the newest event"
    );

    let t = wait_terminal(&client, &agent).await;
    assert_eq!(t.state, TaskState::Succeeded as i32, "{t:?}");
    let text = json::value_to_json(t.output.as_ref()).unwrap()["text"]
        .as_str()
        .unwrap()
        .to_string();
    let tokens: Vec<String> = task_events(&js, &agent)
        .await
        .iter()
        .filter(|(_, e)| state_of(e) == TaskState::Running)
        .filter_map(|(_, e)| e.progress.as_ref().map(|p| p.message.clone()))
        .collect();
    assert_eq!(tokens.len(), 6, "one progress message per token");
    assert_eq!(
        tokens.join(" "),
        text,
        "the tokens streamed make the output"
    );

    assert!(
        tasks_in_stream(&js).await.is_empty(),
        "every task was acked off the work queue"
    );
}

async fn flaky_retries_with_growing_backoff(db: Db) {
    let stack = Stack::start(db).await;
    let mut client = stack.client().await;
    let js = stack.nats.jetstream().await;
    let id = super::submit(
        &mut client,
        submit_req("demo.flaky", serde_json::json!({"fail_times": 2})),
    )
    .await;

    let t = wait_terminal(&client, &id).await;
    assert_eq!(t.state, TaskState::Succeeded as i32, "{t:?}");
    assert_eq!(t.attempt, 3);
    assert_eq!(
        json::value_to_json(t.output.as_ref()).unwrap(),
        serde_json::json!({"attempts": 3})
    );

    let events = task_events(&js, &id).await;
    let states: Vec<(TaskState, u32)> = events
        .iter()
        .map(|(_, e)| (state_of(e), e.attempt))
        .collect();
    use TaskState::*;
    assert_eq!(
        states,
        vec![
            (Running, 1),
            (Retrying, 1),
            (Running, 2),
            (Retrying, 2),
            (Running, 3),
            (Succeeded, 3)
        ]
    );
    let retry = events[1]
        .1
        .error
        .as_ref()
        .expect("RETRYING carries the error");
    assert!(
        retry.retryable && retry.message.contains("1 of 2"),
        "{retry:?}"
    );
    // The pause before each retry grows (200ms base, doubling, jitter in [0.75, 1)).
    let gap1 = ms(&events[2].1.time) - ms(&events[1].1.time);
    let gap2 = ms(&events[4].1.time) - ms(&events[3].1.time);
    assert!(gap1 >= 140, "first backoff {gap1}ms");
    assert!(gap2 > gap1, "backoff grows: {gap1}ms then {gap2}ms");
}

async fn spent_attempts_go_to_the_dead_letter_stream(db: Db) {
    let stack = Stack::start(db).await;
    let mut client = stack.client().await;
    let js = stack.nats.jetstream().await;
    let id = super::submit(
        &mut client,
        SubmitTaskRequest {
            max_attempts: 2,
            ..submit_req("demo.flaky", serde_json::json!({"fail_times": 10}))
        },
    )
    .await;
    let t = wait_terminal(&client, &id).await;
    assert_eq!(t.state, TaskState::Failed as i32, "{t:?}");
    assert_eq!(t.attempt, 2, "exactly two attempts");
    let err = t.error.expect("error recorded");
    assert!(err.retryable && err.message.contains("2 of 10"), "{err:?}");
    let runs = task_events(&js, &id)
        .await
        .iter()
        .filter(|(_, e)| state_of(e) == TaskState::Running)
        .count();
    assert_eq!(runs, 2);

    let dlq = eventually("the task reaches the DLQ", || {
        let js = js.clone();
        async move { Some(dlq_messages(&js).await).filter(|d| !d.is_empty()) }
    })
    .await;
    assert_eq!(
        dlq,
        vec![(id.clone(), "taskwire.dlq.demo.flaky".to_string())]
    );
    assert!(
        tasks_in_stream(&js).await.is_empty(),
        "and left TASKWIRE_TASKS"
    );

    // demo.fail: one attempt, not retryable.
    let id = super::submit(
        &mut client,
        submit_req("demo.fail", serde_json::json!(null)),
    )
    .await;
    let t = wait_terminal(&client, &id).await;
    assert_eq!(t.state, TaskState::Failed as i32);
    assert_eq!(t.attempt, 1);
    let err = t.error.expect("error");
    assert!(!err.retryable);
    assert_eq!(err.code, "DEMO_FAILURE");
    eventually("demo.fail reaches the DLQ", || {
        let js = js.clone();
        let id = id.clone();
        async move {
            dlq_messages(&js)
                .await
                .iter()
                .any(|(m, _)| *m == id)
                .then_some(())
        }
    })
    .await;
}

async fn long_task_is_not_redelivered(db: Db) {
    // ack_wait 1s; the task runs 3.5s: heartbeats must keep it with its worker.
    let stack = Stack::start_with(db, |url| {
        let mut c = taskwire_tests::worker_config(url);
        c.ack_wait = Duration::from_secs(1);
        c
    })
    .await;
    let mut client = stack.client().await;
    let id = super::submit(
        &mut client,
        submit_req(
            "demo.sleep",
            serde_json::json!({"seconds": 3.5, "steps": 2}),
        ),
    )
    .await;
    let t = wait_terminal(&client, &id).await;
    assert_eq!(t.state, TaskState::Succeeded as i32);
    assert_eq!(t.attempt, 1, "never redelivered");
    let events = task_events(&stack.nats.jetstream().await, &id).await;
    let starts = events
        .iter()
        .filter(|(_, e)| state_of(e) == TaskState::Running && e.progress.is_none())
        .count();
    assert_eq!(starts, 1, "one start: {events:?}");
}

async fn cancel_stops_a_running_task(db: Db) {
    let stack = Stack::start(db).await;
    let mut client = stack.client().await;
    let js = stack.nats.jetstream().await;
    let id = super::submit(
        &mut client,
        submit_req(
            "demo.sleep",
            serde_json::json!({"seconds": 30, "steps": 300}),
        ),
    )
    .await;
    wait_progress(&js, &id, 0.0).await;

    let task = client
        .cancel_task(CancelTaskRequest {
            task_id: id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    let cancelled_at = Instant::now();
    assert_eq!(task.state, TaskState::Cancelled as i32);
    // The worker's handler stops within a second and acks the task off the queue.
    loop {
        if tasks_in_stream(&js).await.is_empty() {
            break;
        }
        assert!(
            cancelled_at.elapsed() < Duration::from_secs(1),
            "worker did not stop within 1s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Acked off the work queue, and nothing pending or unacked on the kind's consumer:
    // no delivery of it can come again, so no second attempt can ever run.
    let mut consumer: async_nats::jetstream::consumer::PullConsumer = js
        .get_consumer_from_stream(
            taskwire::nats::kind_consumer("demo.sleep"),
            taskwire::nats::TASKS_STREAM,
        )
        .await
        .unwrap();
    let info = consumer.info().await.unwrap();
    assert_eq!(
        (info.num_pending, info.num_ack_pending),
        (0, 0),
        "nothing left to deliver: {info:?}"
    );
    let events = task_events(&js, &id).await;
    let (last_seq, last) = events.last().unwrap();
    assert_eq!(
        state_of(last),
        TaskState::Cancelled,
        "no event after the cancel"
    );
    assert_eq!(*last_seq, task.last_seq);
    assert!(events.iter().all(|(_, e)| e.attempt <= 1), "never rerun");
}

/// A worker serving five kinds (the built-ins) with 12 slots: a backlog of one kind
/// runs 8 at once, since each idle kind holds one slot for its next task. (Slots shared
/// out per kind, as before, let it run 4 while the idle kinds held the rest.)
async fn a_busy_kind_gets_the_slots_idle_kinds_leave(db: Db) {
    let stack = Stack::start_with(db, |url| {
        let mut c = taskwire_tests::worker_config(url);
        c.concurrency = 12;
        c
    })
    .await;
    let mut client = stack.client().await;
    let js = stack.nats.jetstream().await;
    let mut ids = Vec::new();
    for _ in 0..8 {
        ids.push(
            super::submit(
                &mut client,
                submit_req("demo.sleep", serde_json::json!({"seconds": 6, "steps": 1})),
            )
            .await,
        );
    }
    eventually("all 8 tasks running", || {
        let (js, ids) = (&js, &ids);
        async move {
            for id in ids {
                let events = task_events(js, id).await;
                if !events
                    .iter()
                    .any(|(_, e)| state_of(e) == TaskState::Running)
                {
                    return None;
                }
            }
            Some(())
        }
    })
    .await;
    for id in &ids {
        let events = task_events(&js, id).await;
        assert!(
            events.iter().all(|(_, e)| !state_of(e).is_terminal()),
            "all 8 started before any finished: {id} {events:?}"
        );
    }
    for id in &ids {
        assert_eq!(
            wait_terminal(&client, id).await.state,
            TaskState::Succeeded as i32
        );
    }
}

/// A redelivery of a task whose attempt still runs elsewhere (its heartbeats were
/// lost, as when a NATS node dies) is left to that attempt; once nobody answers for
/// it, the next redelivery takes it over with the next attempt number, counted in the
/// history rather than in deliveries. The "attempt elsewhere" is this test, speaking
/// the protocol (docs/protocol.md §5): it holds the first delivery without
/// heartbeats, appends its RUNNING event and answers `taskwire.running.<id>`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redelivery_is_left_to_a_live_attempt() {
    use std::sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    };

    use futures::StreamExt;
    use taskwire::{domain::TaskId, nats};

    let nats_server = taskwire_tests::NatsServer::start();
    let url = nats_server.url();
    let db = Db::Sqlite.create().await;
    let api = taskwire_tests::Api::start(taskwire_tests::api_config(&url, &db.url)).await;
    let _recorder =
        taskwire_tests::Running::recorder(taskwire_tests::recorder_config(&url, &db.url));
    let config = taskwire_tests::worker_config(&url);
    let js = nats_server.jetstream().await;
    let consumer =
        nats::setup_kind_consumer(&js, "demo.echo", config.ack_wait, config.max_deliver, None)
            .await
            .unwrap();
    let mut client = api.client().await;
    let id = super::submit(
        &mut client,
        submit_req("demo.echo", serde_json::json!("hi")),
    )
    .await;
    let task = TaskId::parse(&id).unwrap();

    // The attempt elsewhere: the first delivery, held without heartbeats, RUNNING.
    let mut batch = consumer
        .fetch()
        .max_messages(1)
        .expires(Duration::from_secs(5))
        .messages()
        .await
        .unwrap();
    let _held = batch.next().await.expect("the first delivery").unwrap();
    let history = nats::History::open(&js).await.unwrap();
    history
        .append(
            &nats::new_event(task, "demo.echo", TaskState::Running, 1),
            0,
        )
        .await
        .unwrap();
    let (alive, asked) = (
        Arc::new(AtomicBool::new(true)),
        Arc::new(AtomicUsize::new(0)),
    );
    let nc = nats_server.client().await;
    let mut queries = nc.subscribe(nats::running_subject(task)).await.unwrap();
    let answering = {
        let (alive, asked, nc) = (alive.clone(), asked.clone(), nc.clone());
        tokio::spawn(async move {
            while let Some(q) = queries.next().await {
                asked.fetch_add(1, Ordering::SeqCst);
                if alive.load(Ordering::SeqCst)
                    && let Some(reply) = q.reply
                {
                    nc.publish(reply, "1".into()).await.unwrap();
                }
            }
        })
    };
    nc.flush().await.unwrap();

    // The real worker gets the redelivery after ack_wait, asks, hears "1": leaves it.
    let _worker = taskwire_tests::Running::worker(config);
    eventually("the redelivery asks who runs the task", || async {
        (asked.load(Ordering::SeqCst) >= 1).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let events = task_events(&js, &id).await;
    assert_eq!(events.len(), 1, "left to the live attempt: {events:?}");

    // The attempt elsewhere dies: the next redelivery hears nothing and takes over.
    alive.store(false, Ordering::SeqCst);
    let t = wait_terminal(&client, &id).await;
    assert_eq!(t.state, TaskState::Succeeded as i32, "{t:?}");
    let events = task_events(&js, &id).await;
    let runs: Vec<u32> = events
        .iter()
        .filter(|(_, e)| state_of(e) == TaskState::Running && e.progress.is_none())
        .map(|(_, e)| e.attempt)
        .collect();
    assert_eq!(runs, [1, 2], "attempt 2, not delivery 3: {events:?}");
    assert!(asked.load(Ordering::SeqCst) >= 2, "the takeover asked too");
    answering.abort();
}

both_databases!(
    a_busy_kind_gets_the_slots_idle_kinds_leave,
    demo_kinds_succeed,
    flaky_retries_with_growing_backoff,
    spent_attempts_go_to_the_dead_letter_stream,
    long_task_is_not_redelivered,
    cancel_stops_a_running_task
);
