//! Domain types: every value a request carries is parsed into one of these before any
//! side effect, so bad input is rejected with a reason and changes nothing
//! (guarantee 5). Each `parse` has a test per rejection below.

use std::{collections::BTreeMap, fmt, time::Duration};

use uuid::Uuid;

use crate::pb::v1::TaskState;

/// Why a request field was rejected; becomes INVALID_ARGUMENT or RESOURCE_EXHAUSTED.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidInput {
    /// A field is malformed; the message names the field and the rule.
    #[error("{field}: {reason}")]
    Malformed {
        /// The field at fault.
        field: &'static str,
        /// The rule it breaks.
        reason: String,
    },
    /// A field is larger than its limit.
    #[error("{field} is {size} bytes, over the limit of {limit} bytes")]
    TooLarge {
        /// The field at fault.
        field: &'static str,
        /// Its size, in bytes.
        size: usize,
        /// The largest size allowed.
        limit: usize,
    },
}

impl InvalidInput {
    pub(crate) fn malformed(field: &'static str, reason: impl Into<String>) -> Self {
        Self::Malformed {
            field,
            reason: reason.into(),
        }
    }
}

/// A task's id: a UUID (v7 when taskwire makes it, so ids sort by creation time).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TaskId(Uuid);

impl TaskId {
    /// A fresh id; v7 keeps index inserts local and listing order natural.
    pub fn new() -> Self {
        Self(Uuid::now_v7())
    }

    /// Parses the hyphenated form, e.g. `0192f4e2-6c1a-7d3e-9a4b-1f2e3d4c5b6a`.
    pub fn parse(s: &str) -> Result<Self, InvalidInput> {
        // Only the 36-character hyphenated form (any case): ids are also NATS subject
        // tokens and database keys, and we always write them back lower-case.
        match Uuid::try_parse(s) {
            Ok(u) if s.len() == 36 => Ok(Self(u)),
            _ => Err(InvalidInput::malformed(
                "task_id",
                "must be a UUID like 0192f4e2-6c1a-7d3e-9a4b-1f2e3d4c5b6a",
            )),
        }
    }
}

impl Default for TaskId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.hyphenated().fmt(f)
    }
}

/// What a task runs: `[a-z0-9][a-z0-9._-]{0,127}`. It is also a NATS subject suffix,
/// so the rule keeps it free of wildcards and spaces; dots make subject tokens.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TaskKind(String);

impl TaskKind {
    /// The longest kind, in bytes.
    pub const MAX_LEN: usize = 128;

    /// Parses a kind: `[a-z0-9][a-z0-9._-]{0,127}`.
    pub fn parse(s: &str) -> Result<Self, InvalidInput> {
        const RULE: &str = "must match [a-z0-9][a-z0-9._-]{0,127}";
        let bytes = s.as_bytes();
        let Some(first) = bytes.first() else {
            return Err(InvalidInput::malformed("kind", "is required"));
        };
        if bytes.len() > Self::MAX_LEN {
            return Err(InvalidInput::malformed(
                "kind",
                format!("is longer than {} characters", Self::MAX_LEN),
            ));
        }
        let lower_or_digit = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
        if !lower_or_digit(first)
            || !bytes
                .iter()
                .all(|b| lower_or_digit(b) || matches!(b, b'.' | b'_' | b'-'))
        {
            return Err(InvalidInput::malformed("kind", RULE));
        }
        // "a..b" or a trailing dot would make an empty subject token.
        if s.ends_with('.') || s.contains("..") {
            return Err(InvalidInput::malformed(
                "kind",
                "must not have empty dot-separated parts",
            ));
        }
        Ok(Self(s.to_string()))
    }

    /// The kind as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TaskKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Labels to filter tasks by: keys `[a-z0-9][a-z0-9._/-]{0,62}`, values up to 256
/// bytes, at most 32 pairs. Sorted, so a task's labels have one stored form.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Labels(BTreeMap<String, String>);

impl Labels {
    /// The most labels a task may carry.
    pub const MAX_PAIRS: usize = 32;
    /// The longest label key, in bytes.
    pub const MAX_KEY_LEN: usize = 63;
    /// The longest label value, in bytes.
    pub const MAX_VALUE_LEN: usize = 256;

