//! REST/JSON and Server-Sent Events, as curl and browsers call them: every route of
//! the OpenAPI document answers from the gRPC handler behind it, errors map to the
//! HTTP statuses of the gRPC-to-HTTP table with a google.rpc.Status body, and an SSE
//! stream dropped after seq N and resumed with `Last-Event-ID: N` delivers every later
//! event exactly once, ending with the terminal one.

use std::time::Duration;

use serde_json::{Value, json};
use taskwire::{
    auth::{ApiKey, Role, Tenant},
    store::Store,
};
use taskwire_tests::{
    Api, Db, NatsServer, PATIENCE, Running, Stack, WatchServer, api_config, eventually,
    recorder_config, worker_config,
};

/// A REST client of one server.
#[derive(Clone)]
struct Rest {
    http: reqwest::Client,
    base: String,
}

/// An answer: status, headers, JSON body (Null when empty).
#[derive(Debug)]
struct Answer {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: Value,
}

impl Rest {
    fn new(addr: std::net::SocketAddr) -> Self {
        Self {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(20))
                .build()
                .unwrap(),
            base: format!("http://{addr}"),
        }
    }

    async fn send(&self, req: reqwest::RequestBuilder) -> Answer {
        let resp = req.send().await.expect("the server answers");
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let bytes = resp.bytes().await.unwrap();
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&bytes)))
        };
        Answer {
            status,
            headers,
            body,
        }
    }

    async fn get(&self, path: &str) -> Answer {
        self.send(self.http.get(format!("{}{path}", self.base)))
            .await
    }

    async fn post(&self, path: &str, body: &Value) -> Answer {
        self.send(
            self.http
                .post(format!("{}{path}", self.base))
                .header("content-type", "application/json")
                .body(body.to_string()),
        )
        .await
    }
}

/// The google.rpc.Status body of an error: asserts its shape, returns its code.
fn rpc_code(a: &Answer) -> i64 {
    assert!(a.body["message"].is_string(), "{}", a.body);
    assert!(a.body["details"].is_array(), "{}", a.body);
    a.body["code"].as_i64().expect("a numeric code")
}

