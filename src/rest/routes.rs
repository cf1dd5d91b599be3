//! The REST routes, read from the proto: each public RPC's `google.api.http` option
//! (proto/taskwire/v1/service.proto) gives its HTTP method and path template. A
//! request that matches one becomes that RPC's request message, built as proto3 JSON
//! from the body, the path's variables and the query string, in that order of
//! precedence: path over query over body.

use std::sync::{Arc, LazyLock};

use http::Method;
use prost_reflect::{
    DescriptorPool, DynamicMessage, FieldDescriptor, Kind, MethodDescriptor, Value,
};
use serde_json::{Map, Value as Json};

use crate::pb;

/// The request field a stream resumes after, set from `Last-Event-ID`; the response
/// field that is each event's SSE `id:`. A streaming RPC with `after_seq` is resumable.
pub const RESUME_FIELD: &str = "after_seq";
/// See [`RESUME_FIELD`].
pub const EVENT_ID_FIELD: &str = "seq";
/// The request field the `Idempotency-Key` header sets.
pub const IDEMPOTENCY_FIELD: &str = "idempotency_key";

/// The descriptor pool of the contract, with its `google.api.http` options.
pub static POOL: LazyLock<DescriptorPool> = LazyLock::new(|| {
    DescriptorPool::decode(pb::FILE_DESCRIPTOR_SET).expect("the embedded descriptor set decodes")
});

/// Every REST route of the public contract, in declaration order.
pub static ALL: LazyLock<Arc<Vec<Route>>> = LazyLock::new(|| Arc::new(from_pool(&POOL)));

/// One RPC's HTTP binding.
#[derive(Debug, Clone)]
pub struct Route {
    /// GET, POST, ...
    pub method: Method,
    /// The path template as written in the proto, e.g. `/v1/tasks/{task_id}:cancel`.
    pub template: String,
    segments: Vec<Segment>,
    verb: Option<String>,
    /// Whether the request body carries the message's fields (`body: "*"`).
    pub has_body: bool,
    /// The RPC.
    pub rpc: MethodDescriptor,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Field(String),
}

/// A REST request that does not make a valid request message: INVALID_ARGUMENT.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BadRequest(pub String);

impl Route {
    /// The gRPC path of the RPC: `/taskwire.v1.TaskService/SubmitTask`.
    pub fn grpc_path(&self) -> String {
        format!(
            "/{}/{}",
            self.rpc.parent_service().full_name(),
            self.rpc.name()
        )
    }

    /// The fields named in the path template.
    pub fn path_fields(&self) -> impl Iterator<Item = &str> {
        self.segments.iter().filter_map(|s| match s {
            Segment::Field(f) => Some(f.as_str()),
            Segment::Literal(_) => None,
        })
    }

    /// Whether the RPC streams its answer (Server-Sent Events over REST).
    pub fn streams(&self) -> bool {
        self.rpc.is_server_streaming()
    }

    /// Whether a stream can be resumed with `Last-Event-ID`.
    pub fn resumable(&self) -> bool {
        self.streams() && self.rpc.input().get_field_by_name(RESUME_FIELD).is_some()
    }

    /// The path's variables if `path` (still percent-encoded) matches the template.
    pub fn matches(&self, path: &str) -> Option<Vec<(String, String)>> {
        let path = path.strip_prefix('/')?;
        let mut parts: Vec<&str> = path.split('/').collect();
        // The verb is a suffix of the last segment: `{task_id}:cancel`.
        if let Some(verb) = &self.verb {
            let last = parts.last_mut()?;
            *last = last.strip_suffix(verb.as_str())?.strip_suffix(':')?;
        } else if parts.last().is_some_and(|p| p.contains(':')) {
            return None;
        }
        if parts.len() != self.segments.len() {
            return None;
        }
        let mut vars = Vec::new();
        for (segment, part) in self.segments.iter().zip(parts) {
            match segment {
                Segment::Literal(l) if l == part => {}
                Segment::Literal(_) => return None,
                Segment::Field(f) => {
                    let value = percent_encoding::percent_decode_str(part)
                        .decode_utf8()
                        .ok()?;
                    if value.is_empty() {
                        return None;
                    }
                    vars.push((f.clone(), value.into_owned()));
                }
            }
        }
        Some(vars)
    }

