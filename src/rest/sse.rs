//! A streaming RPC as Server-Sent Events: one `data:` line of proto3 JSON per message,
//! with `id:` = the event's seq when the stream can be resumed, a comment every
//! [`KEEP_ALIVE`] while idle, and an `event: error` with the status before the stream
//! closes on an error (the browser's EventSource then reconnects with Last-Event-ID).
//!
//! A stream that ends OK having sent nothing, as WatchTask does when resumed at or past
//! the terminal event, is answered 204 No Content: the one answer that tells an
//! EventSource to stop reconnecting. So the answer's status waits for the first event
//! or the end, at most [`FIRST_EVENT_WAIT`]; past that the stream starts, and a resume
//! that turns out to be finished ends empty (the browser retries once, then gets 204).

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, StatusCode, header};
use prost_reflect::{DynamicMessage, MessageDescriptor, Value};
use tonic::Status;

use super::{
    grpc::{Answer, Item},
    routes::{EVENT_ID_FIELD, Route},
    status,
};

/// The longest an open stream stays silent: proxies and load balancers close idle
/// connections (often after 30 to 60 s), and a client can tell a live stream from a
/// dead one.
pub const KEEP_ALIVE: Duration = Duration::from_secs(15);
/// How long the answer waits for the first event before it starts the stream.
pub(super) const FIRST_EVENT_WAIT: Duration = Duration::from_secs(1);
/// How soon an EventSource reconnects after the connection drops (its default is
/// about 3 s).
const RETRY_MS: u32 = 1000;

/// Turns `answer` (a server-streaming call) into an SSE response.
pub(super) async fn respond(
    route: &Route,
    mut answer: Answer,
) -> http::Response<tonic::body::Body> {
    let encoder = Encoder {
        output: route.rpc.output(),
        ids: route.resumable(),
    };
    let first = match tokio::time::timeout(FIRST_EVENT_WAIT, answer.next()).await {
        Ok(Item::End(s)) if s.code() == tonic::Code::Ok => {
            let mut resp = http::Response::new(tonic::body::Body::empty());
            *resp.status_mut() = StatusCode::NO_CONTENT;
            return resp;
        }
        Ok(Item::End(s)) => return status::response(&s),
        Ok(Item::Message(m)) => Some(m),
        Err(_) => None,
    };
    let mut head = format!("retry: {RETRY_MS}\n\n").into_bytes();
    if let Some(m) = first {
        head.extend_from_slice(&encoder.event(&m));
    }
    // (the call, while it may send more; what to send before reading it again)
    let state = (Some(answer), Some(Bytes::from(head)));
    let body = futures::stream::unfold(state, move |(answer, pending)| {
        let encoder = encoder.clone();
        async move {
            if let Some(chunk) = pending {
                return Some((
                    Ok::<_, std::convert::Infallible>(frame(chunk)),
                    (answer, None),
                ));
            }
            let mut answer = answer?;
            let chunk = match tokio::time::timeout(KEEP_ALIVE, answer.next()).await {
                Err(_) => Bytes::from_static(b": keep-alive\n\n"),
                Ok(Item::Message(m)) => encoder.event(&m),
                Ok(Item::End(s)) if s.code() == tonic::Code::Ok => return None,
                // What went wrong is the last chunk.
                Ok(Item::End(s)) => return Some((Ok(frame(Encoder::error(&s))), (None, None))),
            };
            Some((Ok(frame(chunk)), (Some(answer), None)))
        }
    });
    let mut resp = http::Response::new(tonic::body::Body::new(http_body_util::StreamBody::new(
        body,
    )));
    let headers = resp.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    // nginx buffers answers unless told not to.
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    resp
}

fn frame(chunk: Bytes) -> http_body::Frame<Bytes> {
    http_body::Frame::data(chunk)
}

/// Messages to SSE events.
#[derive(Clone)]
struct Encoder {
    output: MessageDescriptor,
    ids: bool,
}

impl Encoder {
    fn event(&self, message: &[u8]) -> Bytes {
        let msg = match DynamicMessage::decode(self.output.clone(), message) {
            Ok(m) => m,
            Err(e) => return Self::error(&Status::internal(format!("undecodable event: {e}"))),
        };
        let mut out = Vec::with_capacity(message.len() * 2 + 32);
        if self.ids
            && let Some(Value::U64(seq)) = msg.get_field_by_name(EVENT_ID_FIELD).as_deref()
        {
            out.extend_from_slice(format!("id: {seq}\n").as_bytes());
        }
        out.extend_from_slice(b"data: ");
        // Compact JSON has no newlines, so one `data:` line holds it.
        super::write_json(&mut out, &msg);
        out.extend_from_slice(b"\n\n");
        Bytes::from(out)
    }

    fn error(status: &Status) -> Bytes {
        let json = status::json_body(status);
        Bytes::from(format!("event: error\ndata: {json}\n\n"))
    }
}
