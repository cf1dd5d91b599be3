//! A gRPC status as an HTTP answer: the status code by Google's gRPC-to-HTTP mapping
//! (google/rpc/code.proto), a JSON body in the `google.rpc.Status` shape
//! (`{"code", "message", "details"}`), and `Retry-After` where a retry is the answer.

use std::time::Duration;

use http::{HeaderValue, StatusCode, header};
use serde_json::json;
use tonic::{Code, Status};
use tonic_types::StatusExt;

/// How long a client told UNAVAILABLE without a hint waits before retrying.
const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(1);

/// The HTTP status for a gRPC code. RESOURCE_EXHAUSTED is 429 when the caller may
/// retry later (the status says when), 413 when the request itself is too large.
pub fn http_status(status: &Status) -> StatusCode {
    match status.code() {
        Code::Ok => StatusCode::OK,
        Code::Cancelled => StatusCode::from_u16(499).expect("499 is a valid status"),
        Code::Unknown | Code::Internal | Code::DataLoss => StatusCode::INTERNAL_SERVER_ERROR,
        Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => {
            StatusCode::BAD_REQUEST
        }
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists | Code::Aborted => StatusCode::CONFLICT,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::ResourceExhausted if retry_after(status).is_some() => StatusCode::TOO_MANY_REQUESTS,
        Code::ResourceExhausted => StatusCode::PAYLOAD_TOO_LARGE,
        Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
    }
}

/// When the status says to retry: its `RetryInfo`, else its `retry-after` metadata.
fn retry_after(status: &Status) -> Option<Duration> {
    let details = status.get_error_details();
    if let Some(delay) = details.retry_info().and_then(|r| r.retry_delay) {
        return Some(delay);
    }
    let secs = status.metadata().get("retry-after")?.to_str().ok()?;
    secs.parse().ok().map(Duration::from_secs)
}

/// The `google.rpc.Status` JSON of `status`: code, message, and the details a REST
/// client can act on (RetryInfo, BadRequest) in their proto3 JSON form.
pub fn json_body(status: &Status) -> serde_json::Value {
    let details = status.get_error_details();
    let mut out = Vec::new();
    if let Some(delay) = details.retry_info().and_then(|r| r.retry_delay) {
        out.push(json!({
            "@type": "type.googleapis.com/google.rpc.RetryInfo",
            "retryDelay": format!("{:.3}s", delay.as_secs_f64()),
        }));
    }
    if let Some(bad) = details.bad_request() {
        let violations: Vec<_> = bad
            .field_violations
            .iter()
            .map(|v| json!({"field": v.field, "description": v.description}))
            .collect();
        out.push(json!({
            "@type": "type.googleapis.com/google.rpc.BadRequest",
            "fieldViolations": violations,
        }));
    }
    json!({
        "code": status.code() as i32,
        "message": status.message(),
        "details": out,
    })
}

/// The whole HTTP answer for a failed call.
pub fn response(status: &Status) -> http::Response<tonic::body::Body> {
    let code = http_status(status);
    let mut resp = json_response(code, &json_body(status));
    let retry = match status.code() {
        Code::ResourceExhausted | Code::Unavailable => {
            Some(retry_after(status).unwrap_or(DEFAULT_RETRY_AFTER))
        }
        _ => None,
    };
    if let Some(after) = retry.filter(|_| code != StatusCode::PAYLOAD_TOO_LARGE) {
        let secs = after.as_secs_f64().ceil().max(1.0) as u64;
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    resp
}

/// A JSON answer with `code`.
pub fn json_response(
    code: StatusCode,
    body: &serde_json::Value,
) -> http::Response<tonic::body::Body> {
    let mut bytes = serde_json::to_vec(body).expect("a JSON value serializes");
    // A shell prompt after `curl` starts on its own line.
    bytes.push(b'\n');
    let mut resp = http::Response::new(tonic::body::Body::new(http_body_util::Full::new(
        bytes::Bytes::from(bytes),
    )));
    *resp.status_mut() = code;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_map_as_google_maps_them() {
        let cases = [
            (Status::invalid_argument("x"), 400),
            (Status::failed_precondition("x"), 400),
            (Status::not_found("x"), 404),
            (Status::unauthenticated("x"), 401),
            (Status::permission_denied("x"), 403),
            (Status::resource_exhausted("too large"), 413),
            (
                crate::limits::exhausted("slow down", Duration::from_millis(1500)),
                429,
            ),
            (Status::unavailable("x"), 503),
            (Status::internal("x"), 500),
            (Status::deadline_exceeded("x"), 504),
            (Status::unimplemented("x"), 501),
        ];
        for (status, http) in cases {
            assert_eq!(http_status(&status).as_u16(), http, "{status:?}");
        }
    }

    #[test]
    fn retries_carry_retry_after_and_details() {
        let resp = response(&crate::limits::exhausted(
            "slow down",
            Duration::from_millis(1500),
        ));
        assert_eq!(resp.status(), 429);
        assert_eq!(resp.headers()[header::RETRY_AFTER], "2");
        let body = json_body(&crate::limits::exhausted(
            "slow down",
            Duration::from_millis(1500),
        ));
        assert_eq!(body["code"], 8);
        assert_eq!(body["details"][0]["retryDelay"], "1.500s");

        let resp = response(&Status::unavailable("nats is down"));
        assert_eq!(resp.status(), 503);
        assert_eq!(resp.headers()[header::RETRY_AFTER], "1");
        assert!(
            !response(&Status::resource_exhausted("big"))
                .headers()
                .contains_key(header::RETRY_AFTER)
        );
        assert!(
            !response(&Status::not_found("x"))
                .headers()
                .contains_key(header::RETRY_AFTER)
        );
    }
}