    /// Parses labels: keys `[a-z0-9][a-z0-9._/-]{0,62}`, values up to 256 bytes without control characters, at most 32.
    pub fn parse<'a>(
        pairs: impl IntoIterator<Item = (&'a String, &'a String)>,
    ) -> Result<Self, InvalidInput> {
        let mut map = BTreeMap::new();
        for (k, v) in pairs {
            let kb = k.as_bytes();
            let ok_first = kb
                .first()
                .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
            let ok_rest = kb.iter().all(|b| {
                b.is_ascii_lowercase()
                    || b.is_ascii_digit()
                    || matches!(b, b'.' | b'_' | b'/' | b'-')
            });
            if !ok_first || !ok_rest || kb.len() > Self::MAX_KEY_LEN {
                return Err(InvalidInput::malformed(
                    "labels",
                    format!("key {k:?} must match [a-z0-9][a-z0-9._/-]{{0,62}}"),
                ));
            }
            if v.len() > Self::MAX_VALUE_LEN || v.chars().any(char::is_control) {
                return Err(InvalidInput::malformed(
                    "labels",
                    format!(
                        "value of {k:?} must be at most {} bytes with no control characters",
                        Self::MAX_VALUE_LEN
                    ),
                ));
            }
            map.insert(k.clone(), v.clone());
        }
        if map.len() > Self::MAX_PAIRS {
            return Err(InvalidInput::malformed(
                "labels",
                format!("at most {} labels", Self::MAX_PAIRS),
            ));
        }
        Ok(Self(map))
    }

    /// The labels, by key.
    pub fn iter(&self) -> impl Iterator<Item = (&String, &String)> {
        self.0.iter()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The labels as a map.
    pub fn into_map(self) -> BTreeMap<String, String> {
        self.0
    }
}

/// The key that makes a repeated submit return the first task: up to 256 printable
/// ASCII characters. Empty means "no key".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    /// The longest key, in bytes.
    pub const MAX_LEN: usize = 256;

    /// Parses a key: empty means none; else up to 256 printable ASCII characters.
    pub fn parse(s: &str) -> Result<Option<Self>, InvalidInput> {
        if s.is_empty() {
            return Ok(None);
        }
        if s.len() > Self::MAX_LEN || !s.bytes().all(|b| b.is_ascii_graphic() || b == b' ') {
            return Err(InvalidInput::malformed(
                "idempotency_key",
                format!("must be 1 to {} printable ASCII characters", Self::MAX_LEN),
            ));
        }
        Ok(Some(Self(s.to_string())))
    }

    /// The key as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Who is calling, for idempotency scoping: the `taskwire-caller` request header, or
/// the empty (anonymous) caller. Same rules as an idempotency key.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Caller(String);

impl Caller {
    /// The gRPC metadata key that names the caller.
    pub const METADATA_KEY: &'static str = "taskwire-caller";

    /// Parses a caller name from the request header.
    pub fn parse(s: &str) -> Result<Self, InvalidInput> {
        if s.len() > IdempotencyKey::MAX_LEN
            || !s.bytes().all(|b| b.is_ascii_graphic() || b == b' ')
        {
            return Err(InvalidInput::malformed(
                "taskwire-caller",
                format!(
                    "must be at most {} printable ASCII characters",
                    IdempotencyKey::MAX_LEN
                ),
            ));
        }
        Ok(Self(s.to_string()))
    }