    /// The request message for this route: `body` (JSON, when the route has one), then
    /// the query string, then the path's variables, and `Idempotency-Key`.
    pub fn request(
        &self,
        body: &[u8],
        query: Option<&str>,
        path_vars: Vec<(String, String)>,
        idempotency_key: Option<&str>,
        last_event_id: Option<&str>,
    ) -> Result<DynamicMessage, BadRequest> {
        let input = self.rpc.input();
        let mut object = if self.has_body && !body.iter().all(u8::is_ascii_whitespace) {
            match serde_json::from_slice::<Json>(body) {
                Ok(Json::Object(o)) => o,
                Ok(_) => return Err(BadRequest("the body must be a JSON object".into())),
                Err(e) => return Err(BadRequest(format!("the body is not JSON: {e}"))),
            }
        } else if !self.has_body && !body.is_empty() {
            return Err(BadRequest(format!(
                "{} {} takes no body; pass fields in the query string",
                self.method, self.template
            )));
        } else {
            Map::new()
        };
        for (name, value) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
            query_param(&input, &mut object, &name, &value)?;
        }
        if let Some(key) = idempotency_key {
            let field = input.get_field_by_name(IDEMPOTENCY_FIELD).ok_or_else(|| {
                BadRequest(format!(
                    "the Idempotency-Key header does not apply to {}",
                    self.template
                ))
            })?;
            set_once(
                &mut object,
                &field,
                Json::String(key.to_string()),
                "Idempotency-Key",
            )?;
        }
        if let (Some(id), Some(field)) = (last_event_id, input.get_field_by_name(RESUME_FIELD)) {
            let seq: u64 = id.trim().parse().map_err(|_| {
                BadRequest(format!("Last-Event-ID must be an event's seq, not {id:?}"))
            })?;
            // An explicit ?after_seq= wins: it is what the URL says.
            if !has(&object, &field) {
                object.insert(field.json_name().to_string(), Json::String(seq.to_string()));
            }
        }
        for (name, value) in path_vars {
            let field = input
                .get_field_by_name(&name)
                .expect("path fields are checked when the routes are read");
            remove(&mut object, &field);
            object.insert(field.json_name().to_string(), Json::String(value));
        }
        let json = Json::Object(object);
        DynamicMessage::deserialize(input, json).map_err(|e| BadRequest(e.to_string()))
    }
}

fn has(object: &Map<String, Json>, field: &FieldDescriptor) -> bool {
    object.contains_key(field.json_name()) || object.contains_key(field.name())
}

fn remove(object: &mut Map<String, Json>, field: &FieldDescriptor) {
    object.remove(field.json_name());
    object.remove(field.name());
}

/// Sets `field` from a header, refusing a body that says something else.
fn set_once(
    object: &mut Map<String, Json>,
    field: &FieldDescriptor,
    value: Json,
    from: &str,
) -> Result<(), BadRequest> {
    let existing = object
        .get(field.json_name())
        .or_else(|| object.get(field.name()));
    match existing {
        Some(v) if *v != value => Err(BadRequest(format!(
            "{from} and the body's {} differ",
            field.name()
        ))),
        _ => {
            remove(object, field);
            object.insert(field.json_name().to_string(), value);
            Ok(())
        }
    }
}

/// One query parameter into the JSON object: a scalar or enum field by its proto or
/// JSON name (repeated: the parameter repeats), or `label=key=value` for the map field
/// `labels` (repeated, one entry each).
fn query_param(
    input: &prost_reflect::MessageDescriptor,
    object: &mut Map<String, Json>,
    name: &str,
    value: &str,
) -> Result<(), BadRequest> {
    let field = input
        .get_field_by_name(name)
        .or_else(|| input.get_field_by_json_name(name));
    if let Some(field) = field.as_ref().filter(|f| !f.is_map()) {
        if matches!(field.kind(), Kind::Message(_)) {
            return Err(BadRequest(format!(
                "{name} is a message field and cannot be given in the query string"
            )));
        }
        let v = query_value(field, value)?;
        if field.is_list() {
            let list = object
                .entry(field.json_name().to_string())
                .or_insert_with(|| Json::Array(Vec::new()));
            if let Json::Array(items) = list {
                items.push(v);
            }
        } else {
            object.insert(field.json_name().to_string(), v);
        }
        return Ok(());
    }
    // `label=env=prod` for the map `labels`.
    let map = field.or_else(|| input.get_field_by_name(&format!("{name}s")));
    let Some(map) = map.filter(FieldDescriptor::is_map) else {
        return Err(BadRequest(format!("unknown query parameter {name:?}")));
    };
    let Some((k, v)) = value.split_once('=') else {
        return Err(BadRequest(format!(
            "{name} must be key=value, e.g. {name}=env=prod"
        )));
    };
    let entries = object
        .entry(map.json_name().to_string())
        .or_insert_with(|| Json::Object(Map::new()));
    if let Json::Object(entries) = entries {
        entries.insert(k.to_string(), Json::String(v.to_string()));
    }
    Ok(())
}

