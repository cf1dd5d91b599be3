//! Metrics and health on the admin listener, from outside, after a known run: every
//! counter matches what was done (submitted, deduplicated, retried, succeeded, failed,
//! dead-lettered, cancelled, per kind), every family the operations guide promises is
//! there, and every metric the Grafana dashboard, the alert rules and the KEDA example
//! name is one the system really exports.

use std::collections::{BTreeMap, BTreeSet};

use taskwire::pb::v1::{CancelTaskRequest, SubmitTaskRequest, TaskState};
use taskwire_tests::{DevProcess, connect, eventually, http_get, wait_terminal, workspace_root};

use super::{submit, submit_req};

/// The samples of an exposition: `name{labels}` -> value.
fn samples(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            Some((series.to_string(), value.parse().ok()?))
        })
        .collect()
}

/// The value of `name` with exactly these labels (in the exporter's order), 0 if absent.
fn value(s: &BTreeMap<String, f64>, name: &str, labels: &[(&str, &str)]) -> f64 {
    let series = if labels.is_empty() {
        name.to_string()
    } else {
        let l: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
        format!("{name}{{{}}}", l.join(","))
    };
    s.get(&series).copied().unwrap_or(0.0)
}

/// Metric family names in a text (PromQL, YAML): `taskwire_*` and `process_*`.
fn names_in(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let rest = &text[i..];
        if (rest.starts_with("taskwire_") || rest.starts_with("process_"))
            && (i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_'))
        {
            let end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            out.insert(rest[..end].to_string());
            i += end;
        } else {
            i += 1;
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_match_the_run_and_every_dashboard_metric_exists() {
    let dir = tempfile::tempdir().unwrap();
    let dev = DevProcess::spawn(dir.path()).await;
    let mut client = connect(dev.addr).await.unwrap();

    let mut ends = Vec::new();
    for i in 0..5 {
        ends.push(submit(&mut client, submit_req("demo.echo", serde_json::json!(i))).await);
    }
    for _ in 0..3 {
        ends.push(
            submit(
                &mut client,
                submit_req("demo.fail", serde_json::json!(null)),
            )
            .await,
        );
    }
    for _ in 0..2 {
        let flaky = submit_req("demo.flaky", serde_json::json!({"fail_times": 1}));
        ends.push(submit(&mut client, flaky).await);
    }
    // One repeat of a keyed submit, one kind nobody serves, one cancelled task.
    let keyed = SubmitTaskRequest {
        idempotency_key: "once".into(),
        ..submit_req("demo.echo", serde_json::json!("keyed"))
    };
    ends.push(submit(&mut client, keyed.clone()).await);
    submit(&mut client, keyed).await;
    submit(
        &mut client,
        submit_req("nobody.serves.this", serde_json::json!(1)),
    )
    .await;
    let sleeper = submit(
        &mut client,
        submit_req(
            "demo.sleep",
            serde_json::json!({"seconds": 60, "steps": 60}),
        ),
    )
    .await;
    client
        .cancel_task(CancelTaskRequest {
            task_id: sleeper.clone(),
        })
        .await
        .unwrap();
    for id in &ends {
        wait_terminal(&client, id).await;
    }
    assert_eq!(
        wait_terminal(&client, &sleeper).await.state,
        TaskState::Cancelled as i32
    );

    // The worker counts an outcome right after storing it: wait for the last ones.
    let s = eventually("the counters reach the run's totals", || async {
        let (status, body) = http_get(dev.admin, "/metrics").await;
        let s = samples(&body);
        (status == 200
            && value(
                &s,
                "taskwire_tasks_succeeded_total",
                &[("kind", "demo.echo")],
            ) == 6.0
            && value(
                &s,
                "taskwire_tasks_dead_lettered_total",
                &[("kind", "demo.fail")],
            ) == 3.0
            && value(
                &s,
                "taskwire_tasks_succeeded_total",
                &[("kind", "demo.flaky")],
            ) == 2.0)
            .then_some(s)
    })
    .await;
    let count = |name: &str, kind: &str| value(&s, name, &[("kind", kind)]);
    assert_eq!(
        count("taskwire_tasks_submitted_total", "demo.echo"),
        6.0,
        "5 + the keyed one"
    );
    assert_eq!(count("taskwire_tasks_deduplicated_total", "demo.echo"), 1.0);
    assert_eq!(count("taskwire_tasks_submitted_total", "demo.fail"), 3.0);
    assert_eq!(count("taskwire_tasks_submitted_total", "demo.flaky"), 2.0);
    assert_eq!(
        count("taskwire_tasks_submitted_total", "unserved"),
        1.0,
        "kinds nobody serves share one label"
    );
    assert_eq!(
        count("taskwire_tasks_submitted_total", "nobody.serves.this"),
        0.0
    );
    assert_eq!(count("taskwire_tasks_failed_total", "demo.fail"), 3.0);
    assert_eq!(count("taskwire_tasks_retried_total", "demo.flaky"), 2.0);
    assert_eq!(
        count("taskwire_tasks_started_total", "demo.flaky"),
        4.0,
        "two attempts each"
    );
    assert_eq!(count("taskwire_tasks_started_total", "demo.echo"), 6.0);
    assert_eq!(count("taskwire_tasks_cancelled_total", "demo.sleep"), 1.0);
    assert_eq!(
        count("taskwire_tasks_dead_lettered_total", "demo.echo"),
        0.0
    );
    let submits = value(
        &s,
        "taskwire_grpc_server_handled_total",
        &[
            ("service", "taskwire.v1.TaskService"),
            ("method", "SubmitTask"),
            ("code", "Ok"),
        ],
    );
    assert_eq!(submits, 14.0, "every SubmitTask call, OK");
    assert_eq!(
        value(
            &s,
            "taskwire_task_queue_wait_seconds_count",
            &[("kind", "demo.echo")]
        ),
        6.0,
        "one queue wait per task, at its first attempt"
    );

    // Every family the operations guide promises is exported.
    let exported: BTreeSet<String> = s
        .keys()
        .map(|k| k.split('{').next().unwrap_or(k).to_string())
        .collect();
    let family = |name: &str| {
        exported.contains(name)
            || ["_bucket", "_sum", "_count"]
                .iter()
                .any(|suffix| exported.contains(&format!("{name}{suffix}")))
    };
    let promised = [
        "taskwire_grpc_server_handled_total",
        "taskwire_grpc_server_handling_seconds",
        "taskwire_tasks_submitted_total",
        "taskwire_tasks_started_total",
        "taskwire_task_queue_wait_seconds",
        "taskwire_task_run_seconds",
        "taskwire_queue_pending_tasks",
        "taskwire_queue_ack_pending_tasks",
        "taskwire_queue_oldest_waiting_seconds",
        "taskwire_worker_slots",
        "taskwire_recorder_lag_events",
        "taskwire_recorder_lag_seconds",
        "taskwire_recorder_events_total",
        "taskwire_outbox_rows",
        "taskwire_outbox_oldest_seconds",
        "taskwire_watch_streams",
        "taskwire_build_info",
        "taskwire_ready",
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_open_fds",
        "process_start_time_seconds",
    ];
    let missing: Vec<&str> = promised.iter().copied().filter(|n| !family(n)).collect();
    assert!(missing.is_empty(), "not exported: {missing:?}");

    // The dashboard, the alert rules and the Prometheus-driven KEDA example query only
    // metrics that exist (the alert on `up` is Prometheus's own).
    let root = workspace_root();
    for file in [
        "deploy/grafana/dashboards/taskwire.json",
        "deploy/prometheus/rules.yml",
        "deploy/keda/scaledobject-prometheus.yaml",
    ] {
        let text = std::fs::read_to_string(root.join(file)).unwrap();
        let names = names_in(&text);
        assert!(!names.is_empty(), "{file} names no metric");
        let unknown: Vec<&String> = names.iter().filter(|n| !family(n)).collect();
        assert!(
            unknown.is_empty(),
            "{file} queries metrics nobody exports: {unknown:?}"
        );
    }
    // The NATS-driven KEDA example names demo.echo's real consumer.
    let keda = std::fs::read_to_string(root.join("deploy/keda/scaledobject-nats.yaml")).unwrap();
    assert!(keda.contains(&taskwire::nats::kind_consumer("demo.echo")));

    // Health: live, and ready with NATS and the database answering.
    let (status, body) = http_get(dev.admin, "/livez").await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = http_get(dev.admin, "/readyz").await;
    assert_eq!(status, 200, "{body}");
    let ready: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        ready["checks"],
        serde_json::json!({"nats": true, "database": true})
    );
}
