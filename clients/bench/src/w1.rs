//! W1: the front door alone.

use std::time::{Duration, Instant};

use taskwire::pb::v1::task_service_client::TaskServiceClient;

use crate::{
    Args,
    deployment::{Deployment, channels, closed_loop},
    results::Results,
    submit_req,
};

/// W1: SubmitTask alone (a kind no worker serves, so only the front door is measured).
pub async fn run(args: &Args, d: &Deployment, db: &'static str, r: &mut Results) {
    let per = args.n / args.concurrency;
    let started = Instant::now();
    let lat = closed_loop(&d.api(), "bench.submit", args.concurrency, per).await;
    let secs = started.elapsed().as_secs_f64();
    r.add(
        "W1",
        db,
        format!("submits/s (closed loop, c={})", args.concurrency),
        lat.len() as f64 / secs,
        "/s",
    );
    r.latencies("W1", db, "submit latency (closed loop)", lat);

    // Open loop: a fixed offered rate, whatever the answers do.
    let chans = channels(&d.api(), 8).await;
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / args.rate as f64));
    let end = Instant::now() + Duration::from_secs(args.open_loop_secs);
    let mut pending = Vec::new();
    let mut i = 0;
    while Instant::now() < end {
        ticker.tick().await;
        let mut c = TaskServiceClient::new(chans[i % chans.len()].clone());
        i += 1;
        pending.push(tokio::spawn(async move {
            let t = Instant::now();
            c.submit_task(submit_req("bench.submit", serde_json::json!(null)))
                .await
                .expect("submit");
            t.elapsed()
        }));
    }
    let mut lat = Vec::new();
    for p in pending {
        lat.push(p.await.expect("submit"));
    }
    r.latencies(
        "W1",
        db,
        &format!("submit latency at {}/s offered", args.rate),
        lat,
    );
}