    /// The caller's name (empty: the anonymous caller).
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Attempts a task may take: 1..=100; 0 at the edge means "the server default".
pub const MAX_ATTEMPTS_LIMIT: u32 = 100;

/// The longest per-attempt timeout a caller may ask for.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(24 * 60 * 60);

/// Parses a `google.protobuf.Duration` per-attempt timeout: positive, at most a day.
pub fn parse_timeout(d: Option<&prost_types::Duration>) -> Result<Option<Duration>, InvalidInput> {
    let Some(d) = d else { return Ok(None) };
    let bad =
        || InvalidInput::malformed("timeout", "must be positive and at most 24h (e.g. \"30s\")");
    if d.seconds < 0 || d.nanos < 0 || d.nanos >= 1_000_000_000 || (d.seconds == 0 && d.nanos == 0)
    {
        return Err(bad());
    }
    let dur = Duration::new(d.seconds as u64, d.nanos as u32);
    if dur > MAX_TIMEOUT {
        return Err(bad());
    }
    Ok(Some(dur))
}

/// The furthest ahead a task can be scheduled.
pub const MAX_SCHEDULE_AHEAD: Duration = Duration::from_secs(366 * 24 * 3600);

/// When a submitted task is due, from its `delay` or `run_at` (at most one), given the
/// time of the submit: `None` to run at once (neither set, or a `run_at` already past).
pub fn parse_schedule(
    delay: Option<&prost_types::Duration>,
    run_at: Option<&prost_types::Timestamp>,
    now_us: i64,
) -> Result<Option<i64>, InvalidInput> {
    let max_us = MAX_SCHEDULE_AHEAD.as_micros() as i64;
    match (delay, run_at) {
        (None, None) => Ok(None),
        (Some(_), Some(_)) => Err(InvalidInput::malformed(
            "delay",
            "give delay or run_at, not both",
        )),
        (Some(d), None) => {
            let micros = d
                .seconds
                .checked_mul(1_000_000)
                .and_then(|s| s.checked_add(i64::from(d.nanos / 1000)));
            match micros {
                Some(us) if d.nanos >= 0 && d.nanos < 1_000_000_000 && us > 0 && us <= max_us => {
                    Ok(Some(now_us + us))
                }
                _ => Err(InvalidInput::malformed(
                    "delay",
                    "must be positive and at most 366 days (e.g. \"90s\")",
                )),
            }
        }
        (None, Some(t)) => {
            let at = t
                .seconds
                .checked_mul(1_000_000)
                .and_then(|s| s.checked_add(i64::from(t.nanos / 1000)))
                .filter(|_| t.nanos >= 0 && t.nanos < 1_000_000_000)
                .ok_or_else(|| InvalidInput::malformed("run_at", "is not a valid time"))?;
            if at - now_us > max_us {
                return Err(InvalidInput::malformed(
                    "run_at",
                    "must be at most 366 days ahead",
                ));
            }
            Ok((at > now_us).then_some(at))
        }
    }
}

/// Parses a state sent by a client as a filter: a known value, UNSPECIFIED = any.
pub fn parse_state_filter(raw: i32) -> Result<Option<TaskState>, InvalidInput> {
    match TaskState::try_from(raw) {
        Ok(TaskState::Unspecified) => Ok(None),
        Ok(s) => Ok(Some(s)),
        Err(_) => Err(InvalidInput::malformed(
            "state",
            format!("unknown state {raw}"),
        )),
    }
}

/// A `parent_id` field (a submit's, a list filter's): a task id, or empty for none.
pub fn parse_parent(parent_id: &str) -> Result<Option<TaskId>, InvalidInput> {
    match parent_id {
        "" => Ok(None),
        id => TaskId::parse(id)
            .map(Some)
            .map_err(|_| InvalidInput::Malformed {
                field: "parent_id",
                reason: "must be a task id (a UUID) or empty".into(),
            }),
    }
}

/// A submit's place in a task graph: its parent (a task id, or empty for none), what
/// its failure does to that parent (only with a parent), and what cancelling it does
/// to its children. Unknown enum values are INVALID_ARGUMENT.
pub fn parse_graph(
    parent_id: &str,
    child_failure: i32,
    cancel_policy: i32,
) -> Result<(Option<TaskId>, i32, i32), InvalidInput> {
    use crate::pb::v1::{CancelPolicy, ChildFailurePolicy};
    let parent = parse_parent(parent_id)?;
    if ChildFailurePolicy::try_from(child_failure).is_err() {
        return Err(InvalidInput::Malformed {
            field: "child_failure",
            reason: format!("{child_failure} is not a ChildFailurePolicy"),
        });
    }
    if child_failure != 0 && parent.is_none() {
        return Err(InvalidInput::Malformed {
            field: "child_failure",
            reason: "is only for a child: set parent_id too".into(),
        });
    }
    if CancelPolicy::try_from(cancel_policy).is_err() {
        return Err(InvalidInput::Malformed {
            field: "cancel_policy",
            reason: format!("{cancel_policy} is not a CancelPolicy"),
        });
    }
    Ok((parent, child_failure, cancel_policy))
}

impl TaskState {
    /// SUCCEEDED, FAILED and CANCELLED never change again.
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed | Self::Cancelled)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules_are_a_delay_or_a_time_ahead() {
        use prost_types::{Duration as D, Timestamp as T};
        let now = 1_000_000_000_000_000;
        let secs = |s| D {
            seconds: s,
            nanos: 0,
        };
        assert_eq!(parse_schedule(None, None, now), Ok(None));
        assert_eq!(
            parse_schedule(Some(&secs(90)), None, now),
            Ok(Some(now + 90_000_000))
        );
        let ahead = T {
            seconds: now / 1_000_000 + 60,
            nanos: 0,
        };
        assert_eq!(
            parse_schedule(None, Some(&ahead), now),
            Ok(Some(now + 60_000_000))
        );
        let past = T {
            seconds: now / 1_000_000 - 60,
            nanos: 0,
        };
        assert_eq!(
            parse_schedule(None, Some(&past), now),
            Ok(None),
            "past = now"
        );
        for bad in [
            secs(0),
            secs(-1),
            secs(367 * 24 * 3600),
            D {
                seconds: 1,
                nanos: -5,
            },
        ] {
            assert!(parse_schedule(Some(&bad), None, now).is_err(), "{bad:?}");
        }
        let far = T {
            seconds: now / 1_000_000 + 367 * 24 * 3600,
            nanos: 0,
        };
        assert!(parse_schedule(None, Some(&far), now).is_err());
        assert!(parse_schedule(Some(&secs(1)), Some(&ahead), now).is_err());
    }

