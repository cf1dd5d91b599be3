//! The OpenAPI 3.1 document of the REST routes, generated from the same descriptors
//! the routes are read from (operations from the `google.api.http` options, schemas
//! from the messages in their proto3 JSON form, descriptions from the proto's
//! comments), so it cannot drift from what is served. docs/openapi.json is a copy,
//! kept equal by a test.

use std::collections::{BTreeMap, BTreeSet};

use prost_reflect::{FieldDescriptor, FileDescriptor, Kind, MessageDescriptor};
use serde_json::{Map, Value as Json, json};

use super::routes::{self, IDEMPOTENCY_FIELD, RESUME_FIELD, Route};

/// The document, built once: the descriptors do not change while a server runs.
pub static DOCUMENT: std::sync::LazyLock<Json> = std::sync::LazyLock::new(document);

/// The document, for every public route.
pub fn document() -> Json {
    let mut schemas = BTreeMap::new();
    let mut paths: BTreeMap<String, Map<String, Json>> = BTreeMap::new();
    for route in routes::ALL.iter() {
        let op = operation(route, &mut schemas);
        paths
            .entry(route.template.clone())
            .or_default()
            .insert(route.method.as_str().to_ascii_lowercase(), op);
    }
    schemas.insert(
        "google.rpc.Status".to_string(),
        json!({
            "type": "object",
            "description": "An error: the gRPC status code (google.rpc.Code), a message for \
                people, and details a client can act on (google.rpc.RetryInfo, BadRequest).",
            "properties": {
                "code": {"type": "integer", "format": "int32"},
                "message": {"type": "string"},
                "details": {"type": "array", "items": {
                    "type": "object",
                    "properties": {"@type": {"type": "string"}},
                    "additionalProperties": true,
                }},
            },
            "required": ["code", "message"],
        }),
    );
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "taskwire",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Long-running tasks with live progress. The REST/JSON surface of \
                the gRPC services in proto/taskwire/v1, transcoded from the same contract: \
                bodies and answers are the messages in proto3 JSON, errors are \
                google.rpc.Status, streams are Server-Sent Events. docs/rest.md.",
            "license": {"name": "Apache-2.0", "identifier": "Apache-2.0"},
        },
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "apiKey": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "An API key (twk_…) or a JWT; needed when the server \
                        runs --auth keys (docs/security.md).",
                },
            },
        },
        // Either: without credentials on a server with --auth off, or with a key.
        "security": [{}, {"apiKey": []}],
    })
}

fn operation(route: &Route, schemas: &mut BTreeMap<String, Json>) -> Json {
    let rpc = &route.rpc;
    let input = rpc.input();
    let (summary, description) = split_comment(comment(&rpc.parent_file(), rpc.path()));
    let mut params = Vec::new();
    let path_fields: BTreeSet<&str> = route.path_fields().collect();
    for name in &path_fields {
        let field = input.get_field_by_name(name).expect("checked when read");
        params.push(json!({
            "name": name,
            "in": "path",
            "required": true,
            "description": field_comment(&field),
            "schema": field_schema(&field, schemas),
        }));
    }
    if !route.has_body {
        for field in input.fields().filter(|f| !path_fields.contains(f.name())) {
            params.push(query_param(&field, schemas));
        }
    }
    if input.get_field_by_name(IDEMPOTENCY_FIELD).is_some() {
        params.push(json!({
            "name": "Idempotency-Key",
            "in": "header",
            "required": false,
            "description": "Sets idempotency_key (the body may leave it out, or must say \
                the same).",
            "schema": {"type": "string", "maxLength": 256},
        }));
    }
    if route.resumable() {
        params.push(json!({
            "name": "Last-Event-ID",
            "in": "header",
            "required": false,
            "description": "Resume after this event (its seq): what an EventSource sends \
                when it reconnects. after_seq in the query wins over it.",
            "schema": {"type": "string", "pattern": "^[0-9]+$"},
        }));
    }
    let ok = if route.streams() {
        schema_of(&rpc.output(), schemas);
        let id = if route.resumable() {
            "`id:` the event's seq, "
        } else {
            ""
        };
        json!({
            "description": format!(
                "Server-Sent Events: one event per {}, {id}`data:` its proto3 JSON (schema \
                 #/components/schemas/{}); a comment every 15 s while idle; on an error, \
                 `event: error` with a google.rpc.Status, then the stream closes.",
                rpc.output().name(),
                rpc.output().full_name(),
            ),
            "content": {"text/event-stream": {"schema": {"type": "string"}}},
        })
    } else {
        json!({
            "description": "OK",
            "content": {"application/json": {"schema": schema_of(&rpc.output(), schemas)}},
        })
    };
    let mut responses = Map::new();
    responses.insert("200".into(), ok);
    if route.resumable() {
        responses.insert(
            "204".into(),
            json!({"description": "Resumed at or past the terminal event: nothing more will \
                come (an EventSource stops reconnecting)."}),
        );
    }
    responses.insert(
        "default".into(),
        json!({
            "description": "An error: the HTTP status maps the gRPC code (docs/rest.md).",
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/google.rpc.Status"}}},
        }),
    );
    let mut op = json!({
        "operationId": rpc.name(),
        "summary": summary,
        "description": description,
        "tags": [rpc.parent_service().name()],
        "parameters": params,
        "responses": responses,
    });
    if route.has_body {
        let needed =
            input.fields().any(|f| !path_fields.contains(f.name())) && path_fields.is_empty();
        op["requestBody"] = json!({
            "required": needed,
            "content": {"application/json": {"schema": schema_of(&input, schemas)}},
        });
    }
    op
}

