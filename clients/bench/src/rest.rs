//! The REST/JSON and Server-Sent Events client of W1R and W4R: plain HTTP/1.1 on
//! loopback, as curl and browsers call the servers (docs/rest.md).

use std::net::SocketAddr;

use reqwest::header::CONTENT_TYPE;
use serde_json::Value;
use taskwire::json;

/// An HTTP/1.1 client of one server. Its pool keeps connections alive between calls;
/// HTTP/1.1 carries one call at a time per connection, so the pool grows to as many
/// connections as there are calls in flight (the workload's concurrency or streams),
/// and no further.
#[derive(Debug, Clone)]
pub struct Rest {
    http: reqwest::Client,
    base: String,
}

impl Rest {
    pub fn new(addr: SocketAddr) -> Self {
        let http = reqwest::Client::builder()
            .http1_only()
            // Loopback only, whatever HTTP_PROXY says.
            .no_proxy()
            .build()
            .expect("http client");
        Self {
            http,
            base: format!("http://{addr}"),
        }
    }

    /// `POST /v1/tasks` with `body`, a SubmitTaskRequest as JSON: the new task's id.
    pub async fn submit(&self, body: String) -> String {
        let resp = self
            .http
            .post(format!("{}/v1/tasks", self.base))
            .header(CONTENT_TYPE, "application/json")
            .body(body)
            .send()
            .await
            .expect("submit");
        let status = resp.status();
        let bytes = resp.bytes().await.expect("submit answer");
        assert!(
            status.is_success(),
            "submit: {status} {}",
            String::from_utf8_lossy(&bytes)
        );
        let answer: Value = serde_json::from_slice(&bytes).expect("a JSON answer");
        answer["taskId"].as_str().expect("a taskId").to_owned()
    }

    /// `GET /v1/tasks/{id}/events`: the task's events as SSE, its current state first.
    pub async fn events(&self, task_id: &str) -> Events {
        let resp = self
            .http
            .get(format!("{}/v1/tasks/{task_id}/events", self.base))
            .send()
            .await
            .expect("events");
        let status = resp.status();
        if !status.is_success() {
            let bytes = resp.bytes().await.unwrap_or_default();
            panic!("events: {status} {}", String::from_utf8_lossy(&bytes));
        }
        Events {
            resp,
            buf: Vec::new(),
        }
    }
}

/// An open `text/event-stream` answer, read event by event.
#[derive(Debug)]
pub struct Events {
    resp: reqwest::Response,
    /// What has arrived after the last complete event.
    buf: Vec<u8>,
}

impl Events {
    /// The next event's `data:` JSON (a TaskEvent); None once the stream ends, which
    /// it does after the terminal event, or on an error (as W4's gRPC streams do).
    pub async fn next(&mut self) -> Option<Value> {
        loop {
            while let Some(end) = self.buf.windows(2).position(|w| w == b"\n\n") {
                let block: Vec<u8> = self.buf.drain(..end + 2).collect();
                let block = std::str::from_utf8(&block).expect("UTF-8");
                // `retry:` and `: keep-alive` blocks carry no data and are skipped.
                let Some(data) = block.lines().find_map(|l| l.strip_prefix("data: ")) else {
                    continue;
                };
                if block.lines().any(|l| l == "event: error") {
                    eprintln!("SSE stream failed: {data}");
                    return None;
                }
                return Some(serde_json::from_str(data).expect("data is JSON"));
            }
            let chunk = self.resp.chunk().await.ok()??;
            self.buf.extend_from_slice(&chunk);
        }
    }
}

/// Microseconds since the Unix epoch of an RFC 3339 time, the form proto3 JSON gives
/// a Timestamp (an event's `time`).
pub fn micros(rfc3339: &str) -> Option<i64> {
    // prost's Timestamp parses RFC 3339; `timestamp_to_micros` names the type.
    rfc3339.parse().ok().map(|t| json::timestamp_to_micros(&t))
}
