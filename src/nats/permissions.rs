//! What each taskwire role may publish and subscribe to on NATS, as a nats-server
//! `authorization` block (docs/security.md, "NATS"). `taskwire nats-permissions`
//! prints it; deploy/nats-permissions.conf is its output for the built-in kinds.
//!
//! - api: owns the streams (creates and updates them) and reads queue state, so it
//!   may use the whole JetStream API; publishes tasks, appends cancels.
//! - worker: pulls only its kinds' consumers and acks their messages, appends task
//!   events and dead letters of its kinds, asks and answers running-queries, hears
//!   cancel signals. It cannot submit a task, touch a stream, or pull another kind.
//! - recorder: pulls the events and advisories consumers; appends a task's end when
//!   its deliveries ran out.
//! - watch: reads the live subjects and the event history (a tree watch through
//!   ephemeral consumers of the events stream); publishes nothing else.
//!
//! Each process's replies arrive on its own inbox prefix (`_INBOX_taskwire-<role>`),
//! the only inbox its role may subscribe to.

use std::fmt::Write as _;

use super::{
    streams::{
        ADVISORIES_STREAM, ADVISORY_CONSUMER, DLQ_STREAM, EVENTS_STREAM, RECORDER_CONSUMER,
        TASKS_STREAM, kind_consumer,
    },
    subjects,
};

/// A role's subjects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Permissions {
    /// The role's user name and process name (`taskwire-<role>`).
    pub role: &'static str,
    /// Subjects it may publish to.
    pub publish: Vec<String>,
    /// Subjects it may subscribe to.
    pub subscribe: Vec<String>,
}

fn inbox(role: &str) -> String {
    format!("_INBOX_taskwire-{role}.>")
}

/// Reading streams' state and the events history (every role but the api needs it
/// spelt out).
fn stream_reads() -> Vec<String> {
    let mut v: Vec<String> = [TASKS_STREAM, EVENTS_STREAM, DLQ_STREAM, ADVISORIES_STREAM]
        .iter()
        .map(|s| format!("$JS.API.STREAM.INFO.{s}"))
        .collect();
    v.push("$JS.API.INFO".into());
    v.push(format!("$JS.API.DIRECT.GET.{EVENTS_STREAM}"));
    v.push(format!("$JS.API.DIRECT.GET.{EVENTS_STREAM}.>"));
    v.push(format!("$JS.API.STREAM.MSG.GET.{EVENTS_STREAM}"));
    v
}

/// Pulling one durable consumer: (re)creating it with its config, reading it, taking
/// messages, acking them.
fn consumer(stream: &str, name: &str) -> Vec<String> {
    vec![
        format!("$JS.API.CONSUMER.CREATE.{stream}.{name}"),
        format!("$JS.API.CONSUMER.CREATE.{stream}.{name}.>"),
        format!("$JS.API.CONSUMER.DURABLE.CREATE.{stream}.{name}"),
        format!("$JS.API.CONSUMER.INFO.{stream}.{name}"),
        format!("$JS.API.CONSUMER.MSG.NEXT.{stream}.{name}"),
        format!("$JS.ACK.{stream}.{name}.>"),
    ]
}

/// The four roles; the worker's confined to `kinds`.
pub fn roles(kinds: &[String]) -> Vec<Permissions> {
    let api = Permissions {
        role: "api",
        publish: vec![
            "$JS.API.>".into(),
            subjects::TASKS_ALL.into(),
            subjects::EVENTS_ALL.into(),
            subjects::CANCEL_ALL.into(),
        ],
        subscribe: vec![inbox("api")],
    };
    let mut worker_pub = stream_reads();
    for kind in kinds {
        worker_pub.extend(consumer(TASKS_STREAM, &kind_consumer(kind)));
        worker_pub.push(subjects::dlq_subject(kind));
    }
    worker_pub.push(subjects::EVENTS_ALL.replace('>', "*"));
    worker_pub.push(subjects::RUNNING_ALL.replace('>', "*"));
    let worker = Permissions {
        role: "worker",
        publish: worker_pub,
        subscribe: vec![
            inbox("worker"),
            subjects::CANCEL_ALL.replace('>', "*"),
            subjects::RUNNING_ALL.replace('>', "*"),
        ],
    };
    let mut recorder_pub = stream_reads();
    recorder_pub.extend(consumer(EVENTS_STREAM, RECORDER_CONSUMER));
    recorder_pub.extend(consumer(ADVISORIES_STREAM, ADVISORY_CONSUMER));
    recorder_pub.push(subjects::EVENTS_ALL.replace('>', "*"));
    let recorder = Permissions {
        role: "recorder",
        publish: recorder_pub,
        subscribe: vec![inbox("recorder")],
    };
    // Tree watches read the events through ephemeral ordered consumers of their own
    // (consumer names cannot be confined by a wildcard, so any consumer of that stream).
    let mut watch_pub = stream_reads();
    watch_pub.push(format!("$JS.API.CONSUMER.CREATE.{EVENTS_STREAM}"));
    for api in ["CREATE", "MSG.NEXT", "DELETE", "INFO"] {
        watch_pub.push(format!("$JS.API.CONSUMER.{api}.{EVENTS_STREAM}.>"));
    }
    let watch = Permissions {
        role: "watch",
        publish: watch_pub,
        subscribe: vec![inbox("watch"), subjects::LIVE_ALL.into()],
    };
    vec![api, worker, recorder, watch]
}

/// The nats-server `authorization` block for `roles`: one user per role, its password
/// read from `$TASKWIRE_NATS_<ROLE>_PASSWORD` in nats-server's environment.
pub fn authorization_block(roles: &[Permissions]) -> String {
    let list = |v: &[String]| {
        v.iter()
            .map(|s| format!("          \"{s}\""))
            .collect::<Vec<_>>()
            .join(",\n")
    };
    let mut out = String::from("authorization {\n  users = [\n");
    for r in roles {
        let _ = write!(
            out,
            "    {{\n      user: \"{role}\"\n      password: ${env}\n      permissions: {{\n        \
             publish: {{ allow: [\n{publish}\n        ] }}\n        \
             subscribe: {{ allow: [\n{subscribe}\n        ] }}\n        \
             allow_responses: true\n      }}\n    }}\n",
            role = r.role,
            env = password_env(r.role),
            publish = list(&r.publish),
            subscribe = list(&r.subscribe),
        );
    }
    out.push_str("  ]\n}\n");
    out
}

/// The environment variable nats-server reads a role's password from.
pub fn password_env(role: &str) -> String {
    format!("TASKWIRE_NATS_{}_PASSWORD", role.to_ascii_uppercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_worker_is_confined_to_its_kinds() {
        let roles = roles(&["demo.sleep".into()]);
        let worker = roles.iter().find(|r| r.role == "worker").unwrap();
        let sleep = kind_consumer("demo.sleep");
        assert!(
            worker
                .publish
                .contains(&format!("$JS.API.CONSUMER.MSG.NEXT.TASKWIRE_TASKS.{sleep}"))
        );
        assert!(
            !worker
                .publish
                .iter()
                .any(|s| s.contains(&kind_consumer("demo.echo")))
        );
        assert!(
            !worker
                .publish
                .iter()
                .any(|s| s.starts_with("taskwire.tasks"))
        );
        assert!(!worker.publish.iter().any(|s| s.contains("STREAM.DELETE")));
        let block = authorization_block(&roles);
        assert!(
            block.contains("password: $TASKWIRE_NATS_WORKER_PASSWORD"),
            "{block}"
        );
    }
}
