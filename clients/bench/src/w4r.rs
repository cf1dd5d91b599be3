//! W4R: W4's fan-out over Server-Sent Events.

use std::time::Instant;

use crate::{
    Args,
    deployment::Deployment,
    rest::{self, Rest},
    results::Results,
    w4::{self, Seen},
};

/// W4R: W4 (the same flags, tasks and figures) with each stream a
/// `GET /v1/tasks/{id}/events` answer. HTTP/1.1 carries one answer per connection, so
/// the watch service holds --w4-streams TCP connections where W4's gRPC streams share
/// 32: what that costs in memory and latency is the point of the comparison.
pub async fn run(args: &Args, d: &Deployment, db: &'static str, r: &mut Results) {
    let ids = w4::emitting_tasks(args, d).await;
    let rest = Rest::new(d.watch_addr);
    let started = Instant::now();
    let streams: Vec<_> = (0..args.w4_streams)
        .map(|i| {
            let rest = rest.clone();
            let id = ids[i % ids.len()].clone();
            tokio::spawn(async move {
                let mut events = rest.events(&id).await;
                let mut seen = Seen::default();
                // The stream ends after the terminal event.
                while let Some(e) = events.next().await {
                    seen.event(e["time"].as_str().and_then(rest::micros));
                }
                seen
            })
        })
        .collect();
    w4::report(args, d, db, r, "W4R", started, streams).await;
}