fn query_param(field: &FieldDescriptor, schemas: &mut BTreeMap<String, Json>) -> Json {
    if field.is_map() {
        let singular = field.name().strip_suffix('s').unwrap_or(field.name());
        return json!({
            "name": singular,
            "in": "query",
            "required": false,
            "description": format!(
                "{} Given as {singular}=key=value, repeated for each entry.",
                field_comment(field)
            ),
            "schema": {"type": "array", "items": {"type": "string", "pattern": "^[^=]+=.*$"}},
            "style": "form",
            "explode": true,
        });
    }
    let mut description = field_comment(field);
    if field.name() == RESUME_FIELD {
        description.push_str(" (Or the Last-Event-ID header.)");
    }
    if let Kind::Enum(_) = field.kind() {
        description.push_str(
            " The value's name, with or without its prefix, in any case (TASK_STATE_FAILED, \
             failed), or its number.",
        );
    }
    json!({
        "name": field.name(),
        "in": "query",
        "required": false,
        "description": description,
        "schema": field_schema(field, schemas),
    })
}

/// A `$ref` to `msg`'s schema, adding it (and what it refers to) to `schemas`.
fn schema_of(msg: &MessageDescriptor, schemas: &mut BTreeMap<String, Json>) -> Json {
    if let Some(wkt) = well_known(msg.full_name()) {
        return wkt;
    }
    let name = msg.full_name().to_string();
    if !schemas.contains_key(&name) {
        // Placeholder first: a message may refer to itself.
        schemas.insert(name.clone(), Json::Null);
        let mut props = Map::new();
        for field in msg.fields() {
            let mut schema = field_schema(&field, schemas);
            let doc = field_comment(&field);
            if !doc.is_empty()
                && let Json::Object(o) = &mut schema
            {
                o.insert("description".into(), Json::String(doc));
            }
            props.insert(field.json_name().to_string(), schema);
        }
        let description = comment(&msg.parent_file(), msg.path()).unwrap_or_default();
        schemas.insert(
            name.clone(),
            json!({
                "type": "object",
                "description": description,
                "properties": props,
                "additionalProperties": false,
            }),
        );
    }
    json!({"$ref": format!("#/components/schemas/{name}")})
}

fn field_schema(field: &FieldDescriptor, schemas: &mut BTreeMap<String, Json>) -> Json {
    if field.is_map() {
        let Kind::Message(entry) = field.kind() else {
            unreachable!("a map field's kind is its entry message")
        };
        let value = entry.map_entry_value_field();
        return json!({"type": "object", "additionalProperties": scalar_schema(&value, schemas)});
    }
    let one = scalar_schema(field, schemas);
    if field.is_list() {
        json!({"type": "array", "items": one})
    } else {
        one
    }
}

