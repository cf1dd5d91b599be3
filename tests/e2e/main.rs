//! End-to-end tests: each starts its own nats-server and database (SQLite and
//! PostgreSQL) and the services in-process or as child processes. One test binary of
//! modules, so the workspace links it once.

mod auth;
mod batch;
mod cancel;
mod chaos;
mod cli;
mod cluster;
mod crash;
mod dead_letters;
mod delay;
mod dev;
mod graph;
mod grpc_web;
mod idempotency;
mod kind_limits;
mod list;
mod malformed;
mod metrics;
mod nats_auth;
mod outage;
mod reads;
mod recorder;
mod reflection;
mod rest;
mod retention;
mod store;
mod submit;
mod tls;
mod tracing;
mod validation;
mod watch;
mod worker;

use taskwire::pb::v1::{SubmitTaskRequest, task_service_client::TaskServiceClient};
use tonic::transport::Channel;

/// A plain submit of `kind` with JSON `input`.
pub fn submit_req(kind: &str, input: serde_json::Value) -> SubmitTaskRequest {
    SubmitTaskRequest {
        kind: kind.to_string(),
        input: Some(taskwire::json::json_to_value(&input)),
        ..Default::default()
    }
}

/// Submits and returns the new task's id.
pub async fn submit(client: &mut TaskServiceClient<Channel>, req: SubmitTaskRequest) -> String {
    client
        .submit_task(req)
        .await
        .expect("submit succeeds")
        .into_inner()
        .task_id
}