    #[test]
    fn task_id_accepts_canonical_uuid_only() {
        let id = TaskId::new();
        assert_eq!(TaskId::parse(&id.to_string()), Ok(id));
        for bad in [
            "",
            "nope",
            "0192f4e26c1a7d3e9a4b1f2e3d4c5b6a",
            "{0192f4e2-6c1a-7d3e-9a4b-1f2e3d4c5b6a}",
            "0192f4e2-6c1a-7d3e-9a4b-1f2e3d4c5b6g",
            "0192f4e2-6c1a-7d3e-9a4b-1f2e3d4c5b6a ",
        ] {
            assert!(TaskId::parse(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn kind_rules() {
        for good in [
            "demo.echo",
            "a",
            "0",
            "report_v2",
            "x-y.z",
            &"a".repeat(128),
        ] {
            assert!(TaskKind::parse(good).is_ok(), "{good:?} should be accepted");
        }
        for bad in [
            "",
            "Demo",
            ".demo",
            "-demo",
            "demo.",
            "de..mo",
            "de mo",
            "de*mo",
            "de>mo",
            "démo",
            &"a".repeat(129),
        ] {
            assert!(TaskKind::parse(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn label_rules() {
        let ok = [("team".to_string(), "ml".to_string())];
        assert!(Labels::parse(ok.iter().map(|(k, v)| (k, v))).is_ok());
        let cases = [
            ("Team".to_string(), "x".to_string()),
            ("".to_string(), "x".to_string()),
            ("k".repeat(64), "x".to_string()),
            ("k".to_string(), "v".repeat(257)),
            ("k".to_string(), "a\nb".to_string()),
        ];
        for (k, v) in &cases {
            assert!(
                Labels::parse([(k, v)]).is_err(),
                "{k:?}={v:?} should be rejected"
            );
        }
        let many: Vec<(String, String)> = (0..33).map(|i| (format!("k{i}"), "v".into())).collect();
        assert!(Labels::parse(many.iter().map(|(k, v)| (k, v))).is_err());
    }

    #[test]
    fn idempotency_key_rules() {
        assert_eq!(IdempotencyKey::parse(""), Ok(None));
        assert!(IdempotencyKey::parse("order-42").unwrap().is_some());
        assert!(IdempotencyKey::parse(&"k".repeat(257)).is_err());
        assert!(IdempotencyKey::parse("tab\there").is_err());
        assert!(IdempotencyKey::parse("ünï").is_err());
    }

    #[test]
    fn timeout_rules() {
        let d = |seconds, nanos| prost_types::Duration { seconds, nanos };
        assert_eq!(parse_timeout(None), Ok(None));
        assert_eq!(
            parse_timeout(Some(&d(30, 0))),
            Ok(Some(Duration::from_secs(30)))
        );
        for bad in [
            d(0, 0),
            d(-1, 0),
            d(0, -5),
            d(86_401, 0),
            d(1, 1_000_000_000),
        ] {
            assert!(parse_timeout(Some(&bad)).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn state_filter_rules() {
        assert_eq!(parse_state_filter(0), Ok(None));
        assert_eq!(parse_state_filter(1), Ok(Some(TaskState::Queued)));
        assert!(parse_state_filter(99).is_err());
        assert!(parse_state_filter(-1).is_err());
    }
}

/// Property tests of request validation: any string a caller can send is either
/// refused with InvalidInput or accepted only if it follows the documented rule, and
/// nothing panics.
#[cfg(test)]
mod properties {
    use proptest::prelude::*;

    use super::*;

    fn kind_rule(s: &str) -> bool {
        let b = s.as_bytes();
        !b.is_empty()
            && b.len() <= TaskKind::MAX_LEN
            && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
            && b.iter().all(|c| {
                c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'.' | b'_' | b'-')
            })
            && !s.ends_with('.')
            && !s.contains("..")
    }

    proptest! {
        #[test]
        fn kinds_follow_their_rule(s in "\\PC{0,140}|[a-z0-9._-]{0,140}") {
            prop_assert_eq!(TaskKind::parse(&s).is_ok(), kind_rule(&s), "{:?}", s);
        }

        #[test]
        fn task_ids_accept_only_uuids(s in "\\PC{0,40}|[0-9a-f-]{36}") {
            if let Ok(id) = TaskId::parse(&s) {
                prop_assert_eq!(s.len(), 36);
                prop_assert_eq!(id.to_string(), s.to_ascii_lowercase());
            }
        }

        #[test]
        fn keys_and_callers_are_bounded_printable_ascii(s in "\\PC{0,300}") {
            let ok = s.len() <= IdempotencyKey::MAX_LEN
                && s.bytes().all(|b| b.is_ascii_graphic() || b == b' ');
            prop_assert_eq!(IdempotencyKey::parse(&s).is_ok(), ok);
            prop_assert_eq!(Caller::parse(&s).is_ok(), ok);
        }

        #[test]
        fn labels_are_bounded(
            pairs in proptest::collection::hash_map("\\PC{0,70}|[a-z0-9._/-]{1,70}", "\\PC{0,300}", 0..40)
        ) {
            if let Ok(labels) = Labels::parse(&pairs) {
                prop_assert!(pairs.len() <= Labels::MAX_PAIRS);
                for (k, v) in labels.iter() {
                    prop_assert!(k.len() <= Labels::MAX_KEY_LEN);
                    prop_assert!(v.len() <= Labels::MAX_VALUE_LEN);
                    prop_assert!(!v.chars().any(char::is_control));
                }
            }
        }

        #[test]
        fn timeouts_are_positive_and_at_most_a_day(seconds in any::<i64>(), nanos in any::<i32>()) {
            let d = prost_types::Duration { seconds, nanos };
            if let Ok(Some(t)) = parse_timeout(Some(&d)) {
                prop_assert!(t > Duration::ZERO && t <= MAX_TIMEOUT);
            }
        }

        #[test]
        fn state_filters_are_known_states(raw in any::<i32>()) {
            if let Ok(Some(s)) = parse_state_filter(raw) {
                prop_assert_eq!(s as i32, raw);
            }
        }
    }
}
