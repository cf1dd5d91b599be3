//! W4: fan-out, many WatchTask streams over a few tasks emitting progress. The tasks,
//! what a stream records and the figures are shared with W4R, its SSE twin.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use taskwire::{
    json,
    pb::v1::{
        TaskState, task_service_client::TaskServiceClient, watch_service_client::WatchServiceClient,
    },
};
use tokio::task::JoinHandle;

use crate::{
    Args,
    deployment::{Deployment, channels},
    procfs::rss_mb,
    results::Results,
    submit_req,
};

/// W4: many WatchTask streams over a few tasks that emit progress at a set rate.
pub async fn run(args: &Args, d: &Deployment, db: &'static str, r: &mut Results) {
    let ids = emitting_tasks(args, d).await;
    let chans = Arc::new(channels(&d.watch(), 32).await);
    let started = Instant::now();
    let streams: Vec<_> = (0..args.w4_streams)
        .map(|i| {
            let chans = chans.clone();
            let id = ids[i % ids.len()].clone();
            tokio::spawn(async move {
                let mut c = WatchServiceClient::new(chans[i % chans.len()].clone());
                let mut s = crate::deployment::watch(&mut c, id).await;
                let mut seen = Seen::default();
                while let Ok(Some(e)) = s.message().await {
                    seen.event(e.time.as_ref().map(json::timestamp_to_micros));
                    if TaskState::try_from(e.state).is_ok_and(TaskState::is_terminal) {
                        break;
                    }
                }
                seen
            })
        })
        .collect();
    report(args, d, db, r, "W4", started, streams).await;
}

/// Submits --w4-tasks demo.agent tasks whose progress makes --w4-rate events a second
/// across --w4-streams streams, for --w4-secs; their ids.
pub async fn emitting_tasks(args: &Args, d: &Deployment) -> Vec<String> {
    let mut tasks = TaskServiceClient::new(channels(&d.api(), 1).await.remove(0));
    // Each stream should receive rate/streams events a second, so each task emits that.
    let delay_ms = (args.w4_streams as u64 * 1000 / args.w4_rate.max(1)).max(1);
    let tokens = args.w4_secs * 1000 / delay_ms;
    let mut ids = Vec::new();
    // Submitted evenly over one emission period, so the tasks' progress is spread in
    // time (the offered rate) instead of arriving as one burst per period.
    let spacing = Duration::from_millis(delay_ms) / args.w4_tasks.max(1) as u32;
    for i in 0..args.w4_tasks {
        tokio::time::sleep(spacing).await;
        let input =
            serde_json::json!({"prompt": format!("f{i}"), "tokens": tokens, "delay_ms": delay_ms});
        ids.push(
            tasks
                .submit_task(submit_req("demo.agent", input))
                .await
                .expect("submit")
                .into_inner()
                .task_id,
        );
    }
    ids
}

/// What one stream saw: when its snapshot came, and (receipt, latency) of each live
/// event.
#[derive(Debug, Default)]
pub struct Seen {
    joined: Option<Instant>,
    got: Vec<(Instant, Duration)>,
}

impl Seen {
    /// An event received now that was sent at `sent` (microseconds since the epoch).
    pub fn event(&mut self, sent: Option<i64>) {
        let now = Instant::now();
        // The first event is the snapshot, not a live delivery.
        if self.joined.is_none() {
            self.joined = Some(now);
        } else if let Some(sent) = sent {
            let lat = Duration::from_micros((json::now_micros() - sent).max(0) as u64);
            self.got.push((now, lat));
        }
    }
}

/// Waits for `streams` (started at `started`) while sampling the watch process's
/// memory, then records the fan-out figures under `workload`.
pub async fn report(
    args: &Args,
    d: &Deployment,
    db: &'static str,
    r: &mut Results,
    workload: &'static str,
    started: Instant,
    streams: Vec<JoinHandle<Seen>>,
) {
    // Peak resident memory of the watch process while the streams run.
    let watch_pid = d.watch_pid();
    let peak_kb = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let sampler = {
        let peak_kb = peak_kb.clone();
        tokio::spawn(async move {
            loop {
                let kb = (rss_mb(watch_pid) * 1024.0) as u64;
                peak_kb.fetch_max(kb, std::sync::atomic::Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    let mut all = Vec::new();
    let mut established = started;
    for s in streams {
        let seen = s.await.expect("stream");
        established = established.max(seen.joined.unwrap_or(started));
        all.extend(seen.got);
    }
    sampler.abort();
    let peak = peak_kb.load(std::sync::atomic::Ordering::Relaxed) as f64 / 1024.0;
    // Steady state: from the moment the last stream had its snapshot (all M streams
    // live) to the last delivery. Start-up (M streams each reading a record at once)
    // is reported apart.
    let end = all.iter().map(|(t, _)| *t).max().unwrap_or(established);
    let steady: Vec<Duration> = all
        .iter()
        .filter(|(t, _)| *t >= established)
        .map(|(_, l)| *l)
        .collect();
    r.add(
        workload,
        db,
        format!("all {} streams live after", args.w4_streams),
        (established - started).as_secs_f64() * 1000.0,
        "ms",
    );
    r.add(
        workload,
        db,
        format!("events/s delivered, all {} streams live", args.w4_streams),
        steady.len() as f64 / (end - established).as_secs_f64().max(1e-3),
        "/s",
    );
    r.latencies(workload, db, "delivery latency, all streams live", steady);
    r.latencies(
        workload,
        db,
        "delivery latency, start-up included",
        all.into_iter().map(|(_, l)| l).collect(),
    );
    r.add(workload, db, "watch peak RSS", peak, "MB");
}
