//! WatchTask with `tree`: the events of a task and of all its descendants, in one
//! stream ordered by seq, gap-free and resumable with the one seq cursor.
//!
//! The stream is read through a JetStream ordered consumer on TASKWIRE_EVENTS filtered
//! to the tree's subjects (`taskwire.events.<id>` of each node), so the order is the
//! stream's and the server repairs any gap. The tree grows while it is watched: a
//! parent's WAITING event names the children its step started, and those are created
//! (and so have events) only after that event is stored. On such an event the consumer
//! is made again with the new subjects, from the next seq: nothing of a new child can
//! have been stored before it. A resumed watch starts with every node the database
//! knows (children a client added included), from after_seq.

use std::{collections::HashMap, time::Duration};

use async_nats::jetstream::consumer::{DeliverPolicy, pull::OrderedConfig};
use futures::StreamExt;
use prost::Message as _;
use taskwire::{
    domain::TaskId,
    nats::{self, streams::EVENTS_STREAM},
    pb::{
        internal::v1::Event,
        v1::{TaskEvent, TaskState},
    },
    telemetry::metrics,
};
use tokio::sync::mpsc;

use crate::{
    error::WatchError,
    service::{OpenStream, Outgoing, WatchApi, to_public},
};

/// Most nodes one tree watch follows (a consumer's filter subjects).
const MAX_NODES: usize = 10_000;
/// How long the consumer is asked for more before it is checked again.
const IDLE: Duration = Duration::from_secs(5);

/// A node of the watched tree: its parent (`None` for the root) and kind.
struct Node {
    parent: Option<TaskId>,
    kind: String,
}

/// Why a tree stream ended early (the same as a task stream's).
enum End {
    Finished,
    Gone,
    Failed(WatchError),
}

/// Streams the tree of `root` (whose record the caller may see) after `after_seq`.
pub(crate) async fn watch_tree(
    api: WatchApi,
    _open: OpenStream,
    root: TaskId,
    root_kind: String,
    after_seq: u64,
    tx: mpsc::Sender<Outgoing>,
) {
    let mut tree = Tree {
        root,
        nodes: HashMap::from([(
            root,
            Node {
                parent: None,
                kind: root_kind,
            },
        )]),
        last_sent: after_seq,
        tx,
    };
    let result: Result<(), End> = async {
        tree.add_known(&api).await?;
        loop {
            tree.follow(&api).await?;
        }
    }
    .await;
    if let Err(End::Failed(e)) = result {
        let _ = tree.tx.send(Err(e.into())).await;
    }
}

struct Tree {
    root: TaskId,
    nodes: HashMap<TaskId, Node>,
    last_sent: u64,
    tx: mpsc::Sender<Outgoing>,
}

impl Tree {
    fn failed(&self, source: nats::Error) -> End {
        End::Failed(WatchError::Events {
            source,
            resume_after: self.last_sent,
        })
    }

    /// Adds every descendant the database knows, breadth first.
    async fn add_known(&mut self, api: &WatchApi) -> Result<(), End> {
        let mut next = vec![self.root];
        while let Some(parent) = next.pop() {
            let children = api
                .store
                .children(parent)
                .await
                .map_err(|e| End::Failed(e.into()))?;
            for c in children {
                if self.nodes.len() >= MAX_NODES {
                    return Ok(());
                }
                next.push(c.id);
                self.nodes.insert(
                    c.id,
                    Node {
                        parent: Some(parent),
                        kind: c.kind,
                    },
                );
            }
        }
        Ok(())
    }

    /// Streams from a consumer on the tree's subjects until the tree grows (Ok: make
    /// the consumer again) or the stream ends (Err).
    async fn follow(&mut self, api: &WatchApi) -> Result<(), End> {
        let stream = api
            .js
            .get_stream(EVENTS_STREAM)
            .await
            .map_err(|e| self.failed(nats::Error::unavailable("the events stream", e)))?;
        let consumer = stream
            .create_consumer(OrderedConfig {
                filter_subjects: self
                    .nodes
                    .keys()
                    .map(|id| nats::event_subject(*id))
                    .collect(),
                deliver_policy: match self.last_sent {
                    0 => DeliverPolicy::All,
                    seq => DeliverPolicy::ByStartSequence {
                        start_sequence: seq + 1,
                    },
                },
                ..Default::default()
            })
            .await
            .map_err(|e| self.failed(nats::Error::unavailable("a tree's consumer", e)))?;
        let mut messages = consumer
            .messages()
            .await
            .map_err(|e| self.failed(nats::Error::unavailable("a tree's events", e)))?;
        loop {
            let next = tokio::select! {
                _ = self.tx.closed() => return Err(End::Gone),
                _ = api.stop.cancelled() => {
                    return Err(End::Failed(WatchError::ShuttingDown {
                        resume_after: Some(self.last_sent),
                    }));
                }
                m = tokio::time::timeout(IDLE, messages.next()) => m,
            };
            let msg = match next {
                Err(_) => continue,
                Ok(Some(Ok(m))) => m,
                Ok(Some(Err(e))) => {
                    return Err(self.failed(nats::Error::unavailable("a tree's events", e)));
                }
                Ok(None) => return Ok(()),
            };
            let seq = msg
                .info()
                .map_err(|e| self.failed(nats::Error::bad_message("a tree's event", e)))?
                .stream_sequence;
            let event = Event::decode(msg.payload.clone())
                .map_err(|e| self.failed(nats::Error::bad_message(format!("event {seq}"), e)))?;
            let Some(id) = TaskId::parse(&event.task_id)
                .ok()
                .filter(|id| self.nodes.contains_key(id))
            else {
                continue;
            };
            if seq <= self.last_sent {
                continue;
            }
            let grew = self.grow(id, &event);
            self.emit(id, seq, &event).await?;
            if grew {
                return Ok(());
            }
        }
    }

    /// Adds the children a WAITING event names; whether any is new.
    fn grow(&mut self, parent: TaskId, event: &Event) -> bool {
        let mut grew = false;
        for child in &event.children {
            let Ok(id) = TaskId::parse(&child.task_id) else {
                continue;
            };
            if self.nodes.len() < MAX_NODES && !self.nodes.contains_key(&id) {
                self.nodes.insert(
                    id,
                    Node {
                        parent: Some(parent),
                        kind: child.kind.clone(),
                    },
                );
                grew = true;
            }
        }
        grew
    }

    /// Sends one event; ends the stream after the root's terminal one.
    async fn emit(&mut self, id: TaskId, seq: u64, event: &Event) -> Result<(), End> {
        let node = &self.nodes[&id];
        let out = TaskEvent {
            parent_id: node.parent.map(|p| p.to_string()).unwrap_or_default(),
            kind: node.kind.clone(),
            ..to_public(id, seq, event)
        };
        self.last_sent = seq;
        metrics::counter!(metrics::WATCH_EVENTS_SENT, "rpc" => "WatchTask").increment(1);
        self.tx
            .send(Ok(Box::new(out)))
            .await
            .map_err(|_| End::Gone)?;
        let terminal = TaskState::try_from(event.state).is_ok_and(TaskState::is_terminal);
        if id == self.root && terminal {
            return Err(End::Finished);
        }
        Ok(())
    }
}
