//! W3: one task's round trip, submit to its terminal event over WatchTask.

use std::time::Instant;

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
    for i in 0..args.round_trips {
        let t = Instant::now();
        let id = tasks
            .submit_task(submit_req("demo.echo", serde_json::json!(i)))
            .await
            .expect("submit")
            .into_inner()
            .task_id;
        submitted.push(t.elapsed());
        let mut s = crate::deployment::watch(&mut watch, id).await;
        while let Some(e) = s.message().await.expect("stream") {
            if TaskState::try_from(e.state).is_ok_and(TaskState::is_terminal) {
                break;
            }
        }
        lat.push(t.elapsed());
    }
    r.latencies("W3", db, "submit -> terminal event", lat);
    r.latencies("W3", db, "of which SubmitTask answered", submitted);
}
