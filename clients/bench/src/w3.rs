//! W3: one task's round trip, submit to its terminal event over WatchTask, and where
//! its time goes: each hop read from the events' own times (every process here shares
//! this machine's clock).

use std::time::{Duration, Instant, SystemTime};

use taskwire::pb::v1::{
    TaskState, task_service_client::TaskServiceClient, watch_service_client::WatchServiceClient,
};

use crate::{
    Args,
    deployment::{Deployment, channels},
    results::Results,
    submit_req,
};

/// W3: one at a time, submit then follow WatchTask to the terminal event.
pub async fn run(args: &Args, d: &Deployment, db: &'static str, r: &mut Results) {
    let mut tasks = TaskServiceClient::new(channels(&d.api(), 1).await.remove(0));
    let mut watch = WatchServiceClient::new(channels(&d.watch(), 1).await.remove(0));
    let (mut lat, mut submitted) = (Vec::new(), Vec::new());
    // (task id, when its answer came, when its terminal event came), split afterwards.
    let mut trips = Vec::with_capacity(args.round_trips);
    for i in 0..args.round_trips {
        let t = Instant::now();
        let id = tasks
            .submit_task(submit_req("demo.echo", serde_json::json!(i)))
            .await
            .expect("submit")
            .into_inner()
            .task_id;
        submitted.push(t.elapsed());
        let answered = SystemTime::now();
        let mut s = crate::deployment::watch(&mut watch, id.clone()).await;
        while let Some(e) = s.message().await.expect("stream") {
            if TaskState::try_from(e.state).is_ok_and(TaskState::is_terminal) {
                break;
            }
        }
        lat.push(t.elapsed());
        trips.push((id, answered, SystemTime::now()));
    }
    r.latencies("W3", db, "submit -> terminal event", lat);
    r.latencies("W3", db, "of which SubmitTask answered", submitted);

    // Where the rest goes, from each task's history (its events' own times), read
    // once the timed round trips are over.
    let js = d.nats.jetstream().await;
    let mut hops = Hops::default();
    for (id, answered, heard) in trips {
        let events = taskwire_tests::task_events(&js, &id).await;
        // The claim is the RUNNING without progress; SUCCEEDED carries progress 1.
        let time = |state: TaskState| {
            events
                .iter()
                .find(|(_, e)| {
                    e.state == state as i32 && (state != TaskState::Running || e.progress.is_none())
                })
                .and_then(|(_, e)| SystemTime::try_from(e.time?).ok())
        };
        let since = |a: SystemTime, b: SystemTime| b.duration_since(a).unwrap_or_default();
        if let (Some(claimed), Some(ended)) = (time(TaskState::Running), time(TaskState::Succeeded))
        {
            hops.answer_to_claim.push(since(answered, claimed));
            hops.claim_to_end.push(since(claimed, ended));
            hops.end_to_watcher.push(since(ended, heard));
        }
    }
    for (what, l) in [
        (
            "hop: answer -> worker's claim (RUNNING)",
            hops.answer_to_claim,
        ),
        (
            "hop: claim -> SUCCEEDED (handler, appends)",
            hops.claim_to_end,
        ),
        ("hop: SUCCEEDED -> the watcher has it", hops.end_to_watcher),
    ] {
        r.median("W3", db, what, l);
    }
}

/// Each hop of a round trip, from the answer on.
#[derive(Debug, Default)]
struct Hops {
    answer_to_claim: Vec<Duration>,
    claim_to_end: Vec<Duration>,
    end_to_watcher: Vec<Duration>,
}
