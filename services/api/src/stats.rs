//! Queue health: GetQueueStats (per kind: waiting, running, the oldest wait, tasks
//! finished recently, per minute) and the gauges the api keeps current from the same
//! sources while metrics are on (queue depth and age per kind, outbox rows and age).
//! The queue figures come from each kind's consumer on TASKWIRE_TASKS, the finished
//! counts from the database's index of finished tasks.

use std::{collections::BTreeMap, time::Duration};

use taskwire::{
    domain::InvalidInput,
    json, nats,
    pb::v1::{GetQueueStatsResponse, KindStats},
    store::Store,
    telemetry::{chain, metrics},
};
use tokio_util::sync::CancellationToken;

use crate::{error::ApiError, service::TaskApi};

/// GetQueueStats' window when the request says 0, and the longest allowed.
const DEFAULT_WINDOW: u32 = 15;
const MAX_WINDOW: u32 = 60;
/// How often the queue and outbox gauges are refreshed.
const GAUGE_INTERVAL: Duration = Duration::from_secs(5);
const MINUTE_US: i64 = 60_000_000;

impl TaskApi {
    pub(crate) async fn queue_stats(&self, window: u32) -> Result<GetQueueStatsResponse, ApiError> {
        let window = match window {
            0 => DEFAULT_WINDOW,
            w if w <= MAX_WINDOW => w,
            w => {
                return Err(InvalidInput::Malformed {
                    field: "window_minutes",
                    reason: format!(
                        "must be 0 (default {DEFAULT_WINDOW}) to {MAX_WINDOW}, got {w}"
                    ),
                }
                .into());
            }
        };
        let now = json::now_micros();
        let this_minute = now / MINUTE_US;
        let first_minute = this_minute - i64::from(window) + 1;
        let (queues, finished) = tokio::try_join!(
            async {
                nats::streams::queue_stats(&self.shared.js)
                    .await
                    .map_err(ApiError::from)
            },
            async {
                self.shared
                    .store
                    .finished_by_minute(first_minute * MINUTE_US)
                    .await
                    .map_err(ApiError::from)
            },
        )?;
        let mut kinds: BTreeMap<String, KindStats> = BTreeMap::new();
        let entry = |kinds: &mut BTreeMap<String, KindStats>, kind: &str| {
            kinds
                .entry(kind.to_string())
                .or_insert_with(|| KindStats {
                    kind: kind.to_string(),
                    finished_per_minute: vec![0; window as usize],
                    ..Default::default()
                })
                .kind
                .clone()
        };
        for q in queues {
            let k = entry(&mut kinds, &q.kind);
            let s = kinds.get_mut(&k).expect("just inserted");
            s.waiting = q.waiting;
            s.running = q.unacked;
            s.max_running = q.max_running.unwrap_or(0);
            s.oldest_waiting = q
                .oldest_waiting
                .and_then(|d| prost_types::Duration::try_from(d).ok());
        }
        for f in finished {
            let k = entry(&mut kinds, &f.kind);
            let s = kinds.get_mut(&k).expect("just inserted");
            if f.succeeded {
                s.succeeded += f.count;
            } else {
                s.failed += f.count;
            }
            if let Some(slot) = usize::try_from(f.minute - first_minute)
                .ok()
                .and_then(|i| s.finished_per_minute.get_mut(i))
            {
                *slot += f.count;
            }
        }
        Ok(GetQueueStatsResponse {
            kinds: kinds.into_values().collect(),
            time: Some(json::micros_to_timestamp(now)),
            window_minutes: window,
        })
    }
}

/// Keeps the queue and outbox gauges current until `shutdown`, while metrics are on.
/// Every api replica reports the same queues: dashboards take the max by kind.
pub(crate) async fn report_gauges(
    js: async_nats::jetstream::Context,
    store: Store,
    shutdown: CancellationToken,
) {
    if !metrics::enabled() {
        return;
    }
    loop {
        match nats::streams::queue_stats(&js).await {
            Ok(queues) => {
                for q in queues {
                    metrics::gauge!(metrics::QUEUE_PENDING, "kind" => q.kind.clone())
                        .set(q.waiting as f64);
                    metrics::gauge!(metrics::QUEUE_ACK_PENDING, "kind" => q.kind.clone())
                        .set(q.unacked as f64);
                    metrics::gauge!(metrics::QUEUE_OLDEST_AGE, "kind" => q.kind)
                        .set(q.oldest_waiting.map_or(0.0, |d| d.as_secs_f64()));
                }
            }
            Err(e) => tracing::debug!(error = %chain(&e), "queue figures unknown"),
        }
        match store.outbox_stats().await {
            Ok((rows, oldest)) => {
                metrics::gauge!(metrics::OUTBOX_ROWS).set(rows as f64);
                let age = oldest.map_or(0.0, |t| (json::now_micros() - t).max(0) as f64 / 1e6);
                metrics::gauge!(metrics::OUTBOX_OLDEST_AGE).set(age);
            }
            Err(e) => tracing::debug!(error = %chain(&e), "outbox figures unknown"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(GAUGE_INTERVAL) => {}
        }
    }
}
