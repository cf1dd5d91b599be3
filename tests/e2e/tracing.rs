//! One trace per task, across processes: a submit with a known W3C traceparent yields
//! spans from the api, the worker and the recorder (each a real process exporting over
//! OTLP to a receiver in this test: gRPC for the api and the worker, http/protobuf for
//! the recorder), all under that trace id and correctly parented: the api's server
//! span under the caller's span, the worker's attempt under the api, the recorder's
//! under the attempt that appended the event. And the worker's JSON log lines about a
//! task carry its task_id, kind, attempt and trace_id.

use std::{collections::HashSet, process::Command};

use taskwire::pb::v1::TaskState;
use taskwire_tests::{
    ApiProcess, Db, NatsServer, OtlpReceiver, Proc, connect, eventually, wait_terminal,
    workspace_bin,
};

use super::submit_req;

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_across_api_worker_and_recorder() {
    let otlp = OtlpReceiver::start().await;
    let nats = NatsServer::start();
    let db = Db::Sqlite.create().await;
    let grpc = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", otlp.grpc_endpoint.as_str()),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
    ];
    let api = ApiProcess::spawn(&nats.url(), &db.url, &grpc).await;
    // The worker logs JSON lines to a file this test reads.
    let logs = tempfile::NamedTempFile::new().unwrap();
    let mut worker = Command::new(workspace_bin("taskwire-worker"));
    worker
        .args([
            "--admin-listen",
            "off",
            "--nats-url",
            &nats.url(),
            "--log-format",
            "json",
        ])
        .envs(grpc)
        .env("RUST_LOG", "info")
        .stderr(logs.reopen().unwrap());
    let _worker = Proc::spawn(&mut worker, "taskwire-worker");
    let mut recorder = Command::new(workspace_bin("taskwire-recorder"));
    recorder
        .args([
            "--admin-listen",
            "off",
            "--nats-url",
            &nats.url(),
            "--database-url",
            &db.url,
        ])
        .env("RUST_LOG", "warn")
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", &otlp.http_endpoint)
        .env("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
        .env("OTEL_SERVICE_NAME", "recorder-under-test")
        .env("OTEL_BSP_SCHEDULE_DELAY", "100");
    let _recorder = Proc::spawn(&mut recorder, "taskwire-recorder");

    let mut client = connect(api.addr).await.unwrap();
    let mut req = tonic::Request::new(submit_req("demo.echo", serde_json::json!({"traced": true})));
    req.metadata_mut().insert(
        "traceparent",
        format!("00-{TRACE_ID}-{CALLER_SPAN}-01").parse().unwrap(),
    );
    let id = client.submit_task(req).await.unwrap().into_inner().task_id;
    let task = wait_terminal(&client, &id).await;
    assert_eq!(task.state, TaskState::Succeeded as i32);
    let failing = super::submit(
        &mut client,
        submit_req("demo.fail", serde_json::json!(null)),
    )
    .await;
    assert_eq!(
        wait_terminal(&client, &failing).await.state,
        TaskState::Failed as i32
    );

    let spans = eventually(
        "spans from the api, the worker and the recorder",
        || async {
            let spans = otlp.spans();
            let services: HashSet<&str> = spans
                .iter()
                .filter(|r| hex(&r.span.trace_id) == TRACE_ID)
                .map(|r| r.service.as_str())
                .collect();
            (services.contains("taskwire-api")
                && services.contains("taskwire-worker")
                && services.contains("recorder-under-test"))
            .then_some(spans)
        },
    )
    .await;
    let traced: Vec<_> = spans
        .iter()
        .filter(|r| hex(&r.span.trace_id) == TRACE_ID)
        .collect();
    let of = |service: &'static str| traced.iter().filter(move |r| r.service == service);

    // The api's server span is the caller's child; the rest of its spans hang below it.
    let server = of("taskwire-api")
        .find(|r| hex(&r.span.parent_span_id) == CALLER_SPAN)
        .unwrap_or_else(|| panic!("an api span under the caller's: {traced:#?}"));
    assert!(
        server.span.name.contains("SubmitTask"),
        "{}",
        server.span.name
    );
    let api_ids: HashSet<String> = of("taskwire-api").map(|r| hex(&r.span.span_id)).collect();

    // The worker's attempt continues the api's trace, from a span of the submit.
    let attempt = of("taskwire-worker")
        .find(|r| r.span.name == "attempt demo.echo")
        .unwrap_or_else(|| panic!("the worker's attempt span: {traced:#?}"));
    assert!(
        api_ids.contains(&hex(&attempt.span.parent_span_id)),
        "the attempt's parent is a span of the api's submit: {traced:#?}"
    );

    // The recorder recorded the attempt's events under the attempt.
    let attempt_id = hex(&attempt.span.span_id);
    assert!(
        of("recorder-under-test").any(|r| hex(&r.span.parent_span_id) == attempt_id),
        "a recorder span under the attempt: {traced:#?}"
    );

    // JSON logs: the worker's line about the failed task names the task, its kind, its
    // attempt and its trace.
    let line = eventually("the worker logged the failure", || {
        let text = std::fs::read_to_string(logs.path()).unwrap_or_default();
        let failing = failing.clone();
        async move {
            text.lines()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .find(|v| {
                    v["fields"]["message"] == "task failed" && v["span"]["task_id"] == failing
                })
        }
    })
    .await;
    assert_eq!(line["span"]["kind"], "demo.fail", "{line}");
    assert_eq!(line["span"]["attempt"], 1, "{line}");
    let trace_id = line["span"]["trace_id"].as_str().unwrap_or_default();
    assert_eq!(trace_id.len(), 32, "{line}");
}
