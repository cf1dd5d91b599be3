//! The hub: one core NATS subscription per watch process on `taskwire.live.>` (the
//! EVENTS stream republishes only what it stored), demultiplexed in memory to the
//! streams watching each task. No NATS consumer per watcher.
//!
//! It never blocks: each watcher has a bounded queue, and a watcher whose queue is
//! full is dropped from the hub (its queue closes). That watcher then catches up from
//! the stream by itself, so a slow client slows nobody else and loses nothing.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

use futures::StreamExt;
use taskwire::{
    domain::TaskId,
    nats::{self, LiveEvent},
    pb::internal::v1::Event,
    telemetry::{chain, metrics, trace},
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// One stored event as the hub received it.
#[derive(Debug, Clone)]
pub struct Live {
    pub seq: u64,
    /// The seq of the task's previous event (republish's Nats-Last-Sequence): if it is
    /// newer than what a watcher sent last, the watcher missed something.
    pub prev_seq: u64,
    pub event: Arc<Event>,
}

type Watchers = HashMap<TaskId, Vec<(u64, mpsc::Sender<Live>)>>;

/// WatchTasks streams: every task's events, optionally of one kind.
type Firehose = Vec<(u64, Option<String>, mpsc::Sender<(TaskId, Live)>)>;

#[derive(Debug, Clone, Default)]
pub struct Hub {
    watchers: Arc<Mutex<Watchers>>,
    firehose: Arc<Mutex<Firehose>>,
    next_id: Arc<AtomicU64>,
}

/// A WatchTasks stream's place in the hub; leaves it on drop. Its queue closes if it
/// falls behind.
#[derive(Debug)]
pub struct FirehoseSubscription {
    pub rx: mpsc::Receiver<(TaskId, Live)>,
    id: u64,
    hub: Hub,
}

impl Drop for FirehoseSubscription {
    fn drop(&mut self) {
        self.hub
            .firehose
            .lock()
            .expect("lock")
            .retain(|(id, _, _)| *id != self.id);
    }
}

/// A watcher's place in the hub; leaves it on drop.
#[derive(Debug)]
pub struct Subscription {
    pub rx: mpsc::Receiver<Live>,
    task: TaskId,
    id: u64,
    hub: Hub,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut w = self.hub.watchers.lock().expect("lock");
        if let Some(list) = w.get_mut(&self.task) {
            list.retain(|(id, _)| *id != self.id);
            if list.is_empty() {
                w.remove(&self.task);
            }
        }
    }
}

impl Hub {
    /// Subscribes to `taskwire.live.>` and routes until `shutdown`.
    pub async fn start(
        client: &async_nats::Client,
        shutdown: CancellationToken,
    ) -> Result<Self, nats::Error> {
        let mut sub = client
            .subscribe(nats::subjects::LIVE_ALL)
            .await
            .map_err(|e| nats::Error::unavailable("subscribing to live events", e))?;
        let hub = Hub::default();
        let routing = hub.clone();
        tokio::spawn(async move {
            loop {
                let msg = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    m = sub.next() => match m { Some(m) => m, None => return },
                };
                match LiveEvent::parse(&msg) {
                    Ok(LiveEvent {
                        task,
                        seq,
                        prev_seq,
                        event,
                        traceparent,
                    }) => {
                        // Tracing on: the fan-out of an event is a span of its trace.
                        let span = match &traceparent {
                            Some(tp) if trace::enabled() => {
                                let span = tracing::info_span!("watch.route", task_id = %task, seq);
                                trace::set_parent(&span, tp);
                                span
                            }
                            _ => tracing::Span::none(),
                        };
                        let _entered = span.enter();
                        routing.route(
                            task,
                            Live {
                                seq,
                                prev_seq,
                                event: Arc::new(event),
                            },
                        );
                    }
                    Err(e) => tracing::warn!(error = %chain(&e), "live event skipped"),
                }
            }
        });
        Ok(hub)
    }

    /// Joins the watchers of `task`, with a queue of `capacity` events.
    pub fn subscribe(&self, task: TaskId, capacity: usize) -> Subscription {
        let (tx, rx) = mpsc::channel(capacity);
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.watchers
            .lock()
            .expect("lock")
            .entry(task)
            .or_default()
            .push((id, tx));
        Subscription {
            rx,
            task,
            id,
            hub: self.clone(),
        }
    }

    /// Joins the feed of every task (of `kind`, if given).
    pub fn subscribe_all(&self, kind: Option<String>, capacity: usize) -> FirehoseSubscription {
        let (tx, rx) = mpsc::channel(capacity);
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.firehose.lock().expect("lock").push((id, kind, tx));
        FirehoseSubscription {
            rx,
            id,
            hub: self.clone(),
        }
    }

    /// How many watchers are attached (all tasks).
    pub fn watchers(&self) -> usize {
        self.watchers
            .lock()
            .expect("lock")
            .values()
            .map(Vec::len)
            .sum()
    }

    fn route(&self, task: TaskId, live: Live) {
        {
            let mut f = self.firehose.lock().expect("lock");
            // A full queue drops that stream; it then ends with UNAVAILABLE.
            f.retain(|(_, kind, tx)| {
                kind.as_ref().is_some_and(|k| *k != live.event.kind)
                    || kept(tx.try_send((task, live.clone())), "WatchTasks")
            });
        }
        let mut w = self.watchers.lock().expect("lock");
        let Some(list) = w.get_mut(&task) else { return };
        // A full or closed queue drops that watcher; it resynchronises from the stream.
        list.retain(|(_, tx)| kept(tx.try_send(live.clone()), "WatchTask"));
        if list.is_empty() {
            w.remove(&task);
        }
    }
}

/// Whether a watcher stays in the hub after a send: a closed queue (its stream ended)
/// leaves, and so does a full one (its client reads too slowly), which is counted.
fn kept<T>(sent: Result<(), mpsc::error::TrySendError<T>>, rpc: &'static str) -> bool {
    match sent {
        Ok(()) => true,
        Err(mpsc::error::TrySendError::Full(_)) => {
            metrics::counter!(metrics::WATCH_SLOW_DROPPED, "rpc" => rpc).increment(1);
            false
        }
        Err(mpsc::error::TrySendError::Closed(_)) => false,
    }
}
