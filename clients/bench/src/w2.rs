//! W2: tasks end to end, submit to SUCCEEDED in the database.

use std::time::{Duration, Instant};

use taskwire::{pb::v1::TaskState, store::Store};

use crate::{
    Args,
    deployment::{Deployment, closed_loop},
    results::Results,
};

/// W2: demo.echo tasks from submit until SUCCEEDED is recorded in the database.
pub async fn run(args: &Args, d: &Deployment, db: &'static str, r: &mut Results) {
    let store = Store::connect(&d.db.url, &Default::default())
        .await
        .expect("store");
    let before = store
        .count_in_state(TaskState::Succeeded)
        .await
        .expect("count");
    let per = args.n / args.concurrency;
    let total = per * args.concurrency;
    let started = Instant::now();
    closed_loop(&d.api(), "demo.echo", args.concurrency, per).await;
    let submitted = started.elapsed();
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let done = store
            .count_in_state(TaskState::Succeeded)
            .await
            .expect("count")
            - before;
        if done as usize >= total || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let secs = started.elapsed().as_secs_f64();
    r.add(
        "W2",
        db,
        format!(
            "tasks/s end to end ({} workers, c={})",
            args.workers, args.concurrency
        ),
        total as f64 / secs,
        "/s",
    );
    r.add(
        "W2",
        db,
        "of which submitting",
        submitted.as_secs_f64(),
        "s",
    );
}
