//! REST/JSON and Server-Sent Events, transcoded in-process onto the gRPC services
//! (docs/rest.md).
//!
//! One contract serves gRPC, grpc-web and REST: each public RPC's `google.api.http`
//! option in the proto is its route ([`routes`]), and a REST call becomes a native gRPC
//! call to the same server, through the same layers (authentication, metrics,
//! tracing, size limits) and the same handler. Nothing about validation or errors is
//! written twice: the JSON answer is the handler's message in proto3 JSON, an error is
//! its gRPC status mapped to HTTP ([`status`]), and a stream is Server-Sent Events
//! (`sse`). The OpenAPI document is generated from the same descriptors
//! ([`openapi`]) and served at `/openapi.json`.
//!
//! A request whose content-type starts with `application/grpc` (gRPC, grpc-web) passes
//! through untouched; any other request is REST.
//!
//! # Layout
//! - `routes`: the route table read from the descriptors; a request into a message.
//! - `grpc`: framing the request, reading the answer's messages and status.
//! - `status`: gRPC status to HTTP status, JSON error body, Retry-After.
//! - `sse`: a server stream as `text/event-stream`.
//! - `openapi`: the OpenAPI 3.1 document.

mod grpc;
pub mod openapi;
pub mod routes;
mod sse;
pub mod status;

use std::{
    sync::Arc,
    task::{Context, Poll},
};

use bytes::Bytes;
use futures::future::BoxFuture;
use http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use http_body_util::{BodyExt, Limited};
use prost::Message;
use prost_reflect::{DynamicMessage, SerializeOptions};
use tonic::{Status, body::Body};
use tower::{Layer, Service};

pub use routes::Route;
pub use sse::KEEP_ALIVE;

use grpc::{Answer, Item};

/// The largest REST request body read. The gRPC message limit behind it is smaller
/// (`--max-input-bytes` + 64 KiB, at least 8 MiB) and answers an oversize input 413;
/// this only bounds what one request can make the server buffer.
pub const MAX_BODY: usize = 16 << 20;

/// What a body's error may be turned into.
type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The path of the OpenAPI document.
pub const OPENAPI_PATH: &str = "/openapi.json";

/// Serves the REST routes of the gRPC services a server hosts (`services`: full names,
/// e.g. `taskwire.v1.TaskService`), in front of its gRPC stack.
#[derive(Debug, Clone)]
pub struct RestLayer {
    routes: Arc<Vec<Route>>,
}

impl RestLayer {
    /// The routes of `services`.
    pub fn new(services: &[&str]) -> Self {
        let routes = routes::ALL
            .iter()
            .filter(|r| services.contains(&r.rpc.parent_service().full_name()))
            .cloned()
            .collect();
        Self {
            routes: Arc::new(routes),
        }
    }
}

impl<S> Layer<S> for RestLayer {
    type Service = Rest<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Rest {
            inner,
            routes: self.routes.clone(),
        }
    }
}

/// The service [`RestLayer`] makes.
#[derive(Debug, Clone)]
pub struct Rest<S> {
    inner: S,
    routes: Arc<Vec<Route>>,
}

impl<S, ResBody> Service<http::Request<Body>> for Rest<S>
where
    S: Service<http::Request<Body>, Response = http::Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Send,
    ResBody: http_body::Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        // The clone is ready only after poll_ready: call the one that was polled.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        if is_grpc(req.headers()) {
            let call = inner.call(req);
            return Box::pin(async move { Ok(call.await?.map(Body::new)) });
        }
        let path = req.uri().path();
        if path == OPENAPI_PATH && req.method() == Method::GET {
            let doc = &*openapi::DOCUMENT;
            return Box::pin(async move { Ok(status::json_response(StatusCode::OK, doc)) });
        }
        // (index into `routes`, the path's variables) of every route the path matches.
        let matched: Vec<(usize, Vec<(String, String)>)> = self
            .routes
            .iter()
            .enumerate()
            .filter_map(|(i, r)| r.matches(path).map(|vars| (i, vars)))
            .collect();
        let routes = self.routes.clone();
        let Some((index, vars)) = matched
            .iter()
            .find(|(i, _)| routes[*i].method == req.method())
            .cloned()
        else {
            let resp = if matched.is_empty() {
                not_found(req.method(), path)
            } else {
                let allow: Vec<&str> = matched
                    .iter()
                    .map(|(i, _)| routes[*i].method.as_str())
                    .collect();
                method_not_allowed(req.method(), path, &allow.join(", "))
            };
            return Box::pin(async move { Ok(resp) });
        };
        Box::pin(async move {
            let route = &routes[index];
            let call = match grpc_request(route, vars, req).await {
                Ok(call) => call,
                Err(resp) => return Ok(*resp),
            };
            let answer = Answer::new(inner.call(call).await?);
            Ok(if route.streams() {
                sse::respond(route, answer).await
            } else {
                unary(route, answer).await
            })
        })
    }
}

fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// The REST request as a native gRPC request for `route`'s RPC: same headers (the
/// caller's credentials, trace context), same connection extensions (TLS, peer).
async fn grpc_request(
    route: &Route,
    vars: Vec<(String, String)>,
    req: http::Request<Body>,
) -> Result<http::Request<Body>, Box<http::Response<Body>>> {
    let (parts, body) = req.into_parts();
    let bad = |s: Status| Box::new(status::response(&s));
    let body = match Limited::new(body, MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            return Err(bad(Status::resource_exhausted(format!(
                "the request body is over {MAX_BODY} bytes"
            ))));
        }
        Err(e) => {
            return Err(bad(Status::invalid_argument(format!(
                "the body could not be read: {e}"
            ))));
        }
    };
    if !body.is_empty() && !is_json(&parts.headers) {
        let mut resp = status::response(&Status::invalid_argument(
            "the body must be JSON (content-type: application/json)",
        ));
        *resp.status_mut() = StatusCode::UNSUPPORTED_MEDIA_TYPE;
        return Err(Box::new(resp));
    }
    let header = |name: &str| -> Result<Option<&str>, Box<http::Response<Body>>> {
        match parts.headers.get(name) {
            None => Ok(None),
            Some(v) => v.to_str().map(Some).map_err(|_| {
                bad(Status::invalid_argument(format!(
                    "the {name} header must be printable ASCII"
                )))
            }),
        }
    };
    let last_event_id = if route.resumable() {
        header("last-event-id")?
    } else {
        None
    };
    let message = route
        .request(
            &body,
            parts.uri.query(),
            vars,
            header("idempotency-key")?,
            last_event_id,
        )
        .map_err(|e| bad(Status::invalid_argument(e.0)))?;
    let mut call = http::Request::new(Body::new(http_body_util::Full::new(grpc::frame(
        &message.encode_to_vec(),
    ))));
    *call.method_mut() = Method::POST;
    *call.uri_mut() = route
        .grpc_path()
        .parse()
        .expect("a gRPC path is a valid URI");
    *call.version_mut() = http::Version::HTTP_2;
    let headers = call.headers_mut();
    for (name, value) in &parts.headers {
        if !SKIPPED_HEADERS.contains(name) {
            headers.append(name, value.clone());
        }
    }
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    headers.insert(header::TE, HeaderValue::from_static("trailers"));
    *call.extensions_mut() = parts.extensions;
    Ok(call)
}

/// Headers of the REST request that describe its own body or connection, not the call.
const SKIPPED_HEADERS: [header::HeaderName; 8] = [
    header::CONTENT_TYPE,
    header::CONTENT_LENGTH,
    header::CONTENT_ENCODING,
    header::ACCEPT,
    header::ACCEPT_ENCODING,
    header::CONNECTION,
    header::TRANSFER_ENCODING,
    header::HOST,
];

/// Whether a body may be read as JSON: application/json (or any `+json` type), no
/// content-type, or `application/x-www-form-urlencoded`, which is what `curl -d` says
/// when not told otherwise (a form body would not parse as JSON anyway).
fn is_json(headers: &HeaderMap) -> bool {
    let Some(value) = headers.get(header::CONTENT_TYPE) else {
        return true;
    };
    let essence = value
        .to_str()
        .unwrap_or_default()
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || essence.ends_with("+json")
        || essence == "application/x-www-form-urlencoded"
}

