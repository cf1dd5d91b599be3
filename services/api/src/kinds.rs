//! Does any worker serve a kind? A task of a kind no worker has ever served waits,
//! queued, for a worker that may never come (usually a typo), so SubmitTask says so in
//! its answer's `warning`. The sign is the kind's durable consumer, which a worker
//! creates when it starts and which outlives it ([`nats::streams::kind_has_consumer`]).

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use async_nats::jetstream::Context;
use taskwire::{
    domain::TaskKind,
    nats,
    telemetry::{chain, metrics},
};

/// How long a kind found served is believed without asking again.
const SERVED_FOR: Duration = Duration::from_secs(60);
/// How long a kind found unserved is believed: short, since a worker may start.
const UNSERVED_FOR: Duration = Duration::from_secs(1);

/// A cache of which kinds have a consumer, so a submit asks NATS at most once a minute
/// per served kind.
#[derive(Debug)]
pub struct KnownKinds {
    js: Context,
    checked: Mutex<HashMap<String, (bool, Instant)>>,
}

impl KnownKinds {
    pub fn new(js: Context) -> Self {
        Self {
            js,
            checked: Mutex::new(HashMap::new()),
        }
    }

    /// `kind` as a metrics label: itself if it was last found served, else
    /// [`metrics::UNSERVED_KIND`]. Asks nothing.
    pub fn label(&self, kind: &str) -> String {
        let served = self
            .checked
            .lock()
            .expect("lock")
            .get(kind)
            .is_some_and(|(served, _)| *served);
        if served {
            kind.to_string()
        } else {
            metrics::UNSERVED_KIND.to_string()
        }
    }

    /// The warning a submit of `kind` carries, if no worker has served it.
    pub async fn warning(&self, kind: &TaskKind) -> Option<String> {
        let now = Instant::now();
        let cached = self
            .checked
            .lock()
            .expect("lock")
            .get(kind.as_str())
            .copied();
        let served = match cached {
            Some((served, at))
                if now.duration_since(at) < if served { SERVED_FOR } else { UNSERVED_FOR } =>
            {
                served
            }
            _ => match nats::streams::kind_has_consumer(&self.js, kind.as_str()).await {
                Ok(served) => {
                    let mut checked = self.checked.lock().expect("lock");
                    // Bounded: a caller inventing kinds must not grow it forever.
                    if checked.len() > 10_000 {
                        checked.clear();
                    }
                    checked.insert(kind.to_string(), (served, now));
                    served
                }
                Err(e) => {
                    tracing::debug!(kind = %kind, error = %chain(&e), "cannot tell whether the kind is served");
                    true
                }
            },
        };
        (!served).then(|| {
            format!(
                "no worker has served kind \"{kind}\" yet: the task waits, queued, until one \
                 that registers this kind starts (is the kind spelled right?)"
            )
        })
    }
}