async fn rest_surface(db: Db) {
    let stack = Stack::start(db).await;
    let rest = Rest::new(stack.api.addr);

    // Submit, with the Idempotency-Key header; a repeat is the same task.
    let body = json!({"kind": "demo.echo", "input": {"n": 1}, "labels": {"surface": "rest"}});
    let first = rest
        .send(
            rest.http
                .post(format!("{}/v1/tasks", rest.base))
                .header("content-type", "application/json")
                .header("idempotency-key", "rest-1")
                .body(body.to_string()),
        )
        .await;
    assert_eq!(first.status, 200, "{}", first.body);
    let id = first.body["taskId"].as_str().unwrap().to_string();
    assert_eq!(first.body["state"], "TASK_STATE_QUEUED");
    assert_eq!(first.body["deduplicated"], false);
    let again = rest
        .send(
            rest.http
                .post(format!("{}/v1/tasks", rest.base))
                .header("idempotency-key", "rest-1")
                .body(body.to_string()),
        )
        .await;
    assert_eq!(again.status, 200, "{}", again.body);
    assert_eq!(again.body["taskId"], id.as_str());
    assert_eq!(again.body["deduplicated"], true);

    // Status until it ends; then the same task through gRPC.
    let done = eventually("the task succeeds (REST GetStatus)", || {
        let rest = rest.clone();
        let id = id.clone();
        async move {
            let a = rest.get(&format!("/v1/tasks/{id}")).await;
            assert_eq!(a.status, 200, "{}", a.body);
            (a.body["state"] == "TASK_STATE_SUCCEEDED").then_some(a.body)
        }
    })
    .await;
    assert_eq!(done["output"], json!({"n": 1}));
    assert_eq!(done["labels"], json!({"surface": "rest"}));
    let grpc = stack
        .client()
        .await
        .get_status(taskwire::pb::v1::GetStatusRequest {
            task_id: id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(done["lastSeq"], grpc.last_seq.to_string());
    assert_eq!(done["attempt"], grpc.attempt);

    // List: filters in the query string. A list by a terminal state waits up to 5 s
    // for the recorder, then lists what it has recorded: under CI's load the recorder
    // can be further behind, so the list is asked again until the task is in it.
    let ids: Vec<String> = eventually("the succeeded task is listed", || {
        let rest = rest.clone();
        async move {
            let listed = rest
                .get("/v1/tasks?kind=demo.echo&state=succeeded&label=surface=rest&page_size=10")
                .await;
            assert_eq!(listed.status, 200, "{}", listed.body);
            let ids: Vec<String> = listed.body["tasks"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t["id"].as_str().unwrap().to_string())
                .collect();
            (!ids.is_empty()).then_some(ids)
        }
    })
    .await;
    assert_eq!(ids, std::slice::from_ref(&id));
    let none = rest.get("/v1/tasks?label=surface=grpc").await;
    assert_eq!(none.body["tasks"], json!([]));

    // Cancel: a queued task (no worker serves its kind) becomes CANCELLED; a succeeded
    // one is FAILED_PRECONDITION, 400.
    let queued = rest
        .post("/v1/tasks", &json!({"kind": "nobody.serves.this"}))
        .await;
    assert_eq!(queued.status, 200, "{}", queued.body);
    assert!(
        queued.body["warning"]
            .as_str()
            .unwrap()
            .contains("no worker")
    );
    let qid = queued.body["taskId"].as_str().unwrap();
    let cancelled = rest
        .post(&format!("/v1/tasks/{qid}:cancel"), &json!({}))
        .await;
    assert_eq!(cancelled.status, 200, "{}", cancelled.body);
    assert_eq!(cancelled.body["state"], "TASK_STATE_CANCELLED");
    let no_body = rest
        .send(
            rest.http
                .post(format!("{}/v1/tasks/{qid}:cancel", rest.base)),
        )
        .await;
    assert_eq!(
        no_body.status, 200,
        "an empty body is an empty message: {}",
        no_body.body
    );
    let refused = rest
        .post(&format!("/v1/tasks/{id}:cancel"), &json!({}))
        .await;
    assert_eq!(refused.status, 400, "{}", refused.body);
    assert_eq!(rpc_code(&refused), 9, "FAILED_PRECONDITION");

    // A batch: one result per task, in order; the bad one refused, the other taken.
    let batch = rest
        .post(
            "/v1/tasks:batchSubmit",
            &json!({"tasks": [{"kind": "Bad Kind"}, {"kind": "demo.echo", "input": 2}]}),
        )
        .await;
    assert_eq!(batch.status, 200, "{}", batch.body);
    let results = batch.body["results"].as_array().unwrap();
    assert_eq!(results.len(), 2, "{}", batch.body);
    assert_eq!(results[0]["error"]["code"], 3, "{}", batch.body);
    assert!(results[0]["accepted"].is_null(), "{}", batch.body);
    let bid = results[1]["accepted"]["taskId"].as_str().unwrap();
    assert_eq!(
        rest.get(&format!("/v1/tasks/{bid}")).await.body["kind"],
        "demo.echo"
    );

    // Bad input: a clear status, and nothing written.
    let before = rest.get("/v1/tasks?page_size=1000").await.body["tasks"]
        .as_array()
        .unwrap()
        .len();
    let cases: Vec<(&str, reqwest::RequestBuilder, u16, i64)> = vec![
        (
            "a malformed kind",
            rest.http
                .post(format!("{}/v1/tasks", rest.base))
                .body(r#"{"kind":"Bad Kind"}"#),
            400,
            3,
        ),
        (
            "an unknown field",
            rest.http
                .post(format!("{}/v1/tasks", rest.base))
                .body(r#"{"kind":"demo.echo","nope":1}"#),
            400,
            3,
        ),
        (
            "a body that is not JSON",
            rest.http
                .post(format!("{}/v1/tasks", rest.base))
                .body("{kind"),
            400,
            3,
        ),
        (
            "JSON that is not an object",
            rest.http.post(format!("{}/v1/tasks", rest.base)).body("[]"),
            400,
            3,
        ),
        (
            "another content type",
            rest.http
                .post(format!("{}/v1/tasks", rest.base))
                .header("content-type", "text/plain")
                .body(r#"{"kind":"demo.echo"}"#),
            415,
            3,
        ),
        (
            "an input over the size limit",
            rest.http
                .post(format!("{}/v1/tasks", rest.base))
                .body(json!({"kind": "demo.echo", "input": "x".repeat(1_100_000)}).to_string()),
            413,
            8,
        ),
        (
            "a malformed task id",
            rest.http.get(format!("{}/v1/tasks/not-a-uuid", rest.base)),
            400,
            3,
        ),
        (
            "an empty batch",
            rest.http
                .post(format!("{}/v1/tasks:batchSubmit", rest.base))
                .body(r#"{"tasks":[]}"#),
            400,
            3,
        ),
        (
            "an unknown task",
            rest.http.get(format!(
                "{}/v1/tasks/0190a0b0-0000-7000-8000-000000000001",
                rest.base
            )),
            404,
            5,
        ),
        (
            "an unknown enum value",
            rest.http
                .get(format!("{}/v1/tasks?state=sleeping", rest.base)),
            400,
            3,
        ),
        (
            "a page size out of range",
            rest.http
                .get(format!("{}/v1/tasks?page_size=5000", rest.base)),
            400,
            3,
        ),
        (
            "an unknown query parameter",
            rest.http.get(format!("{}/v1/tasks?colour=red", rest.base)),
            400,
            3,
        ),
        (
            "a route that does not exist",
            rest.http.get(format!("{}/v2/tasks", rest.base)),
            404,
            5,
        ),
        (
            "a method the route does not take",
            rest.http.delete(format!("{}/v1/tasks", rest.base)),
            405,
            12,
        ),
        (
            "a route of a service this server does not host",
            rest.http.get(format!("{}/v1/events", rest.base)),
            404,
            5,
        ),
    ];
    for (what, req, status, code) in cases {
        let a = rest.send(req).await;
        assert_eq!(a.status, status, "{what}: {}", a.body);
        assert_eq!(rpc_code(&a), code, "{what}: {}", a.body);
        if status == 405 {
            assert_eq!(a.headers["allow"], "POST, GET", "{what}");
        }
    }
    let after = rest.get("/v1/tasks?page_size=1000").await.body["tasks"]
        .as_array()
        .unwrap()
        .len();
    assert_eq!(after, before, "refused requests wrote nothing");

    // UNAVAILABLE is 503 with Retry-After, once the api has noticed NATS is down (a
    // submit right after the kill may still be committed and accepted).
    let mut stack = stack;
    stack.nats.stop();
    let mut down = None;
    for round in 0..3 {
        let a = rest.post("/v1/tasks", &json!({"kind": "demo.echo"})).await;
        match a.status {
            200 if round == 0 => {}
            _ => {
                down = Some(a);
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let down = down.expect("a submit is refused while NATS is down");
    assert_eq!(down.status, 503, "{}", down.body);
    assert_eq!(rpc_code(&down), 14);
    assert_eq!(down.headers["retry-after"], "1");
}
taskwire_tests::both_databases!(rest_surface);

/// With --auth keys: 401 without a key, 403 for a role too weak, 429 with Retry-After
/// over the tenant's rate, another tenant's task 404, all through REST.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_authenticates_and_limits() {
    let nats = NatsServer::start();
    let db = Db::Sqlite.create().await;
    let store = Store::connect(&db.url, &Default::default()).await.unwrap();
    let key = |tenant: &str, role| {
        let (key, token) = ApiKey::create("test", Tenant::parse(tenant).unwrap(), role);
        let store = store.clone();
        async move {
            store.insert_key(&key).await.unwrap();
            token.reveal()
        }
    };
    let acme = key("acme", Role::Submitter).await;
    let acme_reader = key("acme", Role::Reader).await;
    let bravo = key("bravo", Role::Submitter).await;
    let mut config = api_config(&nats.url(), &db.url);
    config.serve.auth = taskwire::auth::Mode::Keys;
    config.tenant_submit_rate = 2;
    let api = Api::start(config).await;
    let rest = Rest::new(api.addr);
    let submit = |token: Option<&str>| {
        let mut req = rest
            .http
            .post(format!("{}/v1/tasks", rest.base))
            .body(r#"{"kind":"demo.echo"}"#);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        rest.send(req)
    };
    let anonymous = submit(None).await;
    assert_eq!(anonymous.status, 401, "{}", anonymous.body);
    assert_eq!(rpc_code(&anonymous), 16);
    let reader = submit(Some(&acme_reader)).await;
    assert_eq!(reader.status, 403, "{}", reader.body);
    assert_eq!(rpc_code(&reader), 7);

    let ok = submit(Some(&acme)).await;
    assert_eq!(ok.status, 200, "{}", ok.body);
    let id = ok.body["taskId"].as_str().unwrap().to_string();
    // The rest of acme's burst of 2, then 429 with when to retry.
    let mut refused = None;
    for _ in 0..3 {
        let a = submit(Some(&acme)).await;
        if a.status != 200 {
            refused = Some(a);
            break;
        }
    }
    let refused = refused.expect("a submit over the rate is refused");
    assert_eq!(refused.status, 429, "{}", refused.body);
    assert_eq!(rpc_code(&refused), 8);
    assert!(refused.headers.contains_key("retry-after"));
    assert_eq!(
        refused.body["details"][0]["@type"],
        "type.googleapis.com/google.rpc.RetryInfo"
    );
    // bravo has its own budget, and does not see acme's task.
    assert_eq!(submit(Some(&bravo)).await.status, 200);
    let foreign = rest
        .send(
            rest.http
                .get(format!("{}/v1/tasks/{id}", rest.base))
                .bearer_auth(&bravo),
        )
        .await;
    assert_eq!(foreign.status, 404, "{}", foreign.body);
    let own = rest
        .send(
            rest.http
                .get(format!("{}/v1/tasks/{id}", rest.base))
                .bearer_auth(&acme_reader),
        )
        .await;
    assert_eq!(own.status, 200, "{}", own.body);
}

/// One parsed SSE event.
#[derive(Debug, Clone, PartialEq)]
enum Sse {
    /// `id:` (if any) and the `data:` JSON; `event: error` events are `Error`.
    Event(Option<u64>, Value),
    Error(Value),
    /// A comment line (`: keep-alive`).
    Comment,
}

/// An open `text/event-stream` answer, read event by event.
struct EventStream {
    resp: reqwest::Response,
    buf: String,
}

impl EventStream {
    async fn open(rest: &Rest, path: &str, last_event_id: Option<u64>) -> Result<Self, Answer> {
        let mut req = rest.http.get(format!("{}{path}", rest.base));
        // No overall timeout: the stream is long-lived; each read is bounded below.
        req = req.timeout(Duration::from_secs(3600));
        if let Some(id) = last_event_id {
            req = req.header("last-event-id", id.to_string());
        }
        let resp = req.send().await.expect("the server answers");
        if resp.status() != 200 {
            let status = resp.status().as_u16();
            let headers = resp.headers().clone();
            let bytes = resp.bytes().await.unwrap();
            let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            return Err(Answer {
                status,
                headers,
                body,
            });
        }
        assert_eq!(resp.headers()["content-type"], "text/event-stream");
        Ok(Self {
            resp,
            buf: String::new(),
        })
    }

    /// The next event or comment; None when the stream ends.
    async fn next(&mut self) -> Option<Sse> {
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..end + 2).collect();
                let mut id = None;
                let mut data = None;
                let mut error = false;
                let mut comment = false;
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("id: ") {
                        id = Some(v.parse().expect("ids are seqs"));
                    } else if let Some(v) = line.strip_prefix("data: ") {
                        data = Some(serde_json::from_str(v).expect("data is JSON"));
                    } else if line == "event: error" {
                        error = true;
                    } else if line.starts_with(':') {
                        comment = true;
                    }
                }
                match (data, error) {
                    (Some(d), true) => return Some(Sse::Error(d)),
                    (Some(d), false) => return Some(Sse::Event(id, d)),
                    (None, _) if comment => return Some(Sse::Comment),
                    // `retry:` alone dispatches nothing.
                    (None, _) => continue,
                }
            }
            let chunk = self.resp.chunk().await.expect("the stream reads")?;
            self.buf
                .push_str(std::str::from_utf8(&chunk).expect("UTF-8"));
        }
    }

    /// The next event (skipping comments), within `PATIENCE`.
    async fn event(&mut self) -> Option<(u64, Value)> {
        tokio::time::timeout(PATIENCE, async {
            loop {
                match self.next().await? {
                    Sse::Event(id, data) => {
                        return Some((id.expect("WatchTask events have ids"), data));
                    }
                    Sse::Error(e) => panic!("the stream failed: {e}"),
                    Sse::Comment => {}
                }
            }
        })
        .await
        .expect("an event or the end in time")
    }
}

fn seq(event: &Value) -> u64 {
    event["seq"].as_str().unwrap().parse().unwrap()
}

/// A watcher disconnected after seq N and reconnected with `Last-Event-ID: N` gets
/// every later event exactly once, ending with the terminal one; then a reconnect is
/// answered 204 (an EventSource stops there).
async fn sse_resumes_without_gap_or_repeat(db: Db) {
    let stack = Stack::start(db).await;
    let watch = WatchServer::start(&stack.nats.url(), &stack.db.url).await;
    let api = Rest::new(stack.api.addr);
    let rest = Rest::new(watch.addr);
    let submitted = api
        .post(
            "/v1/tasks",
            &json!({"kind": "demo.sleep", "input": {"seconds": 2, "steps": 20}}),
        )
        .await;
    let id = submitted.body["taskId"].as_str().unwrap().to_string();
    let path = format!("/v1/tasks/{id}/events");

    // The first connection: the snapshot, then a few live events, then it is dropped.
    let mut first = EventStream::open(&rest, &path, None).await.unwrap();
    let mut seen = Vec::new();
    while seen.len() < 4 {
        let (sse_id, event) = first.event().await.expect("the task is not done yet");
        assert_eq!(sse_id, seq(&event), "the SSE id is the event's seq");
        assert_eq!(event["taskId"], id.as_str());
        seen.push(event);
    }
    drop(first);
    let last = seq(seen.last().unwrap());

    // Reconnect as an EventSource does; read to the end.
    let mut second = EventStream::open(&rest, &path, Some(last)).await.unwrap();
    while let Some((_, event)) = second.event().await {
        seen.push(event);
    }
    let seqs: Vec<u64> = seen.iter().map(seq).collect();
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "strictly increasing, no repeat: {seqs:?}"
    );
    assert_eq!(
        seen.last().unwrap()["state"],
        "TASK_STATE_SUCCEEDED",
        "ends with the terminal event"
    );
    // Nothing missing: every event the stream holds after the first one seen (the
    // snapshot, whose seq is 0 if the task had no event yet), read from NATS itself.
    let js = stack.nats.jetstream().await;
    let history = taskwire::nats::History::open(&js).await.unwrap();
    let task = taskwire::domain::TaskId::parse(&id).unwrap();
    let mut stored = Vec::new();
    while let Some(next) = history
        .next_after(task, stored.last().copied().unwrap_or(0))
        .await
        .unwrap()
    {
        stored.push(next.seq);
    }
    let expected: Vec<u64> = stored.into_iter().filter(|&s| s > seqs[0]).collect();
    assert_eq!(&seqs[1..], expected.as_slice(), "gap-free");

    // Resumed at the terminal event: 204, nothing more to come.
    let end = *seqs.last().unwrap();
    let finished = EventStream::open(&rest, &path, Some(end)).await;
    assert_eq!(finished.err().map(|a| a.status), Some(204));
    // ?after_seq= does the same as the header.
    let by_query = EventStream::open(&rest, &format!("{path}?after_seq={}", seqs[2]), None)
        .await
        .unwrap();
    let mut rest_of = Vec::new();
    let mut by_query = by_query;
    while let Some((_, e)) = by_query.event().await {
        rest_of.push(seq(&e));
    }
    assert_eq!(rest_of, seqs[3..].to_vec());

    // Errors before the stream starts are plain JSON answers.
    let unknown = EventStream::open(
        &rest,
        "/v1/tasks/0190a0b0-0000-7000-8000-000000000001/events",
        None,
    )
    .await
    .err()
    .expect("an unknown task is not a stream");
    assert_eq!(unknown.status, 404);
    assert_eq!(rpc_code(&unknown), 5);
    let malformed = rest
        .send(
            rest.http
                .get(format!("{}{path}", rest.base))
                .header("last-event-id", "yesterday"),
        )
        .await;
    assert_eq!(malformed.status, 400, "{}", malformed.body);
}
taskwire_tests::both_databases!(sse_resumes_without_gap_or_repeat);

/// An idle stream carries a keep-alive comment at least every 15 s; the multi-task
/// stream (`/v1/events`) delivers live events of its filter, without ids.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_keeps_idle_streams_alive_and_streams_many_tasks() {
    let stack = Stack::start(Db::Sqlite).await;
    let watch = WatchServer::start(&stack.nats.url(), &stack.db.url).await;
    let api = Rest::new(stack.api.addr);
    let rest = Rest::new(watch.addr);

    let idle = api
        .post("/v1/tasks", &json!({"kind": "nobody.serves.idle"}))
        .await;
    let idle_id = idle.body["taskId"].as_str().unwrap().to_string();
    let mut stream = EventStream::open(&rest, &format!("/v1/tasks/{idle_id}/events"), None)
        .await
        .unwrap();
    let (_, snapshot) = stream.event().await.unwrap();
    assert_eq!(snapshot["state"], "TASK_STATE_QUEUED");
    let bound = taskwire::rest::KEEP_ALIVE + Duration::from_secs(3);
    let next = tokio::time::timeout(bound, stream.next())
        .await
        .expect("something within the keep-alive interval");
    assert_eq!(next, Some(Sse::Comment), "a keep-alive comment");

    let mut many = EventStream::open(&rest, "/v1/events?kind=demo.echo&label=batch=b1", None)
        .await
        .unwrap();
    // Live only: submit after the stream is open (the 200 comes once it is).
    let mut ids = Vec::new();
    for i in 0..3 {
        let a = api
            .post(
                "/v1/tasks",
                &json!({"kind": "demo.echo", "input": i, "labels": {"batch": "b1"}}),
            )
            .await;
        ids.push(a.body["taskId"].as_str().unwrap().to_string());
    }
    // Not matching the label filter: never shown.
    api.post(
        "/v1/tasks",
        &json!({"kind": "demo.echo", "labels": {"batch": "other"}}),
    )
    .await;
    let mut succeeded = std::collections::BTreeSet::new();
    tokio::time::timeout(PATIENCE, async {
        while succeeded.len() < ids.len() {
            match many.next().await.expect("the stream stays open") {
                Sse::Event(id, e) => {
                    assert_eq!(id, None, "WatchTasks cannot be resumed: no ids");
                    let task = e["taskId"].as_str().unwrap().to_string();
                    assert!(ids.contains(&task), "only the filter's tasks: {e}");
                    if e["state"] == "TASK_STATE_SUCCEEDED" {
                        succeeded.insert(task);
                    }
                }
                Sse::Error(e) => panic!("{e}"),
                Sse::Comment => {}
            }
        }
    })
    .await
    .expect("every task's end arrives");
}

/// /openapi.json is the generated document, valid OpenAPI 3.1, and every operation in
/// it is served: each answers from its RPC, never "no route".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_matches_the_served_routes() {
    let nats = NatsServer::start();
    let db = Db::Sqlite.create().await;
    let api = Api::start(api_config(&nats.url(), &db.url)).await;
    let watch = WatchServer::start(&nats.url(), &db.url).await;
    let _recorder = Running::recorder(recorder_config(&nats.url(), &db.url));
    let _worker = Running::worker(worker_config(&nats.url()));

    let doc = Rest::new(api.addr).get("/openapi.json").await;
    assert_eq!(doc.status, 200);
    assert_eq!(doc.body, taskwire::rest::openapi::document());
    assert_eq!(
        Rest::new(watch.addr).get("/openapi.json").await.body,
        doc.body
    );

    // Valid OpenAPI 3.1 by an independent validator (PyPI openapi-spec-validator).
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("openapi.json");
    std::fs::write(&file, doc.body.to_string()).unwrap();
    let out = std::process::Command::new(taskwire_tests::venv_bin("python"))
        .args(["-m", "openapi_spec_validator"])
        .arg(&file)
        .output()
        .expect("run openapi-spec-validator (scripts/setup installs it)");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    let unknown = "0190a0b0-0000-7000-8000-000000000001";
    let mut operations = 0;
    for (template, ops) in doc.body["paths"].as_object().unwrap() {
        let path = template.replace("{task_id}", unknown);
        for (method, op) in ops.as_object().unwrap() {
            let addr = match op["tags"][0].as_str().unwrap() {
                "WatchService" => watch.addr,
                _ => api.addr,
            };
            let rest = Rest::new(addr);
            let req = match method.as_str() {
                "get" => rest.http.get(format!("{}{path}", rest.base)),
                "post" => rest.http.post(format!("{}{path}", rest.base)).body("{}"),
                other => panic!("unexpected method {other}"),
            };
            let resp = req.send().await.unwrap();
            let status = resp.status().as_u16();
            let streams = op["responses"]["200"]["content"]["text/event-stream"].is_object();
            if streams && status == 200 {
                // A live stream (WatchTasks): served; it would not end by itself.
                assert_eq!(resp.headers()["content-type"], "text/event-stream");
            } else {
                let text = resp.text().await.unwrap_or_default();
                assert!(
                    !text.contains("no route for") && status != 405,
                    "{method} {template} is not served: {status} {text}"
                );
                // The RPC's answer, or its status.
                let body: Value = serde_json::from_str(&text).expect("a JSON answer");
                assert!(
                    status == 200 || body["code"].is_i64(),
                    "{method} {template} answered from its RPC: {status} {text}"
                );
            }
            operations += 1;
        }
    }
    assert_eq!(operations, taskwire::rest::routes::ALL.len());
}
