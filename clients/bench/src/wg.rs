//! WG: a task graph, one parent fanning out to --fanout children (demo.echo) and
//! fanning in their results: how long the whole tree takes, how fast its children
//! run, and what the graph itself adds (creating the children after the parent's
//! WAITING event, starting the fan-in after the last child ended), read from the
//! parent's events and the children's records.

use std::time::{Duration, Instant};

use taskwire::{
    domain::TaskId,
    pb::v1::{GetStatusRequest, TaskState, task_service_client::TaskServiceClient},
    store::{ListQuery, Store},
};

use crate::{
    Args,
    deployment::{Deployment, channels},
    results::Results,
    submit_req,
};

pub async fn run(args: &Args, d: &Deployment, db: &'static str, r: &mut Results) {
    let mut tasks = TaskServiceClient::new(channels(&d.api(), 1).await.remove(0));
    let store = Store::connect(&d.db.url, &Default::default())
        .await
        .expect("store");
    let n = args.fanout;
    let started = Instant::now();
    let id = tasks
        .submit_task(submit_req(
            "demo.fanout",
            serde_json::json!({ "children": n }),
        ))
        .await
        .expect("submit")
        .into_inner()
        .task_id;
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let t = tasks
            .get_status(GetStatusRequest {
                task_id: id.clone(),
            })
            .await
            .expect("status")
            .into_inner();
        if TaskState::try_from(t.state).is_ok_and(TaskState::is_terminal) {
            assert_eq!(
                t.state,
                TaskState::Succeeded as i32,
                "the parent failed: {t:?}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "the tree took over 600 s");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let whole = started.elapsed();
    let fan = format!("1 parent, {n} children");
    r.add(
        "WG",
        db,
        format!("{fan}: submit -> SUCCEEDED"),
        whole.as_secs_f64(),
        "s",
    );

    // The children's records: when they were created, when the last one ended.
    let parent = TaskId::parse(&id).expect("an id");
    let (children, _) = store
        .list_tasks(&ListQuery {
            page_size: n as u32,
            parent: Some(parent),
            ..Default::default()
        })
        .await
        .expect("children");
    assert_eq!(children.len(), n, "every child was created once");
    let created = children.iter().map(|c| c.created_at_us).min().unwrap_or(0);
    let ended = children
        .iter()
        .filter_map(|c| c.finished_at_us)
        .max()
        .unwrap_or(0);
    // The parent's events: its WAITING, and its fan-in's first RUNNING.
    let js = d.nats.jetstream().await;
    let events = taskwire_tests::task_events(&js, &id).await;
    let micros = |e: &taskwire::pb::internal::v1::Event| {
        e.time
            .as_ref()
            .map_or(0, taskwire::json::timestamp_to_micros)
    };
    let waiting = events
        .iter()
        .find(|(_, e)| e.state == TaskState::Waiting as i32)
        .map_or(0, |(_, e)| micros(e));
    let fan_in = events
        .iter()
        .find(|(_, e)| e.fan_in_of != 0 && e.state == TaskState::Running as i32)
        .map_or(0, |(_, e)| micros(e));
    let ms = |from: i64, to: i64| (to - from).max(0) as f64 / 1000.0;
    r.add(
        "WG",
        db,
        format!("{fan}: children run (created -> last ended)"),
        n as f64 / ((ended - created).max(1) as f64 / 1e6),
        "/s",
    );
    r.add(
        "WG",
        db,
        "fan-out: WAITING -> children created",
        ms(waiting, created),
        "ms",
    );
    r.add(
        "WG",
        db,
        "fan-in: last child ended -> fan-in runs",
        ms(ended, fan_in),
        "ms",
    );
}
