//! W2: tasks end to end, submit to SUCCEEDED in the database; W2B the same with
//! SubmitTasks batches.

use std::time::{Duration, Instant};

use taskwire::{pb::v1::TaskState, store::Store};

use crate::{
    Args,
    deployment::{Deployment, closed_loop, closed_loop_batches},
    results::Results,
};

/// How W2 submits its tasks.
#[derive(Debug, Clone, Copy)]
pub enum Submits {
    /// SubmitTask calls from --concurrency clients.
    Single,
    /// SubmitTasks calls of --batch-size tasks from --batch-clients clients.
    Batched,
}

/// W2 (or W2B): demo.echo tasks from submit until SUCCEEDED is recorded in the
/// database.
pub async fn run(args: &Args, d: &Deployment, db: &'static str, r: &mut Results, how: Submits) {
    let store = Store::connect(&d.db.url, &Default::default())
        .await
        .expect("store");
    let before = store
        .count_in_state(TaskState::Succeeded)
        .await
        .expect("count");
    let (load, clients, per_call) = match how {
        Submits::Single => ("W2", args.concurrency, 1),
        Submits::Batched => ("W2B", args.batch_clients, usize::from(args.batch_size)),
    };
    let per = (args.n / (clients * per_call)).max(1);
    let total = per * clients * per_call;
    let started = Instant::now();
    match how {
        Submits::Single => {
            closed_loop(&d.api(), "demo.echo", clients, per).await;
        }
        Submits::Batched => {
            closed_loop_batches(&d.api(), "demo.echo", clients, per, per_call).await;
        }
    }
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
    let calls = match how {
        Submits::Single => format!("c={clients}"),
        Submits::Batched => format!("c={clients}x{per_call}"),
    };
    r.add(
        load,
        db,
        format!("tasks/s end to end ({} workers, {calls})", args.workers),
        total as f64 / secs,
        "/s",
    );
    r.add(
        load,
        db,
        "of which submitting",
        submitted.as_secs_f64(),
        "s",
    );
}
