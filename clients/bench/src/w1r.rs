//! W1R: W1's closed loop over REST/JSON.

use std::time::Instant;

use crate::{Args, deployment::Deployment, rest::Rest, results::Results};

/// W1R: `POST /v1/tasks` alone, as W1's closed loop (the same kind no worker serves,
/// the same N and C) but JSON over HTTP/1.1 keep-alive connections, as many as
/// clients, instead of gRPC calls sharing 8 HTTP/2 connections.
pub async fn run(args: &Args, d: &Deployment, db: &'static str, r: &mut Results) {
    let rest = Rest::new(d.api_addr);
    let per = args.n / args.concurrency;
    let body =
        |i: usize| serde_json::json!({"kind": "bench.submit", "input": {"i": i}}).to_string();
    // One submit per client at once first, so the pool holds a connection per client
    // before the clock starts, as W1's channels are connected before it does.
    futures::future::join_all((0..args.concurrency).map(|i| rest.submit(body(i)))).await;
    let started = Instant::now();
    let clients: Vec<_> = (0..args.concurrency)
        .map(|i| {
            let rest = rest.clone();
            let body = body(i);
            tokio::spawn(async move {
                let mut lat = Vec::with_capacity(per);
                for _ in 0..per {
                    let t = Instant::now();
                    rest.submit(body.clone()).await;
                    lat.push(t.elapsed());
                }
                lat
            })
        })
        .collect();
    let mut lat = Vec::new();
    for c in clients {
        lat.extend(c.await.expect("client"));
    }
    let secs = started.elapsed().as_secs_f64();
    r.add(
        "W1R",
        db,
        format!("submits/s (closed loop, c={})", args.concurrency),
        lat.len() as f64 / secs,
        "/s",
    );
    r.latencies("W1R", db, "submit latency (closed loop)", lat);
}