fn scalar_schema(field: &FieldDescriptor, schemas: &mut BTreeMap<String, Json>) -> Json {
    match field.kind() {
        Kind::Double | Kind::Float => json!({"type": "number"}),
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => {
            json!({"type": "integer", "format": "int32"})
        }
        Kind::Uint32 | Kind::Fixed32 => {
            json!({"type": "integer", "format": "int64", "minimum": 0, "maximum": u32::MAX})
        }
        // proto3 JSON writes 64-bit integers as strings (exact in every language) and
        // reads either.
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => {
            json!({"type": ["string", "integer"], "format": "int64", "pattern": "^-?[0-9]+$"})
        }
        Kind::Uint64 | Kind::Fixed64 => {
            json!({"type": ["string", "integer"], "format": "uint64", "pattern": "^[0-9]+$"})
        }
        Kind::Bool => json!({"type": "boolean"}),
        Kind::String => json!({"type": "string"}),
        Kind::Bytes => json!({"type": "string", "contentEncoding": "base64"}),
        Kind::Enum(e) => {
            let name = e.full_name().to_string();
            if !schemas.contains_key(&name) {
                let values: Vec<String> = e.values().map(|v| v.name().to_string()).collect();
                let description = comment(&e.parent_file(), e.path()).unwrap_or_default();
                schemas.insert(
                    name.clone(),
                    json!({"type": "string", "enum": values, "description": description}),
                );
            }
            json!({"$ref": format!("#/components/schemas/{name}")})
        }
        Kind::Message(m) => schema_of(&m, schemas),
    }
}

/// The proto3 JSON forms of the well-known types the contract uses.
fn well_known(name: &str) -> Option<Json> {
    Some(match name {
        "google.protobuf.Value" => json!({"description": "Any JSON value."}),
        "google.protobuf.Struct" => json!({"type": "object"}),
        "google.protobuf.ListValue" => json!({"type": "array"}),
        "google.protobuf.Timestamp" => json!({"type": "string", "format": "date-time"}),
        "google.protobuf.Duration" => json!({
            "type": "string",
            "pattern": "^-?[0-9]+(\\.[0-9]{1,9})?s$",
            "description": "Seconds with an s suffix, e.g. \"90s\" or \"1.5s\".",
        }),
        "google.protobuf.Empty" => json!({"type": "object"}),
        _ => return None,
    })
}

fn field_comment(field: &FieldDescriptor) -> String {
    comment(&field.parent_file(), field.path()).unwrap_or_default()
}

/// The leading comment of the element at `path` in `file`, as written (one space of
/// indentation removed).
fn comment(file: &FileDescriptor, path: &[i32]) -> Option<String> {
    let info = file.file_descriptor_proto().source_code_info.as_ref()?;
    let loc = info.location.iter().find(|l| l.path == path)?;
    let text = loc.leading_comments.as_deref()?;
    let lines: Vec<&str> = text
        .lines()
        .map(|l| l.strip_prefix(' ').unwrap_or(l).trim_end())
        .collect();
    let joined = lines.join("\n").trim().to_string();
    (!joined.is_empty()).then_some(joined)
}

/// An RPC's comment as (summary: its first sentence, description: all of it).
fn split_comment(text: Option<String>) -> (String, String) {
    let text = text.unwrap_or_default();
    let flat = text.replace('\n', " ");
    let summary = match flat.find(". ") {
        Some(i) => flat[..=i].to_string(),
        None => flat.clone(),
    };
    (summary, text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_is_an_operation_with_resolvable_refs() {
        let doc = document();
        for route in routes::ALL.iter() {
            let op = &doc["paths"][&route.template][route.method.as_str().to_ascii_lowercase()];
            assert_eq!(op["operationId"], route.rpc.name(), "{}", route.template);
            assert!(
                !op["summary"].as_str().unwrap().is_empty(),
                "{}",
                route.template
            );
        }
        // Every $ref names a schema that exists.
        let text = doc.to_string();
        for part in text.split("\"$ref\":\"#/components/schemas/").skip(1) {
            let name = &part[..part.find('"').unwrap()];
            assert!(
                doc["components"]["schemas"][name].is_object(),
                "dangling $ref {name}"
            );
        }
        let task = &doc["components"]["schemas"]["taskwire.v1.Task"];
        assert_eq!(task["properties"]["lastSeq"]["format"], "uint64");
        assert_eq!(
            task["properties"]["state"]["$ref"],
            "#/components/schemas/taskwire.v1.TaskState"
        );
        assert_eq!(task["properties"]["createdAt"]["format"], "date-time");
    }

    /// docs/openapi.json is this document, for readers who do not run a server.
    /// Regenerate: `TASKWIRE_WRITE_OPENAPI=1 cargo test -p taskwire openapi`.
    #[test]
    fn docs_copy_is_current() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/openapi.json");
        let current = serde_json::to_string_pretty(&document()).unwrap() + "\n";
        if std::env::var_os("TASKWIRE_WRITE_OPENAPI").is_some() {
            std::fs::write(path, &current).unwrap();
        }
        let copy = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            copy == current,
            "docs/openapi.json differs from the generated document; regenerate it with \
             TASKWIRE_WRITE_OPENAPI=1 cargo test -p taskwire openapi"
        );
    }
}