/// A query string value as proto3 JSON for `field`. Enum values may be given by full
/// name (`TASK_STATE_FAILED`), without the enum's prefix, in any case (`failed`), or
/// by number.
fn query_value(field: &FieldDescriptor, value: &str) -> Result<Json, BadRequest> {
    let bad = |what: &str| BadRequest(format!("{} must be {what}, not {value:?}", field.name()));
    Ok(match field.kind() {
        Kind::String | Kind::Bytes => Json::String(value.to_string()),
        Kind::Bool => match value {
            "true" | "1" => Json::Bool(true),
            "false" | "0" => Json::Bool(false),
            _ => return Err(bad("true or false")),
        },
        Kind::Enum(e) => {
            if let Ok(n) = value.parse::<i32>() {
                return Ok(Json::from(n));
            }
            let upper = value.to_ascii_uppercase();
            let found = e.values().find(|v| {
                v.name() == upper
                    || v.name()
                        .strip_suffix(&upper)
                        .is_some_and(|prefix| prefix.ends_with('_'))
            });
            match found {
                Some(v) => Json::String(v.name().to_string()),
                None => {
                    let names: Vec<String> = e.values().map(|v| v.name().to_string()).collect();
                    return Err(bad(&format!("one of {}", names.join(", "))));
                }
            }
        }
        Kind::Float | Kind::Double => {
            value.parse::<f64>().map_err(|_| bad("a number"))?;
            Json::String(value.to_string())
        }
        // Integers: proto3 JSON takes them as strings, which keeps 64-bit values exact;
        // the message's own parser checks the range.
        _ => Json::String(value.to_string()),
    })
}

/// Reads every `google.api.http` option of the public services in `pool`.
pub fn from_pool(pool: &DescriptorPool) -> Vec<Route> {
    let http = pool
        .get_extension_by_name("google.api.http")
        .expect("google/api/annotations.proto is in the descriptor set");
    let mut routes = Vec::new();
    for service in pool.services() {
        if service.package_name() != "taskwire.v1" {
            continue;
        }
        for rpc in service.methods() {
            let options = rpc.options();
            if !options.has_extension(&http) {
                continue;
            }
            let rule = options.get_extension(&http);
            let rule = rule.as_message().expect("HttpRule is a message");
            routes.push(route(rpc.clone(), rule));
        }
    }
    routes
}

