//! What is in taskwire's streams, read by sequence or direct get (no consumer: a work
//! queue allows no second one over the same subjects).

use async_nats::{
    header::NATS_MESSAGE_ID,
    jetstream::{self, message::StreamMessage},
};
use taskwire::{
    domain::TaskId,
    nats::{self, History},
    pb::internal::v1::{Event, TaskMessage},
};

use crate::eventually;

/// Every message in a stream now, oldest first, read by sequence (a work queue
/// allows no second consumer over the same subjects).
async fn messages(js: &jetstream::Context, name: &str) -> Vec<StreamMessage> {
    let mut stream = js.get_stream(name).await.expect("stream");
    let state = stream.info().await.expect("stream info").state.clone();
    let mut out = Vec::new();
    if state.messages == 0 {
        return out;
    }
    for seq in state.first_sequence..=state.last_sequence {
        // A gap is a message acked (work queue) or deleted meanwhile.
        if let Ok(m) = stream.get_raw_message(seq).await {
            out.push(m);
        }
    }
    out
}

fn msg_id(m: &StreamMessage) -> String {
    m.headers
        .get(NATS_MESSAGE_ID)
        .map(|v| v.to_string())
        .unwrap_or_default()
}

/// Every message in TASKWIRE_TASKS now, with its Nats-Msg-Id, oldest first.
pub async fn tasks_in_stream(js: &jetstream::Context) -> Vec<(String, TaskMessage)> {
    use prost::Message as _;
    messages(js, nats::TASKS_STREAM)
        .await
        .into_iter()
        .map(|m| {
            let body = TaskMessage::decode(m.payload.clone()).expect("task message decodes");
            (msg_id(&m), body)
        })
        .collect()
}

/// A task's whole history in TASKWIRE_EVENTS, as (seq, event), oldest first. Reads
/// by direct get (no consumer), so any number of calls is fine.
pub async fn task_events(js: &jetstream::Context, id: &str) -> Vec<(u64, Event)> {
    let id = TaskId::parse(id).expect("a task id");
    let history = History::open(js).await.expect("events stream");
    let mut out = Vec::new();
    let mut after = 0;
    while let Some(stored) = history
        .next_after(id, after)
        .await
        .unwrap_or_else(|e| panic!("reading events of {id}: {e}"))
    {
        after = stored.seq;
        out.push((stored.seq, stored.event));
    }
    out
}

/// Waits until the task's stored history has a progress event at `fraction` or more
/// (0.0: any progress at all).
pub async fn wait_progress(js: &jetstream::Context, id: &str, fraction: f64) {
    eventually(
        &format!("task {id} reaches progress {fraction}"),
        || async move {
            task_events(js, id)
                .await
                .iter()
                .any(|(_, e)| e.progress.as_ref().is_some_and(|p| p.fraction >= fraction))
                .then_some(())
        },
    )
    .await
}

/// Every message in TASKWIRE_DLQ, as (Nats-Msg-Id, subject).
pub async fn dlq_messages(js: &jetstream::Context) -> Vec<(String, String)> {
    messages(js, nats::DLQ_STREAM)
        .await
        .iter()
        .map(|m| (msg_id(m), m.subject.to_string()))
        .collect()
}
