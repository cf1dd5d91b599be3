//! `taskwire dev` as a user runs it: Ctrl-C in its terminal (SIGINT to its whole
//! process group) while tasks run drains and stops it within its limit, NATS last, and
//! the interrupted tasks finish after the next start; a second Ctrl-C stops it at
//! once; kill -9 mid-task loses nothing either.

use std::time::Instant;

use taskwire::pb::v1::{TaskState, task_service_client::TaskServiceClient};
use taskwire_tests::{DevProcess, alive, connect, eventually, task_events, wait_terminal};
use tonic::transport::Channel;

use super::{
    cli::{args, run, stdout},
    submit, submit_req,
};

/// `taskwire dev`'s bound on a drain (clients/cli/src/dev/mod.rs, DRAIN_LIMIT).
const DRAIN_LIMIT: std::time::Duration = std::time::Duration::from_secs(10);

async fn sleep_task(client: &mut TaskServiceClient<Channel>, seconds: f64) -> String {
    let steps = (seconds * 4.0) as u32;
    submit(
        client,
        submit_req(
            "demo.sleep",
            serde_json::json!({"seconds": seconds, "steps": steps}),
        ),
    )
    .await
}

/// Waits until each task has reported progress (its handler is running).
async fn wait_running(client: &TaskServiceClient<Channel>, ids: &[String]) {
    eventually("every task is running", || async move {
        for id in ids {
            let t = client
                .clone()
                .get_status(taskwire::pb::v1::GetStatusRequest {
                    task_id: id.clone(),
                })
                .await
                .ok()?
                .into_inner();
            if t.progress.map_or(0.0, |p| p.fraction) <= 0.0 {
                return None;
            }
        }
        Some(())
    })
    .await;
}

/// The history of a task, read through a fresh connection to dev's NATS.
async fn history(dir: &std::path::Path, id: &str) -> Vec<(u64, taskwire::pb::internal::v1::Event)> {
    let url = std::fs::read_to_string(dir.join("nats-url")).unwrap();
    let client = taskwire::nats::connect(url.trim(), "test", std::time::Duration::from_secs(5))
        .await
        .unwrap();
    task_events(
        &taskwire::nats::jetstream(client, std::time::Duration::from_secs(5)),
        id,
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_drains_in_order_and_the_tasks_finish_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut dev = DevProcess::spawn(dir.path()).await;
    let mut client = connect(dev.addr).await.unwrap();
    // Two that outlast the 3 s grace (handed back), one that ends within it.
    let long = [
        sleep_task(&mut client, 8.0).await,
        sleep_task(&mut client, 8.0).await,
    ];
    let short = sleep_task(&mut client, 1.5).await;
    let all: Vec<String> = long.iter().cloned().chain([short.clone()]).collect();
    wait_running(&client, &all).await;
    let nats = dev.nats_pid().expect("pid file");

    dev.interrupt();
    let interrupted = Instant::now();
    let status = dev.wait_exit().await;
    assert!(status.success(), "Ctrl-C is a clean exit: {status:?}");
    assert!(
        interrupted.elapsed() < DRAIN_LIMIT,
        "dev ended within its drain limit ({:?})",
        interrupted.elapsed()
    );
    assert!(!alive(nats), "Ctrl-C left nats-server {nats} running");

    // Restarted: the short task had finished in the grace period; the long ones were
    // handed back before NATS stopped (so they run again at once) and now finish.
    let dev = DevProcess::spawn(dir.path()).await;
    let client = connect(dev.addr).await.unwrap();
    let t = wait_terminal(&client, &short).await;
    assert_eq!(t.state, TaskState::Succeeded as i32, "{t:?}");
    assert_eq!(t.attempt, 1, "finished within the grace period");
    for id in &long {
        let events = history(dir.path(), id).await;
        assert!(
            events
                .iter()
                .any(|(_, e)| e.state == TaskState::Retrying as i32
                    && e.attempt == 1
                    && e.error
                        .as_ref()
                        .is_some_and(|e| e.code == "WORKER_SHUTDOWN")),
            "handed back by the drain: {events:?}"
        );
        let t = wait_terminal(&client, id).await;
        assert_eq!(t.state, TaskState::Succeeded as i32, "{t:?}");
        assert_eq!(t.attempt, 2, "finished by the attempt after the restart");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_ctrl_c_stops_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut dev = DevProcess::spawn(dir.path()).await;
    let mut client = connect(dev.addr).await.unwrap();
    let id = sleep_task(&mut client, 4.0).await;
    wait_running(&client, std::slice::from_ref(&id)).await;
    let nats = dev.nats_pid().expect("pid file");

    dev.interrupt();
    dev.interrupt();
    let status = dev.wait_exit().await;
    assert_eq!(status.code(), Some(130), "stopped by the second signal");
    assert!(!alive(nats), "nats-server {nats} stopped too");

    // Nothing was drained: no hand-back event. The task is redelivered after the
    // restart's ack_wait and finishes.
    let dev = DevProcess::spawn(dir.path()).await;
    let events = history(dir.path(), &id).await;
    assert!(
        events
            .iter()
            .all(|(_, e)| e.state != TaskState::Retrying as i32),
        "stopped without draining: {events:?}"
    );
    let t = wait_terminal(&connect(dev.addr).await.unwrap(), &id).await;
    assert_eq!(t.state, TaskState::Succeeded as i32, "{t:?}");
    assert_eq!(t.attempt, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_survives_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let mut dev = DevProcess::spawn(dir.path()).await;
    let mut client = connect(dev.addr).await.unwrap();
    let id = sleep_task(&mut client, 3.0).await;
    wait_running(&client, std::slice::from_ref(&id)).await;
    let first_nats = dev.nats_pid().expect("pid file");
    dev.kill(); // kill -9, mid-task: its nats-server is orphaned, still running
    // Not dropped: its Drop would stop the orphan, which the restart below must do.
    std::mem::forget(dev);

    // Restarted on the same data dir: the old nats-server is replaced, the task finishes.
    let dev = DevProcess::spawn(dir.path()).await;
    assert!(!alive(first_nats), "the orphaned nats-server was stopped");
    let addr = dev.addr.to_string();
    let out = run(args(&addr, &["watch", &id, "--json"])).await;
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let last: serde_json::Value =
        serde_json::from_str(stdout(&out).lines().last().unwrap()).unwrap();
    assert_eq!(last["state"], TaskState::Succeeded.as_str_name());
    assert!(
        last["attempt"].as_u64().unwrap() >= 2,
        "finished by a second attempt"
    );
}