/// A unary call's answer: its message as JSON, or its status as an HTTP error.
async fn unary(route: &Route, mut answer: Answer) -> http::Response<Body> {
    let message = match answer.next().await {
        Item::Message(m) => m,
        Item::End(s) if s.code() == tonic::Code::Ok => {
            return status::response(&Status::internal("the service answered no message"));
        }
        Item::End(s) => return status::response(&s),
    };
    match answer.next().await {
        Item::End(s) if s.code() == tonic::Code::Ok => {}
        Item::End(s) => return status::response(&s),
        Item::Message(_) => {
            return status::response(&Status::internal("the service answered twice"));
        }
    }
    let msg = match DynamicMessage::decode(route.rpc.output(), message) {
        Ok(m) => m,
        Err(e) => {
            return status::response(&Status::internal(format!("undecodable answer: {e}")));
        }
    };
    let mut out = Vec::new();
    write_json(&mut out, &msg);
    out.push(b'\n');
    let mut resp = http::Response::new(Body::new(http_body_util::Full::new(Bytes::from(out))));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

/// How answers are written: proto3 JSON with lowerCamelCase names and every scalar
/// field, defaults included (`"deduplicated": false`), which REST clients expect to
/// find; unset messages are left out.
pub(crate) fn json_options() -> SerializeOptions {
    SerializeOptions::new().skip_default_fields(false)
}

/// Reads a message of the contract from proto3 JSON (lowerCamelCase or proto field
/// names), as the REST surface does: for clients that take JSON from files, like the
/// CLI's `submit --from-file`. `full_name` is the message's, e.g.
/// `taskwire.v1.SubmitTaskRequest`.
pub fn from_json<M: prost::Message + Default>(
    full_name: &str,
    json: serde_json::Value,
) -> Result<M, String> {
    let desc = routes::POOL
        .get_message_by_name(full_name)
        .ok_or_else(|| format!("no message {full_name} in the contract"))?;
    DynamicMessage::deserialize(desc, json)
        .map_err(|e| e.to_string())?
        .transcode_to()
        .map_err(|e| e.to_string())
}

/// Appends `msg` as compact proto3 JSON.
pub(crate) fn write_json(out: &mut Vec<u8>, msg: &DynamicMessage) {
    let mut json = msg
        .serialize_with_options(serde_json::value::Serializer, &json_options())
        .expect("a message serializes to JSON");
    whole_numbers_as_integers(&mut json);
    serde_json::to_writer(out, &json).expect("a JSON value serializes");
}

/// `google.protobuf.Value` holds every number as a double, so a task's input `{"n": 1}`
/// would come back as `{"n": 1.0}`. Like Go's protojson, write a whole number that a
/// double holds exactly as an integer.
fn whole_numbers_as_integers(json: &mut serde_json::Value) {
    use serde_json::Value;
    const EXACT: f64 = 9_007_199_254_740_992.0; // 2^53
    match json {
        Value::Number(n) => {
            if let Some(f) = n.as_f64().filter(|_| n.is_f64())
                && f.fract() == 0.0
                && f.abs() <= EXACT
            {
                *n = serde_json::Number::from(f as i64);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(whole_numbers_as_integers),
        Value::Object(map) => map.values_mut().for_each(whole_numbers_as_integers),
        Value::Null | Value::Bool(_) | Value::String(_) => {}
    }
}

fn not_found(method: &Method, path: &str) -> http::Response<Body> {
    status::json_response(
        StatusCode::NOT_FOUND,
        &serde_json::json!({
            "code": tonic::Code::NotFound as i32,
            "message": format!("no route for {method} {path}; the routes are in {OPENAPI_PATH}"),
            "details": [],
        }),
    )
}

fn method_not_allowed(method: &Method, path: &str, allow: &str) -> http::Response<Body> {
    let mut resp = status::json_response(
        StatusCode::METHOD_NOT_ALLOWED,
        &serde_json::json!({
            "code": tonic::Code::Unimplemented as i32,
            "message": format!("{path} does not take {method}; it takes {allow}"),
            "details": [],
        }),
    );
    if let Ok(v) = HeaderValue::from_str(allow) {
        resp.headers_mut().insert(header::ALLOW, v);
    }
    resp
}
