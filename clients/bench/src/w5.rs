//! W5: footprint: idle memory of each process, and `taskwire dev`'s start-up.

use std::time::Instant;

use taskwire_tests::DevProcess;

use crate::{deployment::Deployment, procfs::rss_mb, results::Results};

/// Idle resident memory of each process of a deployment that has done nothing yet.
pub fn idle_rss(d: &Deployment, db: &'static str, r: &mut Results) {
    for (role, pid) in d.pids() {
        r.add("W5", db, format!("idle RSS {role}"), rss_mb(pid), "MB");
    }
}

/// W5: how fast `taskwire dev` answers health SERVING, nats-server start included.
pub async fn run(r: &mut Results) {
    let dir = tempfile::tempdir().expect("temp dir");
    let t = Instant::now();
    let dev = DevProcess::spawn(dir.path()).await;
    r.add(
        "W5",
        "sqlite",
        "taskwire dev start to SERVING",
        t.elapsed().as_secs_f64() * 1000.0,
        "ms",
    );
    // Dropping it stops it as Ctrl-C does.
    drop(dev);
}
