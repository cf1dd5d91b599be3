//! The outbox relay: publishes tasks whose submitting call died (or failed to clean
//! up) after the commit, and delayed tasks once they are due (their row's lease runs
//! until then). Every api replica runs one; rows are claimed with a lease, so replicas
//! share the work, and Nats-Msg-Id makes a second publish harmless.

use std::time::Duration;

use bytes::Bytes;
use taskwire::{
    json, nats,
    store::{self, Store},
    telemetry::chain,
};
use tokio_util::sync::CancellationToken;

/// Rows claimed per round.
const BATCH: u32 = 256;

#[derive(Debug)]
pub struct Relay {
    pub store: Store,
    pub nats: async_nats::Client,
    pub js: async_nats::jetstream::Context,
    pub lease: Duration,
    pub poll: Duration,
}

impl Relay {
    /// Runs until `shutdown`; errors are logged and the round retried later.
    pub async fn run(self, shutdown: CancellationToken) {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(self.poll) => {}
            }
            // A full batch suggests more are waiting: go again at once.
            loop {
                match self.round().await {
                    Ok(n) if n == BATCH as usize && !shutdown.is_cancelled() => {}
                    Ok(_) => break,
                    Err(e) => {
                        tracing::warn!(error = %chain(&e), "outbox claim failed");
                        break;
                    }
                }
            }
        }
    }

    /// One round: claim expired rows, publish each, delete the published. Returns how
    /// many rows it claimed; 0 when NATS is down (nothing is claimed then).
    async fn round(&self) -> Result<usize, store::Error> {
        if !nats::is_connected(&self.nats) {
            return Ok(0);
        }
        let now = json::now_micros();
        let rows = self
            .store
            .claim_outbox(now, now + self.lease.as_micros() as i64, BATCH)
            .await?;
        for row in &rows {
            let id = row.task_id.to_string();
            // The body says which run (or fan-in) it starts, each with its own message
            // id, and carries the submit's trace context, which the header repeats.
            let body = {
                use prost::Message as _;
                taskwire::pb::internal::v1::TaskMessage::decode(row.payload.as_slice()).ok()
            };
            let msg_id = body.as_ref().map_or_else(|| id.clone(), nats::message_id);
            let traceparent = body
                .map(|m| m.traceparent)
                .filter(|_| taskwire::telemetry::trace::enabled());
            match nats::publish_task(
                &self.js,
                row.subject.clone(),
                &msg_id,
                Bytes::from(row.payload.clone()),
                traceparent.as_deref(),
            )
            .await
            {
                Ok(seq) => {
                    tracing::info!(task_id = %id, seq, "relay published task");
                    // A delayed task that came due is QUEUED from now on.
                    if let Err(e) = self.store.mark_enqueued(row.task_id, now).await {
                        tracing::warn!(task_id = %id, error = %chain(&e), "relay could not mark a due task QUEUED");
                    }
                    if let Err(e) = self.store.delete_outbox(row.task_id).await {
                        tracing::warn!(task_id = %id, error = %chain(&e), "relay could not delete outbox row");
                    }
                }
                // The lease runs out again and a later round retries.
                Err(e) => tracing::warn!(task_id = %id, error = %chain(&e), "relay publish failed"),
            }
        }
        Ok(rows.len())
    }
}