fn route(rpc: MethodDescriptor, rule: &DynamicMessage) -> Route {
    let text = |name: &str| match rule.get_field_by_name(name).as_deref() {
        Some(Value::String(s)) => s.clone(),
        _ => String::new(),
    };
    let (method, template) = [
        ("get", Method::GET),
        ("put", Method::PUT),
        ("post", Method::POST),
        ("delete", Method::DELETE),
        ("patch", Method::PATCH),
    ]
    .into_iter()
    .find_map(|(name, method)| {
        let t = text(name);
        (!t.is_empty()).then_some((method, t))
    })
    .unwrap_or_else(|| panic!("{}: google.api.http names no method", rpc.full_name()));
    let body = text("body");
    assert!(
        body.is_empty() || body == "*",
        "{}: only body \"*\" or none is supported",
        rpc.full_name()
    );
    let (path, verb) = match template.rsplit_once(':') {
        Some((p, v)) if !v.contains('/') && !v.contains('}') => (p, Some(v.to_string())),
        _ => (template.as_str(), None),
    };
    let segments: Vec<Segment> = path
        .trim_start_matches('/')
        .split('/')
        .map(
            |s| match s.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                Some(field) => {
                    let f = rpc.input().get_field_by_name(field).unwrap_or_else(|| {
                        panic!("{}: {template} names no field {field}", rpc.full_name())
                    });
                    assert!(
                        !f.is_list() && !f.is_map() && f.kind() == Kind::String,
                        "{}: path variable {field} must be a string field",
                        rpc.full_name()
                    );
                    Segment::Field(field.to_string())
                }
                None => Segment::Literal(s.to_string()),
            },
        )
        .collect();
    Route {
        method,
        template: template.clone(),
        segments,
        verb,
        has_body: body == "*",
        rpc,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn find(template: &str) -> &'static Route {
        ALL.iter()
            .find(|r| r.template == template)
            .unwrap_or_else(|| panic!("no route {template}"))
    }

    #[test]
    fn every_public_rpc_has_a_route() {
        let rpcs: Vec<String> = POOL
            .services()
            .filter(|s| s.package_name() == "taskwire.v1")
            .flat_map(|s| {
                s.methods()
                    .map(|m| m.full_name().to_string())
                    .collect::<Vec<_>>()
            })
            .collect();
        let routed: Vec<String> = ALL.iter().map(|r| r.rpc.full_name().to_string()).collect();
        assert_eq!(rpcs, routed);
    }

    #[test]
    fn templates_match_paths_and_verbs() {
        let get = find("/v1/tasks/{task_id}");
        let cancel = find("/v1/tasks/{task_id}:cancel");
        let events = find("/v1/tasks/{task_id}/events");
        let id = "0190a0b0-0000-7000-8000-000000000001";
        assert_eq!(
            get.matches(&format!("/v1/tasks/{id}")),
            Some(vec![("task_id".into(), id.into())])
        );
        assert_eq!(get.matches(&format!("/v1/tasks/{id}:cancel")), None);
        assert_eq!(
            cancel.matches(&format!("/v1/tasks/{id}:cancel")),
            Some(vec![("task_id".into(), id.into())])
        );
        assert_eq!(cancel.matches(&format!("/v1/tasks/{id}")), None);
        assert_eq!(
            events.matches(&format!("/v1/tasks/{id}/events")),
            Some(vec![("task_id".into(), id.into())])
        );
        assert_eq!(get.matches("/v1/tasks/"), None);
        assert_eq!(
            get.matches("/v1/tasks/a%2Fb"),
            Some(vec![("task_id".into(), "a/b".into())])
        );
        assert!(find("/v1/tasks").matches("/v1/tasks").is_some());
        assert!(events.resumable());
        assert!(!find("/v1/events").resumable());
    }

    #[test]
    fn requests_take_body_query_path_and_headers() {
        let submit = find("/v1/tasks");
        let submit = ALL
            .iter()
            .find(|r| r.template == submit.template && r.method == Method::POST)
            .unwrap();
        let msg = submit
            .request(
                br#"{"kind":"demo.echo","input":{"a":[1,"x"]},"labels":{"env":"dev"}}"#,
                None,
                vec![],
                Some("key-1"),
                None,
            )
            .unwrap();
        let json = serde_json::to_value(&msg).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"kind":"demo.echo","input":{"a":[1.0,"x"]},
                "idempotencyKey":"key-1","labels":{"env":"dev"}})
        );
        // The header and the body may not disagree.
        assert!(
            submit
                .request(br#"{"idempotency_key":"a"}"#, None, vec![], Some("b"), None)
                .is_err()
        );
        assert!(submit.request(b"[1]", None, vec![], None, None).is_err());
        assert!(
            submit
                .request(br#"{"nope":1}"#, None, vec![], None, None)
                .is_err()
        );

        let list = ALL
            .iter()
            .find(|r| r.template == "/v1/tasks" && r.method == Method::GET)
            .unwrap();
        let msg = list
            .request(
                b"",
                Some("state=failed&kind=demo.fail&page_size=5&label=env=prod&label=team=a%3Db"),
                vec![],
                None,
                None,
            )
            .unwrap();
        assert_eq!(
            serde_json::to_value(&msg).unwrap(),
            serde_json::json!({"pageSize":5,"state":"TASK_STATE_FAILED","kind":"demo.fail",
                "labels":{"env":"prod","team":"a=b"}})
        );
        for bad in ["state=nope", "page_size=x", "label=novalue", "wat=1"] {
            assert!(
                list.request(b"", Some(bad), vec![], None, None).is_err(),
                "{bad}"
            );
        }
        assert!(list.request(b"{}", None, vec![], None, None).is_err());

        let events = find("/v1/tasks/{task_id}/events");
        let vars = vec![("task_id".to_string(), "t".to_string())];
        let resumed = events
            .request(b"", None, vars.clone(), None, Some("42"))
            .unwrap();
        assert_eq!(
            serde_json::to_value(&resumed).unwrap(),
            serde_json::json!({"taskId":"t","afterSeq":"42"})
        );
        // ?after_seq wins over the header.
        let explicit = events
            .request(b"", Some("after_seq=7"), vars.clone(), None, Some("42"))
            .unwrap();
        assert_eq!(
            serde_json::to_value(&explicit).unwrap()["afterSeq"],
            serde_json::json!("7")
        );
        assert!(events.request(b"", None, vars, None, Some("x")).is_err());
    }
}
